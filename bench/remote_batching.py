"""Remote throughput under many concurrent single-row requests: per request vs ``BatchingRemote``.

    python bench/remote_batching.py                                     # an in-process Keras CNN for 8x8x1 inputs
    python bench/remote_batching.py --remote oip+http://host:8080/v2/models/digits   # any remote spec

64 client threads (as many bridge workers serving unsure devices) each send single rows; both modes
run in the same process on the same remote, each ROUNDS times, and the median requests/s is reported
with the ratio (batched / per request) and the mean rows per remote call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

ROUNDS = 3
THREADS = 64
REQUESTS_PER_THREAD = 20


class CountingRemote:
    """Passes calls through and records how many rows each remote call carried."""

    def __init__(self, remote):
        self.remote, self.name, self.rows = remote, remote.name, []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.rows.append(len(x))
        return self.remote.predict(x)


def _keras_remote(folder: Path):
    """A CNN of the remote's size class (untrained: only speed matters here), loaded like a bridge would."""
    import keras

    from bisup.firmware_bridge.remotes import open_remote

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
        keras.layers.Conv2D(64, 3, activation="relu", padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.save(folder / "remote.keras")
    return open_remote(folder / "remote.keras")


def _requests_per_s(predict, rows: np.ndarray) -> float:
    """All THREADS threads send REQUESTS_PER_THREAD single rows each, started together."""
    barrier = threading.Barrier(THREADS + 1)

    def client(i: int) -> None:
        barrier.wait()
        for j in range(REQUESTS_PER_THREAD):
            predict(rows[(i * REQUESTS_PER_THREAD + j) % len(rows)][None])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return THREADS * REQUESTS_PER_THREAD / (time.perf_counter() - start)


def main() -> None:
    from bisup.firmware_bridge.remotes import open_remote
    from bisup.firmware_bridge.resilience import BatchingRemote

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remote", help="a remote spec (path or URL); default: a Keras CNN built here")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        remote = open_remote(args.remote) if args.remote else _keras_remote(Path(folder))
        rows = np.random.default_rng(0).uniform(0, 1, size=(256, 8, 8, 1)).astype(np.float32)
        remote.predict(rows[:1])  # warm-up: graph tracing, connection
        counting = CountingRemote(remote)
        batching = BatchingRemote(counting, args.max_batch, args.max_delay_ms)
        direct, batched = [], []
        for _ in range(ROUNDS):  # interleaved, so that drift on a noisy machine hits both modes alike
            direct.append(_requests_per_s(remote.predict, rows))
            batched.append(_requests_per_s(batching.predict, rows))
        batching.close()

    per_request, coalesced = statistics.median(direct), statistics.median(batched)
    print(f"remote: {remote.name}; {THREADS} threads x {REQUESTS_PER_THREAD} single-row requests, "
          f"median of {ROUNDS} rounds")
    print(f"per request:    {per_request:9.0f} requests/s")
    print(f"BatchingRemote: {coalesced:9.0f} requests/s (max_batch {args.max_batch}, "
          f"max_delay {args.max_delay_ms:g} ms, mean {np.mean(counting.rows):.1f} rows per remote call)")
    print(f"-> ratio {coalesced / per_request:.1f}x")


if __name__ == "__main__":
    main()
