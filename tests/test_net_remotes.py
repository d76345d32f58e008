"""Network remotes against a real KServe model server (Open Inference Protocol V2 and the TF-Serving-
compatible V1 REST API), and the batching / deadline / circuit-breaker wrappers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bisup.firmware_bridge.net_remotes import OipRemote
from bisup.firmware_bridge.remotes import KerasRemote, RemoteError, open_remote
from bisup.firmware_bridge.resilience import BatchingRemote, CircuitBreaker, resilient

SERVER = Path(__file__).with_name("kserve_keras.py")
MODEL = "digits"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> Path:
    """The digits CNN, untrained but seeded: predictions only have to agree, not to be right. It ends in logits."""
    import keras

    from bisup.examples.digits import local_cnn

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("served") / "digits.keras"
    local_cnn(10).save(path)
    return path


@contextlib.contextmanager
def _kserve(keras_file: Path, port: int, log: Path):
    """A KServe model server on a loopback port (gRPC off; metrics share the HTTP port), stopped on exit."""
    command = [sys.executable, str(SERVER), "--model_path", str(keras_file), "--model_name", MODEL,
               "--http_port", str(port), "--enable_grpc", "false"]
    with open(log, "a") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", proc, log)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(keras_file, tmp_path_factory):
    """host:port of a KServe server shared by the module's protocol tests."""
    with _kserve(keras_file, _free_port(), tmp_path_factory.mktemp("kserve") / "server.log") as address:
        yield address


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if proc.poll() is not None:
            pytest.fail(f"KServe exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"KServe not ready within {timeout_s} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    from bisup.examples.digits import splits

    return splits(0)["test"][0][:40].astype(np.float32)


URLS = {"oip": "oip+http://{}/v2/models/" + MODEL, "tfserving": "tfserving+http://{}/v1/models/" + MODEL}


def _one_line_naming(exc: pytest.ExceptionInfo, url: str, *needles: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and url in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.slow
@pytest.mark.parametrize("protocol", URLS)
def test_predictions_equal_the_in_process_model(server, keras_file, inputs, protocol):
    remote = open_remote(URLS[protocol].format(server))
    got, expected = remote.predict(inputs), KerasRemote(keras_file).predict(inputs)
    assert got.shape == (len(inputs), 10)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)  # the server sends logits; the client softmaxes
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", URLS)
def test_concurrent_callers_through_batching_get_their_own_rows(server, keras_file, inputs, protocol):
    """Thread-local keep-alive connections under the batching wrapper, on the real server."""
    remote = resilient(open_remote(URLS[protocol].format(server)), max_batch=16, deadline_ms=10_000)
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, remote.predict(inputs[i:i + 1])))
               for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    remote.close()
    got = np.concatenate([results[i] for i in range(len(inputs))])
    np.testing.assert_allclose(got, KerasRemote(keras_file).predict(inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", URLS)
def test_unknown_model_is_one_line(server, protocol):
    url = URLS[protocol].format(server).replace(MODEL, "nope")
    with pytest.raises(RemoteError) as exc:
        open_remote(url)
    _one_line_naming(exc, url, "404", "nope does not exist", "check the model name")


@pytest.mark.slow
@pytest.mark.parametrize("protocol", URLS)
def test_wrong_input_shape_is_one_line(server, protocol):
    url = URLS[protocol].format(server)
    with pytest.raises(RemoteError) as exc:
        open_remote(url).predict(np.zeros((2, 3), np.float32))
    _one_line_naming(exc, url, "HTTP 500", "incompatible shape (2, 3)")


@pytest.mark.slow
@pytest.mark.parametrize("protocol", URLS)
def test_an_open_remote_survives_a_server_restart(keras_file, inputs, tmp_path, protocol):
    """Restarted: the kept-alive connection to the old process is replaced transparently. Down: a one-line error."""
    port, log = _free_port(), tmp_path / "server.log"
    with _kserve(keras_file, port, log) as address:
        url = URLS[protocol].format(address)
        remote = open_remote(url)
        expected = remote.predict(inputs[:2])
    with _kserve(keras_file, port, log):
        np.testing.assert_allclose(remote.predict(inputs[:2]), expected, rtol=1e-6)
    with pytest.raises(RemoteError) as exc:
        remote.predict(inputs[:2])
    _one_line_naming(exc, url, "connection refused")


@pytest.mark.slow
def test_unknown_output_name_is_refused_at_open(server):
    url = URLS["oip"].format(server) + "?output=probabilities"
    with pytest.raises(RemoteError) as exc:
        open_remote(url)
    _one_line_naming(exc, url, "no output 'probabilities'", "['logits']")


@pytest.mark.parametrize("protocol", URLS)
def test_server_down_is_one_line(protocol):
    url = URLS[protocol].format(f"127.0.0.1:{_free_port()}")  # nothing listens there
    with pytest.raises(RemoteError) as exc:
        open_remote(url)
    _one_line_naming(exc, url, "connection refused", "is the model server running")


def test_silent_server_times_out():
    """A TCP listener that never answers (the kernel accepts into the backlog): the client's timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = URLS["oip"].format(f"127.0.0.1:{listener.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(RemoteError) as exc:
            OipRemote(url, timeout_s=0.3)
    assert time.monotonic() - start < 3
    _one_line_naming(exc, url, "no answer within 0.3 s")


@pytest.mark.parametrize(("url", "needle"), [
    ("grpc://host:8081/v2/models/m", "unknown scheme 'grpc'"),
    ("oip+http://host:8080/v2/m", "expected a URL like oip+http://host:8080/v2/models/NAME"),
    ("tfserving+http:///v1/models/m", "expected a URL like tfserving+http://host:8501/v1/models/NAME"),
])
def test_malformed_urls_are_refused(url, needle):
    with pytest.raises(RemoteError) as exc:
        open_remote(url)
    _one_line_naming(exc, url, needle)


class FakeNetworkRemote:
    """In-process stand-in for a network remote: a fixed linear softmax model whose latency, failures and
    blocking the test controls, and which records the size of every call it gets."""

    name = "fake"

    def __init__(self, latency_s: float = 0.0):
        self.latency_s, self.fail, self.calls = latency_s, False, []
        self.release = threading.Event()
        self.release.set()
        self._weights = np.random.default_rng(0).normal(size=(4, 3))

    def expected(self, x: np.ndarray) -> np.ndarray:
        logits = x @ self._weights
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        self.release.wait()
        time.sleep(self.latency_s)
        if self.fail:
            raise RemoteError("remote fake failed: injected")
        return self.expected(x)


def _in_threads(fn, count: int) -> list:
    """``fn(i)`` in ``count`` threads started together; each result or the exception it raised."""
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # collected for the test to inspect
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_batching_coalesces_64_threads_into_few_calls():
    remote = FakeNetworkRemote(latency_s=0.005)
    batching = BatchingRemote(remote, max_batch=32, max_delay_ms=5)
    x = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)
    results = _in_threads(lambda i: batching.predict(x[i:i + 1]), 64)
    batching.close()
    np.testing.assert_allclose(np.concatenate(results), remote.expected(x), rtol=1e-6)
    assert sum(remote.calls) == 64 and max(remote.calls) <= 32
    assert len(remote.calls) <= 16, remote.calls  # 64 one-row calls without batching


def test_batching_hands_back_rows_of_any_count_and_shape():
    remote = FakeNetworkRemote()
    batching = BatchingRemote(remote, max_batch=8, max_delay_ms=20)
    rng = np.random.default_rng(2)
    requests = [rng.normal(size=(1 + i % 4, 4)).astype(np.float32) for i in range(12)]
    requests.append(rng.normal(size=(10, 4)).astype(np.float32))  # more rows than max_batch: a call of its own
    results = _in_threads(lambda i: batching.predict(requests[i]), len(requests))
    batching.close()
    for x, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result, remote.expected(x), rtol=1e-6)
    assert max(remote.calls) == 10 and sorted(remote.calls)[-2] <= 8


def test_a_failing_batch_raises_in_every_caller():
    remote = FakeNetworkRemote()
    remote.fail = True
    batching = BatchingRemote(remote, max_batch=64, max_delay_ms=20)
    results = _in_threads(lambda i: batching.predict(np.zeros((1, 4), np.float32)), 16)
    batching.close()
    assert all(isinstance(r, RemoteError) and str(r) == "remote fake failed: injected" for r in results), results


def test_a_bug_in_the_remote_becomes_a_remote_error_and_batching_goes_on():
    remote = FakeNetworkRemote()
    batching = BatchingRemote(remote)
    with pytest.raises(RemoteError, match="^remote fake failed: ValueError: matmul"):
        batching.predict(np.zeros((1, 5), np.float32))  # (1, 5) @ (4, 3)
    assert batching.predict(np.zeros((1, 4), np.float32)).shape == (1, 3)
    batching.close()


def test_deadline_raises_without_hanging_and_abandoned_requests_are_not_sent():
    remote = FakeNetworkRemote()
    remote.release.clear()  # the remote hangs until the test lets it go
    batching = BatchingRemote(remote, max_delay_ms=0, deadline_ms=50)
    for _ in range(2):  # the first reaches the hung remote; the second waits in the queue behind it
        start = time.monotonic()
        with pytest.raises(RemoteError, match=r"^remote fake did not answer within 50 ms$"):
            batching.predict(np.zeros((1, 4), np.float32))
        assert time.monotonic() - start < 0.5
    remote.release.set()
    assert batching.predict(np.zeros((1, 4), np.float32), deadline_ms=5000).shape == (1, 3)
    batching.close()
    assert remote.calls == [1, 1]  # the hung call and the last one; the abandoned second never went out


def test_closed_batching_refuses_requests():
    batching = BatchingRemote(FakeNetworkRemote())
    batching.close()
    batching.close()
    with pytest.raises(RemoteError, match="closed"):
        batching.predict(np.zeros((1, 4), np.float32))


def test_breaker_opens_fails_fast_and_closes_after_the_cooldown():
    remote = FakeNetworkRemote()
    breaker = CircuitBreaker(remote, failures=3, cooldown_s=0.3)
    x = np.zeros((1, 4), np.float32)
    remote.fail = True
    for _ in range(3):
        with pytest.raises(RemoteError, match="injected"):
            breaker.predict(x)
    assert breaker.state == "open"
    start = time.monotonic()
    with pytest.raises(RemoteError, match=r"^circuit open: remote fake failed 3 times; retrying in 0\.\d s "
                                          r"\(last: remote fake failed: injected\)$"):
        breaker.predict(x)
    assert time.monotonic() - start < 0.1 and len(remote.calls) == 3  # no call reached the remote
    time.sleep(0.35)
    remote.fail = False
    assert breaker.predict(x).shape == (1, 3)  # the trial call succeeds
    assert breaker.state == "closed"
    remote.fail = True
    with pytest.raises(RemoteError, match="injected"):  # the failure count starts again from zero
        breaker.predict(x)
    assert breaker.state == "closed"


def test_breaker_lets_one_trial_through_and_a_failed_trial_reopens():
    remote = FakeNetworkRemote()
    breaker = CircuitBreaker(remote, failures=1, cooldown_s=0.1)
    x = np.zeros((1, 4), np.float32)
    remote.fail = True
    with pytest.raises(RemoteError, match="injected"):
        breaker.predict(x)
    time.sleep(0.15)
    remote.release.clear()
    trial = threading.Thread(target=lambda: pytest.raises(RemoteError, breaker.predict, x))
    trial.start()
    while breaker.state != "half-open":
        time.sleep(0.001)
    with pytest.raises(RemoteError, match="a trial call is running"):
        breaker.predict(x)
    remote.release.set()
    trial.join()
    assert breaker.state == "open" and len(remote.calls) == 2


def test_resilient_counts_deadline_misses_as_failures():
    remote = FakeNetworkRemote(latency_s=0.5)  # slower than the deadline
    wrapped = resilient(remote, max_batch=4, max_delay_ms=0, deadline_ms=30, failures=2, cooldown_s=60)
    x = np.zeros((1, 4), np.float32)
    for _ in range(2):
        with pytest.raises(RemoteError, match="did not answer within 30 ms"):
            wrapped.predict(x)
    start = time.monotonic()
    with pytest.raises(RemoteError, match="circuit open: remote fake failed 2 times; retrying in 60.0 s"):
        wrapped.predict(x)
    assert time.monotonic() - start < 0.1  # at once, not after the 30 ms deadline plus the remote's 0.5 s
    wrapped.close(timeout_s=2)
