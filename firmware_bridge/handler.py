"""The bridge's per-request logic, independent of the transport (serial or MQTT).

Every body gets an outcome: an answer, a cached answer for a retried request, an ERROR frame
naming what was wrong, or (for frames the device should never send) a counted, logged drop.

A retry is the same device, the same boot id, the same sequence number *and* the same payload
(its digest is part of the key), within a TTL. Sequence numbers restart after a reboot, but the
boot id does not repeat, so a rebooted device never gets another input's answer from the cache.
Each relay is logged as a JSON line; that log is also the labelled set of hard inputs.

STATS go to the observers only once a ``StatsLedger`` finds them possible; one that is not is dropped,
counted, and its device named once in the text log (``warn``), not once per message, which a device
stuck in a loop would turn into a flood. The ledger also counts the requests each boot relayed, so a
device whose STATS understate them is named too. Device ids longer than HELLO allows are cut here
(``protocol.bounded_id``), whatever the transport let through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import numpy as np

from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.admission import Notices
from bisup.firmware_bridge.bundle import Bundle
from bisup.firmware_bridge.events import Events
from bisup.firmware_bridge.relay import InferRequest, Relay
from bisup.firmware_bridge.remotes import RemoteError
from bisup.firmware_bridge.stats_ledger import REASONS, StatsLedger, Verdict

FIRMWARE = (0, 2, 0)
CacheKey = tuple[str, int, int, bytes]  # device, boot id, seq, payload digest


class RelayLog:
    """Appends one JSON object per relayed request (thread-safe)."""

    def __init__(self, path: str | Path | None):
        self._lock = threading.Lock()
        self._file: TextIO | None = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def write(self, entry: dict) -> None:
        if self._file:
            with self._lock:
                self._file.write(json.dumps(entry) + "\n")

    def close(self) -> None:
        if self._file:
            self._file.close()


class RequestHandler:
    """Turns a request body from a device into the reply body (or None when nothing is owed)."""

    def __init__(self, relay: Relay, bundle: Bundle, log: RelayLog | None = None, cache_size: int = 4096,
                 bridge_id: str = "bisup-bridge", cache_ttl_s: float = 600.0, events: Events | None = None,
                 warn: Callable[[str], None] | None = None):
        self.relay, self.bundle, self.log = relay, bundle, log or RelayLog(None)
        self.events = events or Events()  # what monitoring sees (metrics, the drift alarm)
        self.warn = warn or logging.getLogger("bisup.bridge").warning  # names devices whose STATS are wrong, once
        self.ledger = StatsLedger()
        self.notices = Notices(self.warn)  # devices over the admission limits, named once per interval
        self.bridge_id = bridge_id
        self.counts: Counter[str] = Counter()
        self._cache: OrderedDict[CacheKey, tuple[float, bytes]] = OrderedDict()
        self._cache_size, self._cache_ttl_s = cache_size, cache_ttl_s
        self._inflight: dict[CacheKey, threading.Event] = {}
        self._lock, self._count_lock = threading.Lock(), threading.Lock()
        self.waiting: list[Callable[[], int]] = []  # admission queues (MQTT workers) whose requests wait

    def load_level(self) -> int:
        """ANSWER's load hint: the requests at the remote beside this one plus those waiting in the admission
        queues, capped at ``protocol.MAX_LOAD``; a scheduled multi-exit device expects its relays to take longer."""
        beside = len(self._inflight) - 1 + sum(queued() for queued in self.waiting)
        return min(max(beside, 0), p.MAX_LOAD)

    def count(self, name: str) -> None:
        with self._count_lock:  # worker threads of the MQTT bridge count concurrently
            self.counts[name] += 1

    def error(self, exc: p.ProtocolError, device: str) -> bytes:
        """The ERROR reply for a frame or body that could not be accepted (counted and logged)."""
        device = p.bounded_id(device)
        self.count(f"error_{exc.code.name.lower()}")
        self.events.error(device, exc.code.name)
        self.log.write({"time": time.time(), "device": device, "boot": exc.boot, "seq": exc.seq,
                        "error": exc.code.name, "detail": str(exc)})
        return p.encode_error(exc)

    def busy(self, device: str, body: bytes, reason: str, hold_ms: int, answer: bool) -> bytes | None:
        """The BUSY reply to a request the admission limits refused (``reason``; see ``admission``), or None when
        it goes unanswered: over the device's BUSY budget, or a header this side cannot answer in. Counted and
        observed per request, named in the log once per device per interval; not in the JSON log, which a
        flood would fill."""
        device = p.bounded_id(device)
        self.count(f"busy_{reason}")
        self.events.busy(device, reason, answer)
        self.notices.note(device, reason)
        if not answer or len(body) < p.HEADER.size or body[0] != p.VERSION:
            return None
        _, _, seq, boot = p.HEADER.unpack_from(body)
        return p.encode(p.ErrorMsg(seq, p.ErrorCode.BUSY, hold_ms, boot=boot))

    def handle(self, device: str, body: bytes) -> bytes | None:
        device = p.bounded_id(device)
        try:
            msg = p.decode(body)
        except p.ProtocolError as exc:
            return self.error(exc, device)
        if isinstance(msg, p.Hello):
            self.count("hello")
            return p.encode(p.Hello(msg.seq, FIRMWARE, self.bundle.model_hash, self.bridge_id, boot=msg.boot))
        if isinstance(msg, p.Ping):
            self.count("ping")
            return p.encode(p.Pong(msg.seq, boot=msg.boot))
        if isinstance(msg, p.Stats):
            self.count("stats")
            self._stats(device, msg)
            return None  # cumulative counts: nothing to acknowledge
        if isinstance(msg, p.Infer | p.Split):
            start = time.perf_counter()
            self.events.request(device, type(msg).__name__.lower())
            reply = self._infer(device, msg, hashlib.blake2b(body[p.HEADER.size :], digest_size=16).digest())
            self.events.answered(device, time.perf_counter() - start)
            return reply
        self.count(f"ignored_{type(msg).__name__.lower()}")  # devices do not send these
        return None

    def _stats(self, device: str, msg: p.Stats) -> None:
        """Passes a possible STATS on; drops, counts and names (once per device) an impossible one."""
        off_grid = msg.out_of_range or 0
        verdict = self.ledger.check(device, msg.boot, msg.inferences, msg.local, msg.relayed, off_grid)
        if verdict.refused:
            self._refused(device, msg, verdict)
            return
        if verdict.short:
            self._short(device, msg, verdict)
        self.events.device_stats(device, msg.boot, msg.inferences, msg.local, msg.relayed, off_grid)

    def _refused(self, device: str, msg: p.Stats, verdict: Verdict) -> None:
        self.count("stats_implausible")
        self.events.implausible_stats(device, verdict.refused)
        if verdict.first:
            self.warn(f"device {device}: dropped a STATS with {REASONS[verdict.refused]} (inferences "
                      f"{msg.inferences}, local {msg.local}, relayed {msg.relayed}, boot {msg.boot:#x}); its "
                      "impossible STATS are dropped and counted (bisup_implausible_stats_total), not logged again")

    def _short(self, device: str, msg: p.Stats, verdict: Verdict) -> None:
        claimed, received = verdict.short
        self.count("stats_relays_short")
        self.events.relays_short(device, claimed, received)
        if verdict.first:
            self.warn(f"device {device}: its STATS claim {claimed} relays since boot {msg.boot:#x}, but the bridge "
                      f"received {received} from that boot: its firmware undercounts (or hides) relays. Such STATS "
                      "are counted (bisup_stats_relays_short_total), not logged again")

    def _expected(self, msg: p.Infer | p.Split) -> tuple[int, str]:
        """The element count a request must carry, and what takes it (0 for a stage with no remote tail)."""
        if isinstance(msg, p.Infer):
            return self.bundle.input_elements, "the bundle takes"
        tail = self.relay.tails.get(msg.stage)
        if tail is None:
            return 0, f"this bridge has no remote tail for stage {msg.stage} (tails: {sorted(self.relay.tails)});"
        return tail.elements, f"stage {msg.stage}'s tail takes"

    def _infer(self, device: str, msg: p.Infer | p.Split, digest: bytes) -> bytes:
        expected, what = self._expected(msg)
        if msg.dtype != p.DTYPE_INT8 or len(msg.data) != expected or not expected:
            return self.error(p.ProtocolError(p.ErrorCode.BAD_TENSOR, f"dtype {msg.dtype} with {len(msg.data)} "
                                              f"elements; {what} int8 x {expected}", msg.seq, expected,
                                              msg.boot), device)
        key = (device, msg.boot, msg.seq, digest)
        while True:
            with self._lock:
                cached, running = self._cached(key), self._inflight.get(key)
                if cached is None and running is None:
                    self._inflight[key] = threading.Event()
                    break
            if cached is not None:
                self.count("duplicate")
                self.events.outcome(device, "duplicate")
                return cached
            running.wait()  # a resend while the first copy is with the remote: answer both from one call
        self.ledger.relay(device, msg.boot)  # a first copy: what the device's STATS must count at least
        try:
            reply = self._relay(device, msg)
            with self._lock:
                self._cache[key] = (time.monotonic(), reply)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        finally:
            with self._lock:
                self._inflight.pop(key).set()
        return reply

    def _cached(self, key: CacheKey) -> bytes | None:
        """The stored answer for a retried request, while it is younger than the TTL (lock held)."""
        entry = self._cache.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry[0] > self._cache_ttl_s:
            del self._cache[key]  # a wrapped-around seq long after: a new request, not a retry
            return None
        return entry[1]

    def _relay(self, device: str, msg: p.Infer | p.Split) -> bytes:
        start = time.perf_counter()
        stage = msg.stage if isinstance(msg, p.Split) else 0
        request = InferRequest(device, msg.seq, np.frombuffer(msg.data, dtype=np.int8), msg.local_label,
                               msg.local_confidence, stage)
        entry = {"time": time.time(), "device": device, "boot": msg.boot, "seq": msg.seq, "stage": stage,
                 "local_label": msg.local_label, "local_confidence": msg.local_confidence}
        try:
            answer = self.relay.handle(request)
        except RemoteError as exc:
            self.count("remote_unavailable")
            self.events.outcome(device, "remote_unavailable", time.perf_counter() - start)
            self.log.write(entry | {"decision": "fallback-remote-unavailable", "error": str(exc)})
            return p.encode(p.AnswerMsg(msg.seq, msg.local_label, 0.0, p.Source.FALLBACK, boot=msg.boot))
        decision = "remote" if answer.source is p.Source.REMOTE else "fallback-rejected"
        self.count(decision)
        self.events.outcome(device, decision, time.perf_counter() - start)
        self.events.relayed(device, request, answer)
        self.log.write(entry | {"remote_label": answer.remote_label, "remote_confidence": answer.confidence,
                                "decision": decision, "latency_ms": 1000 * (time.perf_counter() - start)})
        return p.encode(p.AnswerMsg(msg.seq, answer.label, answer.confidence, answer.source, answer.rejected,
                                    self.load_level(), boot=msg.boot))
