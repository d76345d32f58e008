"""Wrappers around any ``RemoteModel``: dynamic batching with a per-request deadline, and a circuit breaker.

A device waits for its answer with a short timeout and falls back to its own label anyway, so a
bridge gains nothing by waiting longer than that for the remote. ``BatchingRemote`` answers many
concurrent single-row requests (one per bridge worker) with one remote call each few milliseconds,
which is how servers and accelerators reach their throughput, and gives up on a request at its
deadline. ``CircuitBreaker`` stops sending to a remote that keeps failing, so that every device
gets its fallback at once instead of after a timeout, and probes it again after a cooldown.

    remote = resilient(open_remote(url), max_batch=32, max_delay_ms=2, deadline_ms=500, failures=5, cooldown_s=10)
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from bisup.firmware_bridge.remotes import RemoteError, RemoteModel


@dataclass
class _Ticket:
    """One caller's rows, and where the dispatcher leaves its answer."""

    x: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: RemoteError | None = None
    abandoned: bool = False  # the caller's deadline passed: no need to send its rows any more

    def settle(self, result: np.ndarray | None = None, error: RemoteError | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class BatchingRemote:
    """Coalesces concurrent ``predict`` calls into one call of the wrapped remote.

    One dispatcher thread takes the first queued request, waits at most ``max_delay_ms`` for more (up
    to ``max_batch`` rows), calls the remote once and hands every caller its rows. While that call
    runs, new requests queue up, so a slow remote gets larger batches rather than a longer queue. A
    caller waits at most ``deadline_ms`` (None: as long as it takes); a request whose caller gave up
    is not sent. A remote failure is raised in every caller of that batch.
    """

    def __init__(self, remote: RemoteModel, max_batch: int = 32, max_delay_ms: float = 2.0,
                 deadline_ms: float | None = None):
        if max_batch < 1 or max_delay_ms < 0 or (deadline_ms is not None and deadline_ms <= 0):
            raise ValueError("max_batch must be >= 1, max_delay_ms >= 0 and deadline_ms > 0 (or None)")
        self.remote, self.name = remote, remote.name
        self.max_batch, self.max_delay_s, self.deadline_ms = max_batch, max_delay_ms / 1000, deadline_ms
        self._queue: queue.SimpleQueue[_Ticket | None] = queue.SimpleQueue()
        self._closed, self._lock = False, threading.Lock()
        self._thread = threading.Thread(target=self._dispatch, name=f"batching {remote.name}", daemon=True)
        self._thread.start()

    def predict(self, x: np.ndarray, deadline_ms: float | None = None) -> np.ndarray:
        """The wrapped remote's probabilities for ``x``; RemoteError after ``deadline_ms`` (default: the wrapper's)."""
        ticket = _Ticket(np.asarray(x, dtype=np.float32))
        with self._lock:  # so that no ticket is queued behind the close sentinel, where nobody would settle it
            if self._closed:
                raise RemoteError(f"remote {self.name}: the batching wrapper is closed")
            self._queue.put(ticket)
        wait_ms = self.deadline_ms if deadline_ms is None else deadline_ms
        if not ticket.done.wait(None if wait_ms is None else wait_ms / 1000):
            ticket.abandoned = True
            raise RemoteError(f"remote {self.name} did not answer within {wait_ms:g} ms")
        if ticket.error is not None:
            raise ticket.error
        return ticket.result

    def close(self, timeout_s: float | None = None) -> None:
        """Serves what is queued, then stops the dispatcher; later requests get a RemoteError.

        ``timeout_s`` bounds the wait for a remote call in flight (the dispatcher thread is a daemon).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout_s)

    def _dispatch(self) -> None:
        leftover, closing = None, False
        while not closing:
            first = leftover or self._queue.get()
            if first is None:
                return
            batch, leftover, closing = self._collect(first)
            self._serve(batch)

    def _collect(self, first: _Ticket) -> tuple[list[_Ticket], _Ticket | None, bool]:
        """``first`` and what else arrives within the delay, up to ``max_batch`` rows; a ticket that did not
        fit (it opens the next batch); and whether the close sentinel came."""
        batch, rows = [first], len(first.x)
        until = time.monotonic() + self.max_delay_s
        while rows < self.max_batch:
            try:
                ticket = self._queue.get(timeout=max(until - time.monotonic(), 0))
            except queue.Empty:
                break
            if ticket is None:
                return batch, None, True
            if rows + len(ticket.x) > self.max_batch:
                return batch, ticket, False
            batch.append(ticket)
            rows += len(ticket.x)
        return batch, None, False

    def _serve(self, batch: list[_Ticket]) -> None:
        by_shape: dict[tuple, list[_Ticket]] = {}
        for ticket in batch:
            if not ticket.abandoned:
                by_shape.setdefault(ticket.x.shape[1:], []).append(ticket)
        for group in by_shape.values():  # rows of another shape cannot share a tensor; they get their own call
            self._call(group)

    def _call(self, group: list[_Ticket]) -> None:
        try:
            out = self._predict(np.concatenate([ticket.x for ticket in group]))
        except RemoteError as exc:
            for ticket in group:
                ticket.settle(error=exc)
            return
        for ticket, rows in zip(group, np.split(out, np.cumsum([len(t.x) for t in group])[:-1]), strict=True):
            ticket.settle(result=rows)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        try:
            out = np.asarray(self.remote.predict(x))
        except RemoteError:
            raise
        except Exception as exc:  # a bug in a remote must not kill the dispatcher and strand every caller
            raise RemoteError(f"remote {self.name} failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        if out.shape[:1] != (len(x),):
            raise RemoteError(f"remote {self.name} answered {out.shape[:1]} rows for {len(x)} inputs")
        return out


class CircuitBreaker:
    """Fails fast while the wrapped remote is known to be down.

    After ``failures`` consecutive RemoteErrors (timeouts included) the circuit opens for
    ``cooldown_s``: calls raise at once. Then one trial call goes through (half-open) while the
    others still fail fast; its success closes the circuit, its failure opens it for another cooldown.
    """

    def __init__(self, remote: RemoteModel, failures: int = 5, cooldown_s: float = 10.0):
        if failures < 1 or cooldown_s < 0:
            raise ValueError("failures must be >= 1 and cooldown_s >= 0")
        self.remote, self.name = remote, remote.name
        self.failures, self.cooldown_s = failures, cooldown_s
        self._lock = threading.Lock()
        self._failed, self._opened_at, self._trial = 0, None, False
        self._last_error = ""

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (a trial call is running), for logs and tests."""
        with self._lock:
            return "closed" if self._opened_at is None else "half-open" if self._trial else "open"

    def predict(self, x: np.ndarray) -> np.ndarray:
        self._admit()
        try:
            out = self.remote.predict(x)
        except Exception as exc:  # anything else is a bug, but must not leave a trial call pending forever
            self._record_failure(exc)
            raise
        with self._lock:
            self._failed, self._opened_at, self._trial = 0, None, False
        return out

    def close(self, timeout_s: float | None = None) -> None:
        """Closes the wrapped remote if it is a ``BatchingRemote`` (its dispatcher thread), as ``resilient`` builds."""
        if isinstance(self.remote, BatchingRemote):
            self.remote.close(timeout_s)

    def _admit(self) -> None:
        with self._lock:
            if self._opened_at is None:
                return
            left = self.cooldown_s - (time.monotonic() - self._opened_at)
            if left <= 0 and not self._trial:
                self._trial = True  # this call is the trial
                return
            wait = f"retrying in {left:.1f} s" if left > 0 else "a trial call is running"
            message = f"circuit open: remote {self.name} failed {self._failed} times; {wait} (last: {self._last_error})"
        raise RemoteError(message)

    def _record_failure(self, exc: Exception) -> None:
        with self._lock:
            self._failed += 1
            self._last_error = str(exc)
            if self._trial or self._failed >= self.failures:
                self._opened_at, self._trial = time.monotonic(), False


def resilient(remote: RemoteModel, max_batch: int = 32, max_delay_ms: float = 2.0, deadline_ms: float | None = None,
              failures: int = 5, cooldown_s: float = 10.0) -> BatchingRemote | CircuitBreaker:
    """``remote`` behind batching (with the deadline) and a circuit breaker; close it with ``.close()``.

    The breaker goes outside, so that a timeout counts as a failure and an open circuit never queues a
    request. ``max_batch=1`` keeps the deadline without batching; ``failures=0`` leaves out the breaker.
    """
    inner = BatchingRemote(remote, max_batch, max_delay_ms, deadline_ms)
    return CircuitBreaker(inner, failures, cooldown_s) if failures > 0 else inner
