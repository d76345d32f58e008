"""Human-readable tables for the CLI; the JSON form is the report dict itself."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bisup.converters.artefacts import BoardProfile, ExportReport, Policy, Thresholds

if TYPE_CHECKING:
    from bisup.deployment import Calibrated
    from bisup.flashing.flash import FlashPlan
    from bisup.hil.runner import HilReport


def _pct(value: float | None) -> str:
    return "n/a (no labels)" if value is None else f"{100 * value:.2f} %"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"  {key.ljust(width)}  {value}" for key, value in rows)


def export_table(report: ExportReport, layers: bool = True) -> str:
    """The export report as a two-column table, int8 figures labelled as the TFLM oracle's, then the C engine's
    memory next to TFLM's and (``layers``) the engine's per-layer table."""
    bitexact = report.tflm_vs_litert_bitexact
    auroc = report.supervisor_auroc
    verdict = "yes" if report.fits else "NO: " + "; ".join(report.fit_problems)
    evaluated = report.samples.get("evaluation_set", "")
    on = " (on the calibration set: pass --eval for held-out figures)" if report.samples.get("on_calibration") else ""
    rows = [
        ("board", f"{report.board} ({report.arch}, {report.cpu_mhz} MHz, {report.kernels} kernels)"),
        ("ops", f"{len(report.ops)}: {', '.join(report.ops)}"),
        *_cost_rows(report.engine),
        *_budget_rows(report),
        ("evaluated on", f"{report.samples.get('evaluation', '?')} samples of {evaluated}{on}"),
        ("float top-1", _pct(report.float_accuracy)),
        ("int8 top-1 (TFLM)", _pct(report.int8_accuracy)),
        ("int8 = float top-1", _pct(report.int8_float_top1_agreement)),
        ("TFLM = LiteRT XNNPACK", f"{_pct(bitexact['xnnpack'])} of samples bit-exact"),
        ("TFLM = LiteRT reference", f"{_pct(bitexact['reference'])} of samples bit-exact"),
        ("supervisor", f"{report.supervisor} (temperature {report.supervisor_temperature:g})"),
        ("AUROC float / int8", f"{_num(auroc['float'])} / {_num(auroc['int8'])}"),
        ("fits", verdict),
    ]
    lines = [_table(rows)]
    for caveat in report.caveats:
        lines.append(f"  {caveat['severity']}: {caveat['message']} ({caveat['detail']}); fix: {caveat['fix']}")
    if report.engine:
        lines += ["", _memory_table(report)]
    if layers and report.engine.get("layers"):
        lines += ["", layers_table(report.engine)]
    return "\n".join(lines)


def _cost_rows(engine: dict) -> list[tuple[str, str]]:
    """MACs and the C engine's latency estimate; n/a when the engine could not read the model."""
    if "macs" not in engine:
        return [("MACs", "n/a (the C engine cannot run this model)")] if engine else []
    rows = [("MACs", f"{engine['macs']:,} per inference")]
    estimate = engine.get("latency", {})
    if estimate.get("estimate_us") is None:
        return rows + [("latency (estimate)", estimate.get("reason", "n/a"))]
    return rows + [("latency (estimate)", f"~{estimate['estimate_us'] / 1000:,.2f} ms per inference with the C engine "
                                          f"at {estimate['cpu_mhz']:g} MHz: an estimate, not a measurement"),
                   ("  how estimated", estimate["basis"].removeprefix("estimate: "))]


def _budget_rows(report: ExportReport) -> list[tuple[str, str]]:
    """Flash and arena against the board's budgets, of the engine the verdict is for (the other's are in the
    memory table below)."""
    e = report.engine
    if report.fit_engine == "c" and "arena_bytes" in e:
        flash = (f"{e['flash_bytes']:,} B of {report.flash_budget_bytes:,} B budget (code + weights)"
                 if e.get("flash_bytes") is not None else
                 f"{report.flash_bytes:,} B of {report.flash_budget_bytes:,} B budget (the flatbuffer: C not measured)")
        return [("engine", "C engine (model_infer.c); --engine tflm judges by TFLM"), ("flash (C engine)", flash),
                ("arena (C engine)", f"{e['arena_bytes']:,} B of {report.arena_budget_bytes:,} B budget (exact)")]
    return [("engine", "TFLM (model_data.cc)" + ("; --engine c judges by the C engine" if "arena_bytes" in e else "")),
            ("flash (model)", f"{report.flash_bytes:,} B of {report.flash_budget_bytes:,} B budget"),
            ("arena (measured min)", f"{report.arena_bytes:,} B"),
            ("arena (recommended)", f"{report.arena_recommended_bytes:,} B of {report.arena_budget_bytes:,} B budget")]


