"""What watching a bridge costs: ``RequestHandler.handle`` with the metrics, the drift alarm and the
collector attached, against the same handler with no observer, in the same run.

    python bench/monitoring.py        # uses the demo's cached models (runs `bisup demo` first if needed)

Each round sends 300 distinct INFER bodies (so neither the retry cache nor the collector's digest
check short-cuts them) through a handler whose remote is the demo's remote CNN, interleaving the
two handlers round by round; prints the median per-request time and the ratio.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROUNDS = 7
REQUESTS = 300


def main() -> None:
    from bisup.examples import demo, digits
    from bisup.firmware_bridge import protocol as p
    from bisup.firmware_bridge.bundle import Bundle
    from bisup.firmware_bridge.collect import Collector
    from bisup.firmware_bridge.drift import DriftAlarm
    from bisup.firmware_bridge.events import Fanout
    from bisup.firmware_bridge.handler import RequestHandler
    from bisup.firmware_bridge.metrics import Metrics
    from bisup.firmware_bridge.relay import Relay
    from bisup.firmware_bridge.remotes import open_remote

    out = demo.cache_root() / "demo"
    if not (out / "model.tflite").is_file():
        demo.run(progress=lambda m: print(f"setup: {m}", file=sys.stderr))
    bundle = Bundle.load(out)
    remote = open_remote(demo.cache_root() / f"{demo.MODEL_VERSION}-seed0" / "remote.keras")
    x, _ = digits.splits(0)["test"]
    x_q, labels, conf = bundle.local_model().run(x)
    with tempfile.TemporaryDirectory() as folder:
        metrics, drift = Metrics(), DriftAlarm.from_thresholds(bundle.thresholds, lambda m: None)
        metrics.watch_drift(drift)
        handlers = {
            "bare": lambda: RequestHandler(Relay(remote, bundle.remote_supervisor, bundle.quantization), bundle),
            "watched": lambda: RequestHandler(
                Relay(remote, bundle.remote_supervisor, bundle.quantization), bundle,
                events=Fanout(metrics, drift, Collector(Path(folder) / str(time.monotonic_ns()), bundle.quantization,
                                                        bundle.model_hash.hex(), lambda m: None))),
        }
        times: dict[str, list[float]] = {name: [] for name in handlers}
        for r in range(ROUNDS):
            bodies = [p.encode(p.Infer(i + 1, int(labels[i % len(x)]), int(conf[i % len(x)]),
                                       (x_q[i % len(x)].astype("int16") + r + i // len(x)).clip(-128, 127)
                                       .astype("int8").tobytes(), boot=r)) for i in range(REQUESTS)]
            for name, make in handlers.items():
                handler = make()
                start = time.perf_counter()
                for body in bodies:
                    handler.handle("bench", body)
                times[name].append((time.perf_counter() - start) / REQUESTS)
                for observer in getattr(handler.events, "observers", ()):
                    getattr(observer, "close", lambda: None)()
    bare, watched = statistics.median(times["bare"]), statistics.median(times["watched"])
    print(f"handler with metrics + drift alarm + collector: {watched * 1e6:8.1f} us/request vs bare handler "
          f"{bare * 1e6:8.1f} us/request -> ratio {watched / bare:.3f}x")


if __name__ == "__main__":
    main()
