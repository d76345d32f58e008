"""SPINN's run-time scheduler against the calibration-time policy, on a link that moves (issue 21, item 4).

    python bench/spinn_scheduler.py [--slo-ms 50] [--link bench/spinn_link.txt] [--period-ms 200] [--plot PNG]

On the digits demo's multi-exit export (`bisup demo --exits`, run first if its cache is missing): the
schedule table is calibrated on the validation split for the latency objective, and the test split's real
outcomes go through a simulated device (``bisup.calibration.schedule_sim``) on the link schedule, inputs
arriving every --period-ms: the adaptive device (the real scheduler and estimator, which see only their
own relays and PINGs) and the static one (the demo's calibrated policy.json, chosen for a 1 Mbps link).
Per phase: p95 latency against the objective, accuracy, remote fraction, and the accuracy each gives up
against remote-only. --plot draws each input's latency over time for both, under the link's bandwidth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bisup.calibration import exits, schedule, schedule_sim
from bisup.converters.artefacts import Policy
from bisup.firmware_bridge.link_schedule import LinkSchedule
from bisup.firmware_bridge.schedule_table import Condition, LatencyModel
from bisup.firmware_bridge.scheduler import Scheduler

HERE = Path(__file__).parent
CALIBRATED_LINK = Condition(1e6, 0.05)  # what the static policy's timeout assumes (--bandwidth-kbps 1000)


def demo_outcomes() -> tuple[exits.ExitOutcomes, exits.ExitOutcomes, Policy]:
    """Validation and test outcomes of the digits demo's export, and its calibrated (static) policy."""
    from bisup.examples import demo, demo_exits
    from bisup.export import exits as staged
    from bisup.firmware_bridge.exits_model import StagedModel

    out = demo.cache_root() / "demo-exits"
    if not (out / "policy.json").is_file():
        demo_exits.run(progress=print)
    model = StagedModel(out)
    tails = staged.open_tails(out, len(model))
    static = Policy.read(out / "policy.json")
    thresholds = np.asarray(static.remote_thresholds)

    def on(name: str) -> exits.ExitOutcomes:
        data = np.load(out / f"{name}.npz")
        o, confidence = exits.outcomes(model, tails, data["x"], data["y"])
        return exits.with_remote_rule(o, confidence, thresholds)

    return on("val"), on("test"), static


def plot(traces: dict[str, schedule_sim.Trace], link: LinkSchedule, slo_ms: float, path: Path) -> None:
    """Latency of every input over time (log scale, the objective dashed) above the link's bandwidth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 5), height_ratios=(3, 1))
    for (name, trace), colour, layer in zip(traces.items(), ("tab:blue", "tab:red"), (3, 2), strict=False):
        top.scatter(trace.arrival, np.asarray(trace.latency) * 1e3, s=3, color=colour, label=name, zorder=layer)
    top.axhline(slo_ms, color="black", linestyle="--", label=f"p95 objective {slo_ms:g} ms")
    top.set(yscale="log", ylabel="latency (ms)")
    top.legend(loc="upper left")
    starts = [s for s, _, _ in link.spans()] + [link.end_s]
    rates = [max(p.bandwidth_bps, 1.0) for _, _, p in link.spans()]
    bottom.stairs(rates, starts, baseline=None, color="tab:gray")
    bottom.set(yscale="log", ylabel="link (bps; 1: outage)", xlabel="time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--link", type=Path, default=HERE / "spinn_link.txt")
    parser.add_argument("--period-ms", type=float, default=200.0)
    parser.add_argument("--device-mmacs", type=float, default=16.0, help="nRF52840: 64 MHz, 4 cycles per MAC")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load", type=int, default=0, help="The bridge's load level 0..7 (its time x (1 + level)).")
    parser.add_argument("--plot", type=Path, help="Also draw the latencies over time into this PNG.")
    args = parser.parse_args()
    link = LinkSchedule.read(args.link)
    val, test, static = demo_outcomes()
    model = LatencyModel(args.device_mmacs * 1e6)
    table = schedule.build(val, static, args.slo_ms, model)
    print(f"table: {len(table.cells)} cells, {len(table.entries)} entries, safe entry {table.safe}: "
          f"{table.entries[table.safe]}")
    devices = {
        "adaptive": schedule_sim.Device(test, model, static, Scheduler(table, static, test.cumulative_macs),
                                        load=args.load),
        "static": schedule_sim.Device(test, model, static, static_timeout_s=model.timeout_s(
            model.attempt_s(CALIBRATED_LINK, test.sent_bytes[static.split], test.cumulative_macs[-1])),
            load=args.load),
    }
    traces = {name: schedule_sim.run(d, link, args.period_ms / 1e3, args.seed) for name, d in devices.items()}
    remote_only = float((test.remote_labels[0] == test.y).mean())
    print(f"objective: p95 <= {args.slo_ms:g} ms; inputs every {args.period_ms:g} ms; bridge load {args.load}; "
          f"remote-only accuracy {remote_only:.2%}")
    header = f"{'phase':34} {'device':9} {'p95 ms':>8} {'SLO':>4} {'accuracy':>9} {'gives up':>9} {'remote':>7} " \
             f"{'off-grid':>8}"
    print(header)
    for start, stop, phase in [*link.spans(), (0.0, link.end_s, None)]:
        label = f"{start:g}-{stop:g} s {phase.describe() if phase else 'all'}"
        for name, trace in traces.items():
            f = trace.figures(start, stop)
            ok = "ok" if f["p95_ms"] <= args.slo_ms else "MISS"
            print(f"{label[:34]:34} {name:9} {f['p95_ms']:8.1f} {ok:>4} {f['accuracy']:9.2%} "
                  f"{remote_only - f['accuracy']:9.2%} {f['remote_fraction']:7.1%} {f['out_of_range']:8.1%}")
    stats = devices["adaptive"].scheduler.stats
    print(f"adaptive STATS: {stats.decisions} decisions, {stats.out_of_range} out of the calibrated range")
    if args.plot:
        plot(traces, link, args.slo_ms, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