def _memory_table(report: ExportReport) -> str:
    """RAM and flash of the C engine next to TFLM's: what each deployment costs on the board."""
    e = report.engine
    if e.get("generated"):
        bound = f"lower bound {e['arena_lower_bound_bytes']:,} B"
        copies = e.get("arena_lower_bound_without_in_place_bytes", e["arena_lower_bound_bytes"])
        bound += f" ({copies:,} B without in-place ops)" if copies != e["arena_lower_bound_bytes"] else ""
        flash = (f"{e['flash_bytes']:,} B", f"code + weights, arm-none-eabi-size -Os for {e['flash_measured_for']}") \
            if e.get("flash_bytes") is not None else ("-", e.get("flash_measured_for", "not measured"))
        engine_row = ("C engine", f"{e['arena_bytes']:,} B", bound, *flash)
    elif "arena_bytes" in e:
        engine_row = ("C engine", f"{e['arena_bytes']:,} B", "planned; over budget", "-", "not generated")
    else:
        engine_row = ("C engine", "-", "", "-", "not generated (see the warning)")
    tflm_flash = ("-", "")
    if "tflm_flash_bytes" in e:
        runtime = e["tflm_flash_bytes"] - report.flash_bytes
        tflm_flash = (f"{e['tflm_flash_bytes']:,} B",
                      f"{report.flash_bytes:,} B model + {runtime:,} B core runtime (TFLM docs, without op kernels)")
    tflm_row = ("TFLM", f"{report.arena_bytes:,} B", f"measured min; {report.arena_recommended_bytes:,} B rec.",
                *tflm_flash)
    header = ("memory", "arena (RAM)", "", "flash", "")
    chosen = 0 if report.fit_engine == "c" else 1  # the row the fit verdict is judged by
    cells = [(f"{row[0]} (verdict)" if k == chosen else row[0], *row[1:])
             for k, row in enumerate((engine_row, tflm_row))]
    widths = [max(len(row[i]) for row in (header, *cells)) for i in range(len(header))]
    right = {1, 3}
    return "\n".join("  " + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
                     for r in (header, *cells))


def layers_table(engine: dict) -> str:
    """The C engine's layers: op, MACs, parameter bytes, output bytes and the output's place in the arena."""
    title = "layer (C engine)" if engine.get("generated") else "layer (C engine plan)"
    header = (title, "MACs", "params B", "out B", "arena")
    cells = [(f"{k:>3} {layer['op']}", f"{layer['macs']:,}", f"{layer.get('parameter_bytes', 0):,}",
              f"{layer['output_bytes']:,}", _place(layer)) for k, layer in enumerate(engine["layers"])]
    total = ("    total", f"{sum(layer['macs'] for layer in engine['layers']):,}",
             f"{sum(layer.get('parameter_bytes', 0) for layer in engine['layers']):,}", "",
             f"{engine['arena_bytes']:,} B" if "arena_bytes" in engine else "")
    return "\n".join(f"  {line}" for line in _grid(header, [*cells, total]).splitlines())


def _place(layer: dict) -> str:
    offset = layer.get("arena_offset")
    return "-" if offset is None else f"{offset:,}..{layer.get('arena_end', offset + layer['output_bytes']):,}"


def boards_table(profiles: list[BoardProfile]) -> str:
    header = ("board", "arch", "MHz", "flash", "RAM", "model budget", "arena budget", "flash with")
    rows = [
        (
            b.name,
            b.arch,
            str(b.cpu_mhz),
            f"{b.flash_bytes // 1024} KiB",
            f"{b.ram_bytes // 1024} KiB",
            f"{b.model_flash_budget // 1024} KiB",
            f"{b.arena_ram_budget // 1024} KiB",
            b.flash_method,
        )
        for b in profiles
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in (header, *rows))
    return "\n".join(lines)


