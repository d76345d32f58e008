"""What the bridge tells its observers (metrics, the drift alarm), with nothing to do by default.

The request handler calls these from its worker threads, once per event, so an observer needs
its own locking. Keeping them here, apart from both the handler and Prometheus, lets the handler
run without any observer and lets observers be tested without a transport.
"""

from __future__ import annotations

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

    def busy(self, device: str, reason: str, answered: bool) -> None:
        """A request refused by the admission limits (``reason``: rate, queue or full); ``answered``: with a BUSY
        reply, else acked unanswered (the device was over its BUSY budget)."""

    def device_stats(self, device: str, boot: int, inferences: int, local: int, relayed: int,
                     off_grid: int = 0) -> None:
        """A device's STATS: its counts since boot ``boot`` (``off_grid``: inputs a scheduled multi-exit device
        decided off its calibrated link grid, with its safe entry). Behind a ``RequestHandler`` only STATS its
        ``StatsLedger`` accepts arrive here; an observer that counts keeps a ledger of its own to tell what is new."""

    def implausible_stats(self, device: str, reason: str) -> None:
        """A STATS refused as impossible (``reason``: a key of ``stats_ledger.REASONS``); nothing used it."""

    def relays_short(self, device: str, claimed: int, received: int) -> None:
        """A STATS claims fewer relays since boot (``claimed``) than the bridge received from that boot."""


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
    busy = _to_all("busy")
    device_stats = _to_all("device_stats")
    implausible_stats = _to_all("implausible_stats")
    relays_short = _to_all("relays_short")
