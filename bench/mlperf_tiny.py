"""The MLPerf Tiny classification models through bisup, next to the published MLPerf Tiny results.

    python bench/mlperf_tiny.py [--models kws,vww,ic] [--json] [--inputs 256] [--hil-inputs 3]

For each model of ``bench/mlperf_models.py`` (KWS DS-CNN, VWW MobileNetV1-0.25, IC ResNet-8; trained on
generated data and cached on first use):

- ``bisup export`` as a subprocess, timed (wall seconds, TensorFlow's start-up included: what a user waits);
- the exported C engine (gcc -O2 on the host) against the tflite-micro interpreter on ``--inputs`` inputs of
  the calibration set (the only inputs there are, the data being generated): the fraction of inputs whose
  every output byte matches;
- ``bisup.hil.model_run`` on the emulated Cortex-M4 (mps2-an386), M7 (mps2-an500), M33 (mps2-an505) and
  M55 (mps3-an547) with each board's own kernels, and on the M4 once more with the portable C kernels
  (``BISUP_KERNELS_PORTABLE``): instructions per inference (QEMU ``-icount shift=0``, one instruction per
  nanosecond), per MAC and per layer, and whether every output byte equals tflite-micro's. The portable run
  is the baseline measured in the same run;
- the arena (C engine, its lower bound, TFLM's measured minimum) and flash from the export's report.json.

Milliseconds are instructions at the MLPerf reference board's clock ASSUMING ONE INSTRUCTION PER CYCLE (a real
Cortex-M4 has flash wait states and multi-cycle loads and multiplies, so this is an optimistic conversion,
not a measurement): Cortex-M4 at 120 MHz, Cortex-M7 at 280 MHz, and the M55 run against the Cortex-M85
record's cycles at 480 MHz. Emulated instruction counts are exact; the wall times depend on the machine's
load, which the output states (``os.getloadavg``).

Published figures (median throughput, "Median throughput is N inf./sec." in each results.txt, as 1000 / N ms;
closed division, NUCLEO-L4R5ZI, Cortex-M4 at 120 MHz):

- TFLM (reference submission, v0.5): ``mlcommons/tiny_results_v0.5``
  ``closed/reference/results/Nucleo-L4R5ZI/{kws,vww,ic}/performance/results.txt``: 5.497 / 1.665 / 1.420 inf/s;
- microTVM + CMSIS-NN (OctoML, v1.0): ``mlcommons/tiny_results_v1.0``
  ``closed/OctoML/results/microtvm_cmsis_nn/NUCLEO_L4R5ZI/{kws,vww,ic}/performance/results.txt``:
  10.019 / 3.320 / 2.567 inf/s;
- X-CUBE-AI 10.2 (STMicroelectronics, v1.3): ``mlcommons/tiny_results_v1.3``
  ``closed/STMicroelectronics/results/NUCLEO_L4R5ZI-P/{kws,vww,ic}/performance/results.txt``:
  23.032 / 11.181 / 6.036 inf/s (``closed/STMicroelectronics/systems/NUCLEO_L4R5ZI-P.json``: 120 MHz);
- Cortex-M7 (X-CUBE-AI, v1.2): ``mlcommons/tiny_results_v1.2``
  ``closed/STMicroelectronics/results/NUCLEO_H7A3ZI_Q/{kws,vww,ic}/performance/results.txt``:
  88.356 / 42.009 / 24.483 inf/s, 280 MHz (``systems/NUCLEO_H7A3ZI_Q.json`` of v1.3);
- Cortex-M85 (Renesas EK-RA8D1, TFLM, v1.2): ``mlcommons/tiny_results_v1.2``
  ``closed/Renesas/results/EK-RA8D1/{kws,vww,ic}/performance/results.txt``: 288.611 / 74.665 / 117.948 inf/s,
  480 MHz (``closed/Renesas/systems/EK-RA8D1.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlperf_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "c" / "engine_harness.c"  # int8 inputs on stdin, scores + confidence on stdout
BOARDS = ("mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547")
PORTABLE_BOARD = "mps2-an386"


@dataclass(frozen=True)
class Published:
    """One MLPerf Tiny result: median throughput per model (inferences per second) at a clock."""

    label: str
    mhz: float
    throughput: dict[str, float]

    def ms(self, model: str) -> float:
        return 1e3 / self.throughput[model]

    def cycles(self, model: str) -> float:
        """The result as cycles per inference: what the same core at 1 instruction per cycle may spend."""
        return self.mhz * 1e6 / self.throughput[model]


TFLM_V05 = Published("TFLM v2.3.1 (MLPerf v0.5)", 120, {"kws": 5.497, "vww": 1.665, "ic": 1.420})
MICROTVM_V10 = Published("microTVM + CMSIS-NN (v1.0)", 120, {"kws": 10.019, "vww": 3.320, "ic": 2.567})
XCUBE_V13 = Published("X-CUBE-AI 10.2 (v1.3)", 120, {"kws": 23.032, "vww": 11.181, "ic": 6.036})
M7_RECORD = Published("Cortex-M7 record (STM32H7A3, X-CUBE-AI, v1.2)", 280,
                      {"kws": 88.356, "vww": 42.009, "ic": 24.483})
M85_RECORD = Published("Cortex-M85 record (Renesas RA8D1, v1.2)", 480, {"kws": 288.611, "vww": 74.665, "ic": 117.948})
M4_PUBLISHED = (TFLM_V05, MICROTVM_V10, XCUBE_V13)


def _say(message: str) -> None:
    print(f"mlperf: {message}", file=sys.stderr, flush=True)


def _bisup_command() -> list[str]:
    """The ``bisup`` beside this interpreter (the venv's), else the one on PATH."""
    script = Path(sys.executable).with_name("bisup")
    return [str(script)] if script.is_file() else [shutil.which("bisup") or "bisup"]


def export(model: Path, calib: Path, out: Path) -> tuple[float, dict]:
    """``bisup export`` as a user runs it; its wall seconds and report.json."""
    command = [*_bisup_command(), "export", str(model), "--calib", str(calib), "--board", PORTABLE_BOARD,
               "--out", str(out), "--no-layers"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"bisup export of {model.name} failed ({done.returncode})")
    return seconds, json.loads((out / "report.json").read_text())


def host_byte_exact(out: Path, model: bytes, x_q: np.ndarray, tflm: dict[str, np.ndarray]) -> float:
    """The fraction of inputs whose scores and confidence from the exported C (host gcc -O2) equal TFLM's."""
    from bisup.converters import engine

    exe = out / "engine_host"
    subprocess.run(["gcc", "-std=c99", "-O2", f"-I{out}", f"-I{engine.KERNELS_DIR}", str(out / "model_infer.c"),
                    *map(str, engine.kernel_sources()), str(HARNESS), "-o", str(exe)], check=True)
    stdout = subprocess.run([str(exe)], input=x_q.tobytes(), capture_output=True, check=True).stdout
    return float(np.mean(_matches(np.frombuffer(stdout, dtype=np.int8).reshape(len(x_q), -1), tflm)))


def _tflm(model: bytes, x_q: np.ndarray, arena: int) -> dict[str, np.ndarray]:
    """The oracle's scores and confidence, one row per input."""
    from bisup.converters import tflite_model
    from bisup.converters.runners import TflmRunner
    from bisup.converters.signature import CONFIDENCE, SCORES

    out = TflmRunner(model, tflite_model.read(model), arena).run(x_q)
    return {"scores": out[SCORES].reshape(len(x_q), -1), "confidence": out[CONFIDENCE].reshape(len(x_q))}


def _matches(rows: np.ndarray, tflm: dict[str, np.ndarray]) -> np.ndarray:
    """Per input: every byte of ``rows`` (scores then confidence) equals TFLM's."""
    classes = tflm["scores"].shape[1]
    return np.all(rows[:, :classes] == tflm["scores"], axis=1) & (rows[:, classes] == tflm["confidence"])


def emulated(model: bytes, x_q: np.ndarray, tflm: dict[str, np.ndarray], layers: list[dict]) -> list[dict]:
    """Each board with its own kernels, then the M4 with the portable ones: instructions and output bytes."""
    from bisup.hil import model_run
    from bisup.hil.target import HilError

    runs = []
    for board, portable in [(board, False) for board in BOARDS] + [(PORTABLE_BOARD, True)]:
        _say(f"  {board}{' (portable kernels)' if portable else ''}: {len(x_q)} inputs")
        start = time.perf_counter()
        try:
            run = model_run.run(model, x_q, board, portable=portable)
        except HilError as exc:  # one board failing (no QEMU, a build error) leaves the others' figures
            runs.append({"board": board, "portable": portable, "error": str(exc)})
            continue
        rows = np.concatenate([run.scores, run.confidence[:, None]], axis=1)
        per_layer = [{"op": op, "instructions": float(count)} for op, count in
                     zip(run.layer_ops, run.layer_instructions, strict=True)]
        if [layer["op"] for layer in layers] == list(run.layer_ops):  # the report's rows are the same kernel calls
            for row, layer in zip(per_layer, layers, strict=True):
                row["macs"] = layer["macs"]
        runs.append({"board": board, "portable": portable, "kernel_set": run.kernel_set,
                     "instructions": float(np.median(run.instructions)),
                     "instructions_spread": float(np.ptp(run.instructions)),
                     "outputs_equal_tflm": float(np.mean(_matches(rows, tflm))), "inputs": len(x_q),
                     "emulator_wall_s": round(time.perf_counter() - start, 1), "layers": per_layer})
    return runs


def measure(name: str, inputs: int, hil_inputs: int, work: Path) -> dict:
    """All figures of one model."""
    from bisup.converters import tflite_model
    from bisup.converters.runners import quantize

    model_path, calib_path = mlperf_models.ensure(name, _say)
    out = work / name
    _say(f"{name}: bisup export")
    export_s, report = export(model_path, calib_path, out)
    model = (out / "model.tflite").read_bytes()
    x_q = quantize(np.load(calib_path)["x"][:inputs], tflite_model.read(model).inputs[0])
    _say(f"{name}: C engine (host gcc -O2) against tflite-micro on {len(x_q)} inputs")
    tflm = _tflm(model, x_q, report["arena_recommended_bytes"])
    result = {"model": name, "macs": report["engine"]["macs"], "export_wall_s": round(export_s, 1),
              "host_byte_exact": host_byte_exact(out, model, x_q, tflm), "host_inputs": len(x_q),
              "arena_bytes": report["engine"]["arena_bytes"],
              "arena_lower_bound_bytes": report["engine"]["arena_lower_bound_bytes"],
              "tflm_arena_bytes": report["engine"]["tflm_arena_bytes"],
              "flash_bytes": report["engine"].get("flash_bytes"),  # absent without arm-none-eabi-gcc
              "tflm_flash_bytes": report["engine"]["tflm_flash_bytes"],
              "published_ms": {p.label: round(p.ms(name), 1) for p in (*M4_PUBLISHED, M7_RECORD, M85_RECORD)}}
    _say(f"{name}: emulated boards")
    hil_x = x_q[:hil_inputs]
    result["boards"] = emulated(model, hil_x, {k: v[:hil_inputs] for k, v in tflm.items()},
                                report["engine"]["layers"])
    return result


def _own(result: dict, board: str) -> dict | None:
    return next((run for run in result["boards"] if run["board"] == board and not run["portable"]
                 and "error" not in run), None)


def _portable(result: dict) -> dict | None:
    return next((run for run in result["boards"] if run["portable"] and "error" not in run), None)


def _mi(instructions: float) -> str:
    return f"{instructions / 1e6:.2f} M"


def print_tables(results: list[dict]) -> None:
    """Markdown tables: the export, the emulated boards, the M4 against MLPerf Tiny, the M4's layers."""
    print("| model | MACs | export (s) | C = TFLM (host) | arena C engine / lower bound / TFLM (B) "
          "| flash C engine / TFLM (B) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['macs'] / 1e6:.3f} M | {r['export_wall_s']:.1f} | "
              f"{r['host_byte_exact']:.1%} of {r['host_inputs']} | {r['arena_bytes']:,} / "
              f"{r['arena_lower_bound_bytes']:,} / {r['tflm_arena_bytes']:,} | "
              f"{'-' if r['flash_bytes'] is None else format(r['flash_bytes'], ',')} / {r['tflm_flash_bytes']:,} |")
    print()
    print("| model | board | kernels | instructions / inference | per MAC | outputs = TFLM |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for run in r["boards"]:
            if "error" in run:
                print(f"| {r['model']} | {run['board']} | {'portable' if run['portable'] else 'own'} | "
                      f"failed: {run['error'].splitlines()[0]} | | |")
                continue
            print(f"| {r['model']} | {run['board']} | {run['kernel_set']} | {_mi(run['instructions'])} | "
                  f"{run['instructions'] / r['macs']:.2f} | {run['outputs_equal_tflm']:.0%} of {run['inputs']} |")
    print()
    print("Milliseconds at the reference boards' clocks ASSUME ONE INSTRUCTION PER CYCLE (emulated instructions "
          "/ clock). Published: MLPerf Tiny closed division, 1000 / median throughput (see the docstring's files); "
          "in brackets the cycles per inference at the board's clock, the instruction budget to beat.")
    print()
    print("| model | bisup M4 (an386) | at 120 MHz | own / portable kernels | "
          + " | ".join(p.label for p in M4_PUBLISHED) + " | M7 at 280 MHz / record | M55 / M85 record cycles |")
    print("|---|---|---|---|" + "---|" * len(M4_PUBLISHED) + "---|---|")
    for r in results:
        m4, base = _own(r, PORTABLE_BOARD), _portable(r)
        m7, m55 = _own(r, "mps2-an500"), _own(r, "mps3-an547")
        name = r["model"]
        cells = [f"{p.ms(name):.1f} ms ({_mi(p.cycles(name))})" for p in M4_PUBLISHED]
        m4_cells = ["-", "-"] if m4 is None else [_mi(m4["instructions"]), f"{m4['instructions'] / 120e3:.1f} ms"]
        ratio = f"{m4['instructions'] / base['instructions']:.3f}" if m4 and base else "-"
        m7_cell = "-" if m7 is None else f"{m7['instructions'] / 280e3:.1f} ms / {M7_RECORD.ms(name):.1f} ms"
        m55_cell = "-" if m55 is None else f"{_mi(m55['instructions'])} / {_mi(M85_RECORD.cycles(name))}"
        print(f"| {name} ({r['macs'] / 1e6:.2f} M MACs) | {' | '.join(m4_cells)} | {ratio} | {' | '.join(cells)} "
              f"| {m7_cell} | {m55_cell} |")
    for r in results:
        m4 = _own(r, PORTABLE_BOARD)
        if m4 is None:
            continue
        print(f"\n{r['model']} on {PORTABLE_BOARD} ({m4['kernel_set']} kernels), per layer:\n")
        print("| # | op | MACs | instructions | per MAC |")
        print("|---|---|---|---|---|")
        for index, layer in enumerate(m4["layers"]):
            macs = layer.get("macs")
            per_mac = f"{layer['instructions'] / macs:.2f}" if macs else ""
            print(f"| {index} | {layer['op']} | {macs if macs is not None else '?':,} | "
                  f"{layer['instructions']:,.0f} | {per_mac} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(mlperf_models.MODELS), help="comma-separated: kws,vww,ic")
    parser.add_argument("--inputs", type=int, default=256, help="inputs for the host byte-exactness check")
    parser.add_argument("--hil-inputs", type=int, default=3, help="inputs per emulated board (instruction counts "
                        "hardly depend on the input: the median is reported, the spread in --json)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    parser.add_argument("--out", type=Path, help="keep the exports here (default: a temporary folder)")
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = sorted(set(names) - set(mlperf_models.MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(mlperf_models.MODELS)}")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bisup-mlperf-") as temporary:
        work = args.out or Path(temporary)
        results = [measure(name, args.inputs, args.hil_inputs, work) for name in names]
    load = {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()],
            "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps({"models": results, "load_average": load}, indent=2))
        return
    print_tables(results)
    print(f"\nload average (1, 5, 15 min) before {load['before']}, after {load['after']}, on {load['cpus']} CPUs")


if __name__ == "__main__":
    main()