def _grid(header: tuple[str, ...], cells: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in (header, *cells)) for i in range(len(header))]
    lines = ("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in (header, *cells))
    return "\n".join(lines)


def _pct_ci(row: dict, key: str, digits: int) -> str:
    """A fraction and its 95% interval as percentages, e.g. ``85.13 % [84.20, 86.02]``."""
    low, high = row["ci95"][key]
    return f"{100 * row[key]:.{digits}f} % [{100 * low:.{digits}f}, {100 * high:.{digits}f}]"


def exit_rows_table(rows: list[dict]) -> str:
    """``bisup demo --exits``: one row per strategy, with device cost and bytes on the link; accuracy, remote
    calls and device MACs with their 95% intervals in brackets."""
    header = ("", "accuracy [95% CI]", "remote calls [95% CI]", "device MACs [95% CI]", "bytes sent", "bytes/relay",
              "rejected")
    cells = [(r["name"], _pct_ci(r, "accuracy", 2), _pct_ci(r, "remote_fraction", 1),
              "{:,.0f} [{:,.0f}, {:,.0f}]".format(r["mean_device_macs"], *r["ci95"]["mean_device_macs"]),
              f"{r['mean_bytes_sent']:.1f}", f"{r['bytes_per_relay']:.0f}",
              f"{100 * r['rejected_fraction']:.1f} %") for r in rows]
    return _grid(header, cells)


def exit_margin_text(result: dict) -> str:
    """The learned-vs-thresholds margin with its paired interval, and how the rows were measured."""
    m, sizes, deployed = result["margin"], result["sizes"], result["deployed"]
    low, high = m["ci95"]
    verdict = "excludes 0" if low > 0 or high < 0 else "includes 0: no difference shown"
    agree = min(deployed["agreement"].values())
    originals = ("independent inputs" if sizes["test_originals"] == sizes["test"]
                 else f"{sizes['test_originals']:,} originals; intervals resample originals")
    return (f"{m['a']} - {m['b']}: {100 * m['margin']:+.2f} pp, paired 95% CI [{100 * low:+.2f}, {100 * high:+.2f}] "
            f"({verdict}; {m['a_only_right']} inputs right only with the first, {m['b_only_right']} only with the "
            f"second)\ntask {result['task']}: {sizes['val']:,} validation and {sizes['test']:,} test inputs "
            f"({originals}). Rows: the exact integer rule "
            f"on every test input; {deployed['inputs']:,} also through the deployed path (virtual device, pty, "
            f"bridge), which agreed on {100 * agree:.1f} % of them.")


def stages_table(table) -> str:
    """``bisup export`` of a multi-exit model: the stage table (``stages.json``)."""
    header = ("stage", "cut", "MACs", "arena (C)", "arena (TFLM)", "activation B", "model B", "exit int8 acc.")
    cells = [(str(i), s.cut or "(final)", f"{s.macs:,}", f"{s.engine_arena_bytes:,}", f"{s.tflm_arena_bytes:,}",
              f"{s.activation['bytes']:,}" if s.activation else "-", f"{s.model_bytes:,}",
              f"{100 * s.exit_int8_accuracy:.2f} %") for i, s in enumerate(table.stages, 1)]
    fits = "fits" if table.fits else "DOES NOT FIT: " + "; ".join(table.fit_problems)
    flash = f", C engine flash {table.flash_bytes:,} B" if table.flash_bytes else ""
    flash += f", one shared arena of {table.shared_arena_bytes:,} B" if table.shared_arena_bytes else ""
    return _grid(header, cells) + f"\n{table.board}: {fits}{flash}"


def rows_table(rows: list[dict]) -> str:
    """The demo's comparison table: one row per strategy, fractions as percentages."""
    header = ("", "accuracy", "remote calls", "rejected", "accepted acc.", "cost saved")
    cells = [
        (
            r["name"],
            f"{100 * r['accuracy']:.2f} %",
            f"{100 * r['remote_fraction']:.1f} %",
            f"{100 * r['rejected_fraction']:.1f} %",
            f"{100 * r['accepted_accuracy']:.2f} %",
            f"{100 * r['cost_saved']:.1f} %",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (header, *cells)) for i in range(len(header))]
    lines = ("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in (header, *cells))
    return "\n".join(lines)


def remote_threshold_text(thresholds: Thresholds) -> str:
    """The remote threshold as a reader takes it. thresholds.json keeps -1 (accept every score) and 2 (reject
    every one) because JSON has no infinities; printed, -1 read as a real cut, and with no relays as nothing."""
    remote = thresholds.remote
    if thresholds.achieved.get("remote_fraction") == 0:
        return "none (no input is relayed)"
    if remote.threshold < 0:
        return f"none: every remote answer is accepted ({remote.supervisor})"
    if remote.threshold > 1:
        return f"every remote answer is rejected ({remote.supervisor})"
    return f"{remote.threshold:.4f} ({remote.supervisor})"


def calibration_table(thresholds: Thresholds) -> str:
    """``bisup calibrate``'s summary: the chosen thresholds and what they achieve on validation."""
    local, achieved = thresholds.local, thresholds.achieved
    rows = [
        ("selection", ", ".join(f"{k}={v}" for k, v in thresholds.selection.items())),
        ("local threshold", f"int8 {local.threshold_int8} (= {local.threshold:.4f} {local.supervisor})"),
        ("remote threshold", remote_threshold_text(thresholds)),
        ("system accuracy", f"{100 * achieved['accuracy']:.2f} %"),
        ("remote calls", f"{100 * achieved['remote_fraction']:.1f} %"),
        ("rejected", f"{100 * achieved['rejected_fraction']:.1f} %"),
        ("accepted accuracy", f"{100 * achieved['accepted_accuracy']:.2f} %"),
        ("cost saved", f"{100 * achieved['cost_saved']:.1f} % vs remote-only"),
        ("local-only / remote-only", f"{100 * thresholds.baselines['local_only_accuracy']:.2f} % / "
                                     f"{100 * thresholds.baselines['remote_only_accuracy']:.2f} %"),
    ]
    if thresholds.guarantee:
        rows.append(("guarantee", thresholds.guarantee))
    return _table(rows)


def retrain_table(result: dict) -> str:
    """Before and after a retrain: on the validation set (where thresholds were chosen) and held out."""
    header = ("", "threshold", "val. acc.", "val. remote", "test acc.", "test remote", "test local acc.")
    cells = []
    for name in ("before", "after"):
        side, test = result[name], result[name].get("test") or {}
        cells.append((name, str(side["threshold_int8"]), f"{100 * side['validation']['accuracy']:.2f} %",
                      f"{100 * side['validation']['remote_fraction']:.1f} %",
                      *((f"{100 * test['accuracy']:.2f} %", f"{100 * test['remote_fraction']:.1f} %",
                         f"{100 * test['local_accuracy']:.2f} %") if test else ("-", "-", "-"))))
    widths = [max(len(row[i]) for row in (header, *cells)) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in (header, *cells)]
    before, after = result["before"].get("test"), result["after"].get("test")
    if before and after and before["remote_fraction"] > 0:
        fewer = 1 - after["remote_fraction"] / before["remote_fraction"]
        change = f"{fewer:.1%} fewer" if fewer >= 0 else f"{-fewer:.1%} more"
        lines.append(f"\nheld out: {change} remote calls, accuracy {100 * before['accuracy']:.2f} % -> "
                     f"{100 * after['accuracy']:.2f} %")
    matched = result.get("after_at_before_accuracy")
    if matched and before:
        lines.append(f"at the old held-out accuracy the new model needs {100 * matched['remote_fraction']:.1f} % "
                     f"remote calls (chosen on the held-out set: a reference, not a deployable threshold)")
    lines.append(f"collected {result['collected']} relayed inputs, trained on {result['trained_on']}; "
                 f"new bundle {result['bundle']}")
    return "\n".join(lines)


def calibrated_table(done: Calibrated) -> str:
    """What ``bisup calibrate`` chose: the thresholds of a single model, or one line per multi-exit policy."""
    if done.kind == "single":
        return calibration_table(done.chosen)
    lines = []
    for kind, found in done.chosen.items():
        a = found.achieved
        lines.append(f"{kind:10s} depth {found.depth}, split {found.split}: accuracy {100 * a['accuracy']:.2f} %, "
                     f"remote {100 * a['remote_fraction']:.1f} %, device {a['mean_device_macs']:,.0f} MACs, "
                     f"{a['mean_bytes_sent']:.1f} B sent per input")
        if found.guarantee:
            lines += _guarantee_lines(found)
        if found.schedule:
            lines.append(_schedule_line(found.schedule))
    return "\n".join(lines)


def _schedule_line(table: dict) -> str:
    """The run-time table in one line: its objective, size, and what the device does off the grid."""
    relays = sum(e["relay"] for e in table["entries"])
    safe = table["entries"][table["safe"]]
    return (f"{'':10s} run-time schedule, p95 <= {table['slo_ms']:g} ms: {len(table['entries'])} entries ({relays} "
            f"relay) over {len(table['cells'])} link/load cells; off the grid: local to exit {safe['depth']}, "
            f"p95 {safe['p95_ms']:g} ms")


def _guarantee_lines(found: Policy) -> list[str]:
    """A certified policy's threshold, what it measured on the calibration set, and the promise in words."""
    g, a = found.guarantee, found.achieved
    return [f"{'':10s} threshold {found.thresholds[0]} at every exit: {100 * a['early_fraction']:.1f} % answered "
            f"early, {100 * a['early_loss']:.2f} % of them lost against the full network (certified <= "
            f"{100 * g['max_local_error']:.2f} %, delta {g['delta']}, {g['procedure']}, n = {g['samples']:,})",
            f"{'':10s} {g['statement']}"]


def hil_table(report: HilReport) -> str:
    """A HIL run's table, single-model or multi-exit (``HilReport.kind``)."""
    return {"single": _hil_single_table, "exits": _hil_exits_table}[report.kind](report.data)


def flash_table(flash_plan: FlashPlan, port: str, out_dir: Path | None = None) -> str:
    """``bisup flash``'s view of a plan: every write with offset, end, size and SHA-256, and the manual command. The
    images exist as files only with --out, so without it the command names DIR and says how to fill it."""
    lines = [f"{flash_plan.board.name} via {flash_plan.tool} ({flash_plan.board.flash_target})",
             f"{'offset':>10}  {'end':>10}  {'bytes':>9}  {'sha256':<16}  what"]
    for w in (write.describe() for write in flash_plan.writes):
        lines.append(f"{w['offset']:#10x}  {w['end']:#10x}  {w['bytes']:>9,}  {w['sha256'][:16]}  {w['what']} "
                     f"({w['file']})")
    if out_dir is not None:
        lines.append(f"same as: {flash_plan.command(port, out_dir)}")
    else:
        lines.append(f"by hand: save the images with --out DIR, then: {flash_plan.command(port, 'DIR')}")
    return "\n".join(lines)


def device_table(summary: dict) -> str:
    """The summary as the two-column table the other commands print (``--json`` keeps the dict): counts with
    their share of the inputs, accuracy as a percentage, means rounded."""
    inputs = summary["inputs"]

    def share(count: int) -> str:
        return f"{count:,} ({100 * count / inputs:.1f} %)" if inputs else f"{count:,}"

    rows = [
        ("inputs", f"{inputs:,}"),
        ("answered on the device", share(summary["local"])),
        ("relayed to the bridge", f"{share(summary['requests'])}, {summary['resends']:,} resends"),
        ("remote answers used", f"{summary['remote']:,}"),
        ("own label kept", f"{summary['fallback']:,} of the relayed ({summary['rejected']:,} rejected by the remote "
                           "supervisor)"),
        ("bad frames", f"{summary['bad_frames']:,}"),
    ]
    if summary.get("busy"):
        rows.append(("bridge busy", f"{summary['busy']:,} BUSY answers; {summary['held']:,} inputs answered locally "
                                    "during their holds"))
    if "exits" in summary:
        rows += [("exits", ", ".join(f"{name} {count:,}" for name, count in summary["exits"].items())),
                 ("device MACs per input", f"{summary['mean_device_macs']:,.0f} (mean)"),
                 ("bytes sent per input", f"{summary['mean_bytes_sent']:,.1f} (mean)")]
    rows.append(("accuracy", f"{100 * summary['accuracy']:.2f} %" if "accuracy" in summary else "n/a (no labels)"))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"  {key.ljust(width)}  {value}" for key, value in rows)


def _hil_single_table(report: dict) -> str:
    acc = report["accuracy"]
    latency = report["device_latency_us"]
    rows = [
        ("board", report["board"]),
        ("inputs reported", f"{report['reported']} / {report['samples']}"),
        ("accuracy local-only / remote-only", f"{100 * acc['local_only']:.2f} % / {100 * acc['remote_only']:.2f} %"),
        ("accuracy system / accepted", f"{100 * acc['system']:.2f} % / {100 * acc['accepted']:.2f} %"),
        ("remote calls / rejected",
         f"{100 * report['remote_fraction']:.1f} % / {100 * report['rejected_fraction']:.1f} %"),
        ("cost saved", f"{100 * report['cost_saved']:.1f} %"),
        ("FEED to answer p50 / p95", f"{latency['p50']:.0f} us / {latency['p95']:.0f} us"
         if latency["p50"] is not None else "n/a"),
        ("inference on the device", _cost_line(report["device_inference"])),
        ("device outputs = host TFLM", f"{100 * report['device_outputs_equal_oracle']:.1f} %"),
        ("answers = offline decisions", f"{100 * report['offline_agreement']:.1f} %"),
    ]
    estimate = report.get("device_cycle_estimate")
    if estimate:
        rows.append(("cycles, estimated (input 0)", f"{estimate['cycles']:,.0f} "
                     f"({estimate['cycles_per_instruction']:.2f} per instruction; {estimate['core']}: "
                     f"{estimate['timings']})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"  {k.ljust(width)}  {v}" for k, v in rows]
                     + _layer_lines(report["device_layers"], estimate["layers"] if estimate else None))


def _layer_lines(layers: list[dict], estimates: list[dict] | None = None) -> list[str]:
    """The per-layer profile under the table, when the board sent one; with ``--cycles`` the estimated cycles and
    cycles per instruction of each layer too."""
    if not layers or "instructions_p50" not in layers[0]:
        return []
    extra = f"{'est. cycles':>13}{'CPI':>6}" if estimates else ""
    lines = ["", f"  {'layer':<18}{'MACs':>8}{'params':>8}{'out B':>7}{'arena @':>9}{'instructions':>14}{'per MAC':>9}"
             + extra]
    for k, layer in enumerate(layers):
        per_mac = f"{layer['instructions_per_mac']:.1f}" if layer["instructions_per_mac"] else "-"
        lines.append(f"  {k:>2} {layer['op']:<15}{layer['macs']:>8,}{layer['parameters']:>8,}"
                     f"{layer['output_bytes']:>7,}{layer['arena_offset']:>9,}{layer['instructions_p50']:>14,.0f}"
                     f"{per_mac:>9}" + (_estimate_cells(estimates[k]) if estimates else ""))
    return lines


def _estimate_cells(estimate: dict) -> str:
    cpi = f"{estimate['cycles_per_instruction']:.2f}" if estimate["cycles_per_instruction"] else "-"
    return f"{estimate['cycles']:>13,.0f}{cpi:>6}"


def _cost_line(cost: dict) -> str:
    if cost.get("cycles_p50") is None:
        return "n/a"
    if "instructions_p50" not in cost:
        return f"{cost['cycles_p50']:,.0f} cycles (p50)"
    resolution = cost["cycle_resolution_instructions"]
    return (f"{cost['instructions_p50']:,.0f} instructions (p50, +/-{resolution:.0f}), "
            f"{cost['instructions_per_mac']:.1f} per MAC, "
            f"{cost['latency_us_at_board_clock']:,.0f} us at the board clock")


def _hil_exits_table(report: dict) -> str:
    """The human summary of a multi-exit HIL run."""
    agreement = report["agreement_with_offline_policy"]
    lines = [f"board {report['board']}: {report['reported']}/{report['samples']} inputs reported, accuracy "
             f"{100 * report['accuracy']:.2f} %, remote {100 * report['remote_fraction']:.1f} %, rejected "
             f"{100 * report['rejected_fraction']:.1f} %",
             "exits: " + ", ".join(f"{k} {v}" for k, v in report["exit_histogram"].items()),
             f"agreement with the policy applied offline: label {100 * agreement['label']:.1f} %, exit "
             f"{100 * agreement['exit']:.1f} %"]
    for row in report["stages"]:
        cost = f"{row['instructions_p50']:,.0f} instructions ({row['instructions_per_mac']:.1f}/MAC)" \
            if row.get("instructions_p50") else (f"{row['cycles_p50']:,.0f} cycles" if row["cycles_p50"] else "not run")
        lines.append(f"stage {row['stage']}: {row['macs']:,} MACs, ran {row['runs']} times, {cost}")
    return "\n".join(lines)
