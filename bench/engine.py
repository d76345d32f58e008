"""The interpreter-free C engine against the tflite-micro interpreter, in the same run.

    python bench/engine.py

For the demo's digits model exported with each supervisor: host time per inference of the generated
C (gcc -O2, one input, 20,000 inferences) against tflite-micro's ``invoke()`` (the same input, the
Python call overhead included, about 1 us), and the memory figures the export report states.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_setup import demo_setup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COUNT = 20_000
ROUNDS = 5


def _c_time(model: bytes, x_q, work: Path) -> tuple[float, object]:
    from bisup.converters import engine

    generated = engine.write(model, work)
    exe = work / "engine_bench"
    subprocess.run(["gcc", "-std=c99", "-O2", f"-I{work}", f"-I{engine.KERNELS_DIR}",
                    str(work / "model_infer.c"), *map(str, engine.kernel_sources()),
                    str(Path(__file__).with_name("engine_bench.c")), "-o", str(exe)], check=True)
    runs = [float(subprocess.run([str(exe), str(COUNT)], input=x_q.tobytes(), capture_output=True, check=True,
                                 text=False).stdout.split()[0]) for _ in range(ROUNDS)]
    return statistics.median(runs) / 1e3, generated


def _tflm_time(model: bytes, x_q) -> float:
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(model, arena_size=1 << 16)
    interpreter.set_input(x_q[None], 0)
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(COUNT // 10):
            interpreter.invoke()
        rounds.append((time.perf_counter() - start) / (COUNT // 10) * 1e6)
    return statistics.median(rounds)


def main() -> None:
    from bisup.export.single import convert

    setup = demo_setup()
    x_q = setup.x_q
    print("| supervisor | generated C (us) | tflite-micro invoke (us) | ratio | arena B (lower bound) | TFLM arena B |")
    print("|---|---|---|---|---|---|")
    cache = setup.cache
    for supervisor in ("max-softmax", "margin", "entropy", "deepgini"):
        converted = convert(cache / "local.keras", setup.bundle.path / "train.npz", supervisor)
        with tempfile.TemporaryDirectory() as work:
            c_us, generated = _c_time(converted.model, x_q, Path(work))
        tflm_us = _tflm_time(converted.model, x_q)
        plan = generated.plan
        print(f"| {supervisor} | {c_us:.1f} | {tflm_us:.1f} | {c_us / tflm_us:.2f}x | "
              f"{plan.arena_bytes:,} ({plan.lower_bound_bytes:,}) | {converted.arena_bytes:,} |")


if __name__ == "__main__":
    main()
