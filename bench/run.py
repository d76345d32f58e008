"""Benchmarks, each against a baseline measured in the same run (these machines are noisy).

    python bench/run.py            # uses the demo's cached models (runs `bisup demo` first if needed)

1. Host int8 inference: TFLM (the board oracle used by export and calibrate) vs LiteRT XNNPACK.
2. Relay overhead: ``Relay.handle`` (dequantize, remote, remote supervisor) vs calling the remote
   model directly on the same inputs.
Prints per-call medians and the ratio to the baseline.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

ROUNDS = 5


def _median_per_call(fn, items) -> float:
    """Median over ROUNDS of the mean seconds per call of ``fn`` over ``items``."""
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for item in items:
            fn(item)
        rounds.append((time.perf_counter() - start) / len(items))
    return statistics.median(rounds)


def _report(name: str, subject: float, baseline: float, baseline_name: str) -> None:
    print(f"{name}: {subject * 1e6:9.1f} us/call vs {baseline_name} {baseline * 1e6:9.1f} us/call "
          f"-> ratio {subject / baseline:.2f}x")


def main() -> None:
    from bisup.calibration import single as calibrate
    from bisup.converters.runners import LiteRTRunner, TflmRunner, dequantize
    from bisup.examples import demo, digits
    from bisup.firmware_bridge.relay import InferRequest, Relay, RemoteSupervisor
    from bisup.firmware_bridge.remotes import open_remote

    out = demo.cache_root() / "demo"
    if not (out / "model.tflite").is_file():
        demo.run(progress=lambda m: print(f"setup: {m}", file=sys.stderr))
    local = calibrate.LocalModel(out / "model.tflite")
    x, _ = digits.splits(0)["test"]
    x_q, labels, confidence = local.run(x)

    tflm = TflmRunner(local.model, local.info, 1 << 20)
    litert = LiteRTRunner(local.model)
    batch = [row[None] for row in x_q[:200]]
    _report("TFLM int8 invoke (host)", _median_per_call(tflm.run, batch),
            _median_per_call(litert.run, batch), "LiteRT XNNPACK")

    remote = open_remote(demo.cache_root() / f"{demo.MODEL_VERSION}-seed0" / "remote.keras")
    relay = Relay(remote, RemoteSupervisor("max-softmax", 0.5), local.quantization)
    requests = [InferRequest("bench", i, x_q[i], int(labels[i]), int(confidence[i])) for i in range(100)]
    direct = [dequantize(r.input_int8, local.info.inputs[0]).astype(np.float32)[None] for r in requests]
    _report("Relay.handle per request", _median_per_call(relay.handle, requests),
            _median_per_call(remote.predict, direct), "remote.predict alone")


if __name__ == "__main__":
    main()
