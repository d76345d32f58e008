"""What the bridge tells its observers (metrics, the drift alarm), with nothing to do by default.

The request handler calls these from its worker threads, once per event, so an observer needs
its own locking. Keeping them here, apart from both the handler and Prometheus, lets the handler
run without any observer and lets observers be tested without a transport.
"""

from __future__ import annotations

import threading

from bisup.firmware_bridge.relay import Answer, InferRequest


class Events:
    """Override what you need; every method may be called concurrently."""

    def request(self, device: str, kind: str) -> None:
        """An INFER or SPLIT arrived (``kind``: "infer" or "split")."""

    def answered(self, device: str, seconds: float) -> None:
        """Its reply is ready, ``seconds`` after it arrived (cache hits and errors included)."""

    def outcome(self, device: str, decision: str, remote_seconds: float | None = None) -> None:
        """How a request was answered: remote, fallback-rejected, remote_unavailable or duplicate (from the
        retry cache, no remote call); ``remote_seconds``: how long the remote took, when it was called."""

    def relayed(self, device: str, request: InferRequest, answer: Answer) -> None:
        """A relayed input the remote answered, accepted or rejected (``answer.rejected``): the device's
        request (its input, label and confidence) and the remote's label and probabilities."""

    def error(self, device: str, code: str) -> None:
        """A request refused with an ERROR reply (``code``: the ErrorCode name)."""

    def device_stats(self, device: str, boot: int, inferences: int, local: int, relayed: int) -> None:
        """A device's STATS: its counts since boot ``boot``."""


class SinceLast:
    """Turns the cumulative counts of STATS into what is new since the last one, per device and boot id:
    a repeated, late or reordered STATS yields nothing, a reboot starts from zero."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], tuple[int, ...]] = {}
        self._lock = threading.Lock()

    def new(self, device: str, boot: int, inferences: int, *counts: int) -> tuple[int, ...] | None:
        """``(inferences, *counts)`` since the last STATS of this boot (counts never below 0), or None."""
        with self._lock:
            before = self._last.get((device, boot), (0,) * (1 + len(counts)))
            if inferences <= before[0]:
                return None
            self._last[(device, boot)] = (inferences, *counts)
        return (inferences - before[0], *(max(now - then, 0) for now, then in zip(counts, before[1:], strict=True)))


def _to_all(name: str):
    def call(self: Fanout, *args: object) -> None:
        for observer in self.observers:
            getattr(observer, name)(*args)
    call.__doc__ = f"``{name}`` on every observer."
    return call


class Fanout(Events):
    """Several observers as one."""

    def __init__(self, *observers: Events):
        self.observers = observers

    request = _to_all("request")
    answered = _to_all("answered")
    outcome = _to_all("outcome")
    relayed = _to_all("relayed")
    error = _to_all("error")
    device_stats = _to_all("device_stats")
