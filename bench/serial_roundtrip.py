"""Serial round trip over a pty: the bridge path against a raw pty echo of the same bytes.

    python bench/serial_roundtrip.py [--requests 1000]

Baseline: a thread echoes every byte on the far end of a pty; the client writes one INFER frame
and waits for the same number of bytes back. Subject: a virtual device sends the same INFER frame
to the serial bridge (decode, validate, dedup cache, relay to the remote model, remote supervisor,
answer frame) and waits for the answer. Both run in this process, in this run. The remote is the
demo's remote CNN as a float TFLite model, so model time does not hide the transport; its own
time per call is printed too. Every request uses a new sequence number, so none is served from
the cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _summary(name: str, seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    result = {"name": name, "rps": len(ms) / (ms.sum() / 1000), "p50_ms": float(np.percentile(ms, 50)),
              "p99_ms": float(np.percentile(ms, 99))}
    print(f"{name:28s} {result['rps']:8.0f} req/s   p50 {result['p50_ms']:6.3f} ms   p99 {result['p99_ms']:6.3f} ms")
    return result


def _echo_baseline(frame: bytes, count: int) -> list[float]:
    from bisup.firmware_bridge.ptylink import pty_pair

    client, path, slave = pty_pair()
    stop = threading.Event()

    def echo() -> None:
        import select

        while not stop.is_set():
            if select.select([slave], [], [], 0.05)[0]:
                os.write(slave, os.read(slave, 4096))

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        client.write(frame)
        got = 0
        while got < len(frame):
            got += len(client.read(4096))
        times.append(time.perf_counter() - start)
    stop.set()
    thread.join()
    client.close()
    os.close(slave)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()

    from bench.demo_setup import demo_setup
    from bisup.firmware_bridge import framing
    from bisup.firmware_bridge import protocol as p
    from bisup.firmware_bridge.device_model import LocalModel
    from bisup.firmware_bridge.handler import RequestHandler
    from bisup.firmware_bridge.relay import Relay
    from bisup.firmware_bridge.remotes import open_remote
    from bisup.firmware_bridge.serial_bridge import bridge_over_pty
    from bisup.firmware_bridge.virtual_device import SerialLink, VirtualDevice

    setup = demo_setup()
    bundle = setup.bundle
    remote = open_remote(setup.float_remote())
    local = LocalModel(bundle.path / "model.tflite")
    frame = framing.encode_frame(p.encode(p.Infer(1, setup.label, setup.confidence, setup.x_q.tobytes())))

    print(f"{args.requests} requests, INFER frame of {len(frame)} bytes, answer frame of 13 bytes")
    baseline = _summary("raw pty echo (baseline)", _echo_baseline(frame, args.requests))
    x = bundle.quantization.dequantize(setup.x_q)[None]
    remote_only: list[float] = []
    for _ in range(200):
        start = time.perf_counter()
        remote.predict(x)
        remote_only.append(time.perf_counter() - start)
    print(f"{'remote model alone':28s} {'':14s}   p50 {1000 * statistics.median(remote_only):6.3f} ms")

    handler = RequestHandler(Relay(remote, bundle.remote_supervisor, bundle.quantization), bundle)
    with bridge_over_pty(handler) as port:
        device = VirtualDevice(SerialLink(port), local, bundle.threshold_int8, timeout_s=2.0, retries=0)
        device.hello()
        times = []
        for _ in range(args.requests):
            start = time.perf_counter()
            device.ask(setup.x_q, setup.label, setup.confidence)
            times.append(time.perf_counter() - start)
    bridge = _summary("device -> bridge -> answer", times)
    assert device.stats.answered == args.requests, device.stats
    print(f"ratio vs echo: p50 {bridge['p50_ms'] / baseline['p50_ms']:.2f}x, p99 "
          f"{bridge['p99_ms'] / baseline['p99_ms']:.2f}x, throughput {bridge['rps'] / baseline['rps']:.2f}x")


if __name__ == "__main__":
    main()
