"""MQTT bridge on a real mosquitto, against a raw paho echo on the same broker in the same run.

    python bench/mqtt_bridge.py [--requests 1000] [--devices 64] [--seconds 10]

Baseline: a paho client on the same shared subscription that republishes each request body to the
device's resp topic at QoS 1 (no decoding, no handler). Subject: a bridge worker (decode,
validate, dedup cache, handler, publish QoS 1, ack after the answer is published).

1. Round trip at QoS 1, one device, one request at a time: PING (the bridge path without a model)
   and INFER (with the demo's remote CNN as a float TFLite model, whose own time is printed).
2. Throughput: 16 devices, each one request at a time, PING, bridge vs echo.
3. Batching: 64 devices send INFER to a Keras remote (the demo's remote CNN), one request at a time
   each; per-request remote calls vs the bridge's dynamic batching.
All clients set TCP_NODELAY (and the broker config sets set_tcp_nodelay).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

DEPLOYMENT = "bench"  # the topics' deployment level, served by both the echo and the bridge worker


def _summary(name: str, seconds: list[float], wall: float | None = None) -> dict:
    ms = np.array(seconds) * 1000
    rps = len(ms) / (wall if wall else ms.sum() / 1000)
    result = {"name": name, "rps": rps, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
    print(f"{name:44s} {rps:8.0f} req/s   p50 {result['p50_ms']:7.3f} ms   p99 {result['p99_ms']:7.3f} ms")
    return result


class Echo:
    """The baseline: raw paho, same topics, same QoS, answers from the network thread."""

    def __init__(self, broker):
        from bisup.firmware_bridge.mqtt_link import connect, make_client, reply_topic, requests_of

        self.client = make_client(broker, "bench-echo")
        self.client.on_message = lambda c, u, m: c.publish(reply_topic(m.topic), m.payload, qos=1)
        connect(self.client, broker)
        self.client.subscribe(f"$share/bench-echo/{requests_of(DEPLOYMENT)}", qos=1)
        time.sleep(0.2)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Device:
    """One client that sends a body and waits for the reply on its resp topic."""

    def __init__(self, broker, device_id: str):
        from bisup.firmware_bridge.mqtt_link import connect, make_client, request_topic, response_topic

        self.topic, self.reply = request_topic(device_id, DEPLOYMENT), threading.Event()
        self.client = make_client(broker, f"bench-{device_id}")
        self.client.on_message = lambda c, u, m: self.reply.set()
        connect(self.client, broker)
        self.client.subscribe(response_topic(device_id, DEPLOYMENT), qos=1)

    def ask(self, body: bytes) -> float:
        self.reply.clear()
        start = time.perf_counter()
        self.client.publish(self.topic, body, qos=1)
        if not self.reply.wait(10):
            raise RuntimeError("no reply within 10 s")
        return time.perf_counter() - start

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _sequential(broker, body: Callable[[], bytes], count: int) -> list[float]:
    device = Device(broker, "seq")
    try:
        for _ in range(20):
            device.ask(body())  # warm-up
        return [device.ask(body()) for _ in range(count)]
    finally:
        device.stop()


def _concurrent(broker, body: Callable[[], bytes], devices: int, seconds: float) -> tuple[list[float], float]:
    clients = [Device(broker, f"c{i}") for i in range(devices)]
    times: list[float] = []
    lock, stop = threading.Lock(), threading.Event()

    def loop(device: Device) -> None:
        mine = []
        while not stop.is_set():
            mine.append(device.ask(body()))
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=loop, args=(c,)) for c in clients]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    for client in clients:
        client.stop()
    return times, wall


def _with_bridge(broker, handler, threads: int, work):
    from bisup.firmware_bridge.admission import Limits
    from bisup.firmware_bridge.mqtt_bridge import Routing, start_workers

    # Session expiry 0: a stopped worker must not keep a share of the next measurement's requests. No rate limit:
    # each simulated device asks as fast as it is answered, far past --device-rate, to measure the bridge's path.
    workers = start_workers(broker, handler, 1, threads=threads, session_expiry_s=0, prefix="bench-",
                            routing=Routing(DEPLOYMENT), limits=Limits(rate=0))
    time.sleep(0.2)
    try:
        return work()
    finally:
        workers[0].stop()


def _with_echo(broker, work):
    echo = Echo(broker)
    try:
        return work()
    finally:
        echo.stop()


def _figures(seconds: list[float], wall: float | None = None) -> dict:
    ms = np.array(seconds) * 1000
    return {"rps": len(ms) / (wall if wall else ms.sum() / 1000), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def _median_of_rounds(cases: list[Callable], rounds: int) -> list[dict]:
    """Each case once per round, the cases interleaved (so drift hits all alike); the median per figure."""
    runs: list[list[dict]] = [[] for _ in cases]
    for _ in range(rounds):
        for i, case in enumerate(cases):
            result = case()
            runs[i].append(_figures(*result) if isinstance(result, tuple) else _figures(result))
    return [{key: float(np.median([r[key] for r in case_runs])) for key in case_runs[0]} for case_runs in runs]


def _show(name: str, result: dict) -> None:
    print(f"{name:44s} {result['rps']:8.0f} req/s   p50 {result['p50_ms']:7.3f} ms   p99 {result['p99_ms']:7.3f} ms")


def _predict_times(remote, x, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        remote.predict(x)
        times.append(time.perf_counter() - start)
    return times


def _log_disconnects(log: Path) -> None:
    """Why any client lost its connection during the run, from mosquitto's own log."""
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if "disconnect" in line.lower() and "bench-" in line and "disconnected." not in line]
    print(f"\nunexpected disconnects in mosquitto's log: {len(lines)}")
    for line in lines[:5]:
        print(f"  {line}")


