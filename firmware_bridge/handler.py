"""The bridge's per-request logic, independent of the transport (serial now, MQTT next).

Every body gets an outcome: an answer, a cached answer for a retried sequence number, an ERROR
frame naming what was wrong, or (for frames the device should never send) a counted, logged drop.
Each relay is logged as a JSON line; that log is also the labelled set of hard inputs.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import TextIO

import numpy as np

from firmware_bridge import protocol as p
from firmware_bridge.bundle import Bundle
from firmware_bridge.relay import InferRequest, Relay
from firmware_bridge.remotes import RemoteError

FIRMWARE = (0, 1, 0)


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
                 bridge_id: str = "bisup-bridge"):
        self.relay, self.bundle, self.log = relay, bundle, log or RelayLog(None)
        self.bridge_id = bridge_id
        self.counts: Counter[str] = Counter()
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def error(self, exc: p.ProtocolError, device: str) -> bytes:
        """The ERROR reply for a frame or body that could not be accepted (counted and logged)."""
        self.counts[f"error_{exc.code.name.lower()}"] += 1
        self.log.write({"time": time.time(), "device": device, "seq": exc.seq, "error": exc.code.name,
                        "detail": str(exc)})
        return p.encode(p.ErrorMsg(exc.seq, exc.code, exc.detail))

    def handle(self, device: str, body: bytes) -> bytes | None:
        try:
            msg = p.decode(body)
        except p.ProtocolError as exc:
            return self.error(exc, device)
        if isinstance(msg, p.Hello):
            self.counts["hello"] += 1
            return p.encode(p.Hello(msg.seq, FIRMWARE, self.bundle.model_hash, self.bridge_id))
        if isinstance(msg, p.Ping):
            self.counts["ping"] += 1
            return p.encode(p.Pong(msg.seq))
        if isinstance(msg, p.Infer):
            return self._infer(device, msg)
        self.counts[f"ignored_{type(msg).__name__.lower()}"] += 1  # devices do not send these
        return None

    def _infer(self, device: str, msg: p.Infer) -> bytes:
        expected = self.bundle.input_elements
        if msg.dtype != p.DTYPE_INT8 or len(msg.data) != expected:
            return self.error(p.ProtocolError(p.ErrorCode.BAD_TENSOR, f"dtype {msg.dtype} with {len(msg.data)} "
                                              f"elements; the bundle takes int8 x {expected}", msg.seq, expected),
                              device)
        key = (device, msg.seq)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            self.counts["duplicate"] += 1
            return cached
        reply = self._relay(device, msg)
        with self._lock:
            self._cache[key] = reply
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return reply

    def _relay(self, device: str, msg: p.Infer) -> bytes:
        start = time.perf_counter()
        request = InferRequest(device, msg.seq, np.frombuffer(msg.data, dtype=np.int8), msg.local_label,
                               msg.local_confidence)
        entry = {"time": time.time(), "device": device, "seq": msg.seq, "local_label": msg.local_label,
                 "local_confidence": msg.local_confidence}
        try:
            answer = self.relay.handle(request)
        except RemoteError as exc:
            self.counts["remote_unavailable"] += 1
            self.log.write(entry | {"decision": "fallback-remote-unavailable", "error": str(exc)})
            return p.encode(p.AnswerMsg(msg.seq, msg.local_label, 0.0, p.Source.FALLBACK))
        decision = "remote" if answer.source is p.Source.REMOTE else "fallback-rejected"
        self.counts[decision] += 1
        self.log.write(entry | {"remote_label": answer.remote_label, "remote_confidence": answer.confidence,
                                "decision": decision, "latency_ms": 1000 * (time.perf_counter() - start)})
        return p.encode(p.AnswerMsg(msg.seq, answer.label, answer.confidence, answer.source, answer.rejected))
