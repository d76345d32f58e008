"""A device without a board: the exported model in the TFLM interpreter, the int8 threshold, and
the wire protocol over a link (a serial-like port, or MQTT through ``mqtt_link.DeviceLink``). It
behaves as the C library's state machine does: one request at a time, resent with the same
sequence number on timeout, local fallback at the end, and after a BUSY no relay until its hold has
passed (the inputs are answered locally meanwhile). Each instance is one boot: it draws a fresh
random boot id, stamps it on every message and ignores replies addressed to another boot.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from bisup.converters.artefacts import trusted
from bisup.converters.errors import BisupError
from bisup.firmware_bridge import framing
from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.device_model import LocalModel
from bisup.firmware_bridge.relay import Answer

if TYPE_CHECKING:
    import serial

    from bisup.firmware_bridge.ptylink import PtyPort


class DeviceTimeout(BisupError, RuntimeError):
    """The bridge did not answer a HELLO in time."""


@dataclass
class DeviceStats:
    """What ``bisup device --json`` prints."""

    requests: int = 0
    answered: int = 0
    remote: int = 0
    fallback: int = 0
    rejected: int = 0
    resends: int = 0
    bad_frames: int = 0
    busy: int = 0  # BUSY answers: the bridge's admission limits refused the request
    held: int = 0  # unsure inputs answered locally, unsent, while a BUSY's hold lasted


@dataclass(frozen=True)
class Exchange:
    """What one relay showed of the link: the answered attempt's seconds (None: no attempt was answered), the
    attempts that timed out before, and the bridge's load hint. A multi-exit device's scheduler learns from it."""

    seconds: float | None
    lost: int
    load: int = 0


class Link(Protocol):
    """Carries whole protocol bodies between a device and the bridge."""

    def send(self, body: bytes) -> None: ...

    def receive(self, timeout_s: float) -> list[bytes | p.ProtocolError]: ...


class SerialLink:
    """A serial-like port (pyserial object or pty) with COBS + CRC framing."""

    def __init__(self, port: serial.SerialBase | PtyPort):
        self.port, self.reader = port, framing.FrameReader()

    def send(self, body: bytes) -> None:
        self.port.write(framing.encode_frame(body))

    def receive(self, timeout_s: float) -> list[bytes | p.ProtocolError]:
        return self.reader.feed(self.port.read(4096))  # the port's own read timeout bounds the wait

    def close(self) -> None:
        self.port.close()


STATS_EVERY = 32  # inferences between STATS messages, as the C app's BISUP_APP_STATS_EVERY


class VirtualDevice:
    def __init__(self, link: Link, local: LocalModel, threshold_int8: int, device_id: str = "virtual-0",
                 timeout_s: float = 0.5, retries: int = 3, stats_every: int = STATS_EVERY):
        self.link, self.local, self.threshold_int8 = link, local, threshold_int8
        self.device_id, self.timeout_s, self.retries = device_id, timeout_s, retries
        self.stats = DeviceStats()
        self.boot = secrets.randbits(32)  # a new identity per boot, as firmware draws from its RNG
        self._seq = 0
        self.stats_every, self.inferences, self.local_answers, self.relayed = stats_every, 0, 0, 0
        self.hold_until = 0.0  # time.monotonic() before which a BUSY asked for no relay
        self.last_exchange: Exchange | None = None  # the last relay's timing (None: it was held or refused)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _send(self, msg: p.Message) -> None:
        self.link.send(p.encode(msg))

    def _await(self, seq: int, kinds: tuple[type, ...], deadline: float) -> p.Message | None:
        while (left := deadline - time.monotonic()) > 0:
            for item in self.link.receive(left):
                if isinstance(item, p.ProtocolError):
                    self.stats.bad_frames += 1
                    continue
                try:
                    msg = p.decode(item)
                except p.ProtocolError:
                    self.stats.bad_frames += 1
                    continue
                if msg.seq == seq and msg.boot == self.boot and isinstance(msg, kinds):
                    return msg
        return None

    def hello(self, timeout_s: float = 10.0, interval_s: float = 0.25) -> p.Hello:
        """Greet the bridge with the model hash until it answers, as a booting board does (a bridge
        that opens its port later discards what was sent before); return its HELLO."""
        seq = self._next_seq()
        hello = p.Hello(seq, (0, 2, 0), self.local.model_hash, self.device_id, boot=self.boot)
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            self._send(hello)
            reply = self._await(seq, (p.Hello,), min(give_up, time.monotonic() + interval_s))
            if reply is not None:
                return reply
        raise DeviceTimeout(f"no HELLO from the bridge within {timeout_s:g} s; is `bisup bridge` serving that link?")

    def count_inference(self, relayed: bool) -> None:
        """One more inference; every ``stats_every``, STATS tells the bridge (which cannot see local answers)."""
        self.inferences += 1
        self.relayed += relayed
        self.local_answers += not relayed
        if self.stats_every and self.inferences % self.stats_every == 0:
            self.send_stats()

    def send_stats(self) -> None:
        """STATS with the counts since boot; not answered (cumulative counts make a lost one harmless)."""
        self._send(p.Stats(self._next_seq(), self.inferences, self.local_answers, self.relayed, boot=self.boot))

    def ask(self, x_int8: np.ndarray, label: int, confidence: int, stage: int = 0) -> Answer:
        """Relay one unsure input (with ``stage``, the activation at that stage's cut, as SPLIT): resend with
        the same seq on timeout, fall back after the retries; while a BUSY's hold lasts, answer locally unsent."""
        self.last_exchange = None
        if time.monotonic() < self.hold_until:
            self.count_inference(relayed=False)  # the bridge never sees it: local in STATS, as the C app counts it
            self.stats.held += 1
            return Answer(0, label, 0.0, p.Source.FALLBACK)
        self.count_inference(relayed=True)
        seq = self._next_seq()
        data = x_int8.astype(np.int8).tobytes()
        request = (p.Split(seq, stage, label, confidence, data, boot=self.boot) if stage
                   else p.Infer(seq, label, confidence, data, boot=self.boot))
        self.stats.requests += 1
        for attempt in range(self.retries + 1):
            self.stats.resends += attempt > 0
            self._send(request)
            sent = time.monotonic()
            reply = self._await(seq, (p.AnswerMsg, p.ErrorMsg), sent + self.timeout_s)
            if isinstance(reply, p.AnswerMsg):
                self.last_exchange = Exchange(time.monotonic() - sent, attempt, reply.load)
                self.stats.answered += 1
                self.stats.remote += reply.source is p.Source.REMOTE
                self.stats.rejected += reply.rejected
                self.stats.fallback += reply.source is not p.Source.REMOTE
                return Answer(seq, reply.label, reply.confidence, reply.source, reply.rejected)
            if isinstance(reply, p.ErrorMsg):
                self._busy(reply)
                break
        else:
            self.last_exchange = Exchange(None, self.retries + 1)
        self.stats.fallback += 1
        return Answer(seq, label, 0.0, p.Source.FALLBACK)

    def _busy(self, error: p.ErrorMsg) -> None:
        """A BUSY starts its hold (at most ``protocol.MAX_HOLD_MS``); any ERROR ends the request locally."""
        if error.code is p.ErrorCode.BUSY:
            self.stats.busy += 1
            self.hold_until = time.monotonic() + min(error.detail, p.MAX_HOLD_MS) / 1000

    def run(self, x: np.ndarray) -> list[Answer]:
        """Every input as deployed: int8 inference and decision here, unsure ones over the link."""
        x_q, labels, confidence = self.local.run(x)
        answers = []
        for sample, label, conf in zip(x_q, labels, confidence, strict=True):
            if trusted(conf, self.threshold_int8):
                self.count_inference(relayed=False)
                answers.append(Answer(0, int(label), self.local.threshold_float(int(conf)), p.Source.LOCAL))
            else:
                answers.append(self.ask(sample, int(label), int(conf)))
        self.send_stats()
        return answers