def _ratio(name: str, subject: dict, baseline: dict) -> None:
    p50, p99 = subject["p50_ms"] / baseline["p50_ms"], subject["p99_ms"] / baseline["p99_ms"]
    print(f"  {name}: p50 {p50:.2f}x, p99 {p99:.2f}x, throughput {subject['rps'] / baseline['rps']:.2f}x of the echo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    args = parser.parse_args()

    from bench.demo_setup import demo_setup
    from bisup.firmware_bridge import protocol as p
    from bisup.firmware_bridge.handler import RequestHandler
    from bisup.firmware_bridge.mqtt_link import Broker
    from bisup.firmware_bridge.relay import Relay
    from bisup.firmware_bridge.remotes import open_remote
    from bisup.firmware_bridge.resilience import BatchingRemote
    from bisup.service.broker import run_broker

    setup = demo_setup()
    bundle = setup.bundle
    seq = iter(range(1, 1 << 31))
    lock = threading.Lock()

    def infer() -> bytes:  # a new seq each time, so no answer comes from the dedup cache
        with lock:
            number = next(seq)
        return p.encode(p.Infer(number, setup.label, setup.confidence, setup.x_q.tobytes()))

    def ping() -> bytes:
        return p.encode(p.Ping(1))
    tflite = open_remote(setup.float_remote())
    keras_remote = open_remote(setup.cache / "remote.keras")

    def handler(remote) -> RequestHandler:
        return RequestHandler(Relay(remote, bundle.remote_supervisor, bundle.quantization), bundle, cache_size=16)

    with tempfile.TemporaryDirectory() as work, run_broker(Path(work)) as running:
        broker = Broker.from_url(running.url)
        print(f"mosquitto at {broker.url}; {args.requests} sequential requests; QoS 1 both ways; "
              f"{args.rounds} interleaved rounds, medians\n")
        x = bundle.quantization.dequantize(setup.x_q)[None]
        predict = _median_of_rounds([lambda: _predict_times(tflite, x, args.requests)], args.rounds)[0]
        print(f"{'remote predict alone (TFLite, one input)':44s} p50 {predict['p50_ms']:7.3f} ms")
        echo, bridge, inf = _median_of_rounds([
            lambda: _with_echo(broker, lambda: _sequential(broker, ping, args.requests)),
            lambda: _with_bridge(broker, handler(tflite), 16, lambda: _sequential(broker, ping, args.requests)),
            lambda: _with_bridge(broker, handler(tflite), 16, lambda: _sequential(broker, infer, args.requests)),
        ], args.rounds)
        _show("raw paho echo (baseline)", echo)
        _show("bridge, PING", bridge)
        _ratio("bridge PING vs echo", bridge, echo)
        _show("bridge, INFER (TFLite remote)", inf)
        target = echo["p50_ms"] + predict["p50_ms"]
        print(f"  bridge INFER vs echo + remote predict ({target:.3f} ms): p50 {inf['p50_ms'] / target:.2f}x")
        print(f"\n16 devices, {args.seconds:g} s each")
        echo16, bridge16 = _median_of_rounds([
            lambda: _with_echo(broker, lambda: _concurrent(broker, ping, 16, args.seconds)),
            lambda: _with_bridge(broker, handler(tflite), 16, lambda: _concurrent(broker, ping, 16, args.seconds)),
        ], args.rounds)
        _show("raw paho echo, 16 devices", echo16)
        _show("bridge PING, 16 devices", bridge16)
        _ratio("bridge vs echo", bridge16, echo16)
        _log_disconnects(Path(work) / "mosquitto.log")
        print(f"\n{args.devices} devices sending INFER to the Keras remote, {args.seconds:g} s each")
        plain = _summary("per-request remote calls", *_with_bridge(
            broker, handler(keras_remote), args.devices, lambda: _concurrent(broker, infer, args.devices,
                                                                             args.seconds)))
        batching = BatchingRemote(keras_remote, max_batch=args.devices, max_delay_ms=2.0)
        try:
            batched = _summary("dynamic batching (max 64, 2 ms)", *_with_bridge(
                broker, handler(batching), args.devices, lambda: _concurrent(broker, infer, args.devices,
                                                                             args.seconds)))
        finally:
            batching.close()
        print(f"  batching gain: {batched['rps'] / plain['rps']:.1f}x throughput")


if __name__ == "__main__":
    main()
