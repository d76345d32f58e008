"""Message bodies of the bisup wire protocol, version 1 (see PROTOCOL.md).

The body is transport-neutral: serial wraps it in COBS + CRC (``framing``), MQTT carries it as is.
``decode`` never raises anything but ``ProtocolError``, whose code and sequence number let the
receiver answer with an ERROR frame instead of dropping the frame silently.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

VERSION = 1
MAX_BODY = 1024
HEADER = struct.Struct("<BBI")
HASH_BYTES = 32
MAX_ID = 32
DTYPE_INT8 = 1


class MsgType(IntEnum):
    HELLO = 0x01
    INFER = 0x10
    ANSWER = 0x11
    PING = 0x20
    PONG = 0x21
    FEED = 0x30
    REPORT = 0x31
    ERROR = 0x7F


class ErrorCode(IntEnum):
    BAD_CRC = 1
    BAD_COBS = 2
    TOO_LONG = 3
    BAD_VERSION = 4
    BAD_TYPE = 5
    BAD_LENGTH = 6
    BAD_TENSOR = 7
    REMOTE_UNAVAILABLE = 8


class Source(IntEnum):
    LOCAL = 0
    REMOTE = 1
    FALLBACK = 2


class ProtocolError(ValueError):
    """A body or frame that cannot be accepted; ``seq`` is 0 when the header cannot be trusted."""

    def __init__(self, code: ErrorCode, message: str, seq: int = 0, detail: int = 0):
        super().__init__(f"{code.name}: {message}")
        self.code, self.seq, self.detail = code, seq, detail


@dataclass(frozen=True)
class Hello:
    seq: int
    firmware: tuple[int, int, int]
    model_hash: bytes
    device_id: str


@dataclass(frozen=True)
class Infer:
    seq: int
    local_label: int
    local_confidence: int
    data: bytes
    dtype: int = DTYPE_INT8


@dataclass(frozen=True)
class AnswerMsg:
    seq: int
    label: int
    confidence: float
    source: Source
    rejected: bool = False


@dataclass(frozen=True)
class ErrorMsg:
    seq: int
    code: ErrorCode
    detail: int = 0


@dataclass(frozen=True)
class Ping:
    seq: int


@dataclass(frozen=True)
class Pong:
    seq: int


@dataclass(frozen=True)
class Feed:
    """HIL: the host hands the device test input number ``seq``."""

    seq: int
    data: bytes
    dtype: int = DTYPE_INT8


@dataclass(frozen=True)
class Report:
    """HIL: what the device made of input ``seq``: its final answer, its own outputs, its latency."""

    seq: int
    label: int
    source: Source
    rejected: bool
    local_label: int
    local_confidence: int
    latency_us: int


Message = Hello | Infer | AnswerMsg | ErrorMsg | Ping | Pong | Feed | Report


def _q16(value: float) -> int:
    return max(0, min(65535, round(value * 65535)))


def _payload(msg: Message) -> tuple[MsgType, bytes]:
    if isinstance(msg, Hello):
        ident = msg.device_id.encode("ascii")
        if not 1 <= len(ident) <= MAX_ID or len(msg.model_hash) != HASH_BYTES:
            raise ValueError(f"device id must be 1..{MAX_ID} ASCII bytes and the hash {HASH_BYTES} bytes")
        return MsgType.HELLO, bytes(msg.firmware) + msg.model_hash + bytes([len(ident)]) + ident
    if isinstance(msg, Infer):
        return MsgType.INFER, struct.pack("<HbBH", msg.local_label, msg.local_confidence, msg.dtype,
                                          len(msg.data)) + msg.data
    if isinstance(msg, AnswerMsg):
        return MsgType.ANSWER, struct.pack("<HHBB", msg.label, _q16(msg.confidence), msg.source, int(msg.rejected))
    if isinstance(msg, ErrorMsg):
        return MsgType.ERROR, struct.pack("<BH", msg.code, msg.detail)
    if isinstance(msg, Feed):
        return MsgType.FEED, struct.pack("<BH", msg.dtype, len(msg.data)) + msg.data
    if isinstance(msg, Report):
        return MsgType.REPORT, struct.pack("<HBBHbI", msg.label, msg.source, int(msg.rejected), msg.local_label,
                                           msg.local_confidence, msg.latency_us)
    return (MsgType.PING if isinstance(msg, Ping) else MsgType.PONG), b""


def encode(msg: Message) -> bytes:
    """The body of ``msg``; raises ValueError when it would exceed ``MAX_BODY``."""
    kind, payload = _payload(msg)
    body = HEADER.pack(VERSION, kind, msg.seq) + payload
    if len(body) > MAX_BODY:
        raise ValueError(f"message body of {len(body)} bytes exceeds the protocol maximum of {MAX_BODY}")
    return body


def _fixed(payload: bytes, fmt: str, seq: int, kind: MsgType) -> tuple:
    size = struct.calcsize(fmt)
    if len(payload) != size:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"{kind.name} payload is {len(payload)} bytes, expected {size}", seq)
    return struct.unpack(fmt, payload)


def _hello(payload: bytes, seq: int) -> Hello:
    fixed = 3 + HASH_BYTES + 1
    if len(payload) < fixed or len(payload) != fixed + payload[fixed - 1] or not 1 <= payload[fixed - 1] <= MAX_ID:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"HELLO payload of {len(payload)} bytes is malformed", seq)
    ident = payload[fixed:]
    if not ident.isascii():
        raise ProtocolError(ErrorCode.BAD_LENGTH, "HELLO device id is not ASCII", seq)
    return Hello(seq, tuple(payload[:3]), payload[3 : 3 + HASH_BYTES], ident.decode("ascii"))


def _infer(payload: bytes, seq: int) -> Infer:
    if len(payload) < 6:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"INFER payload of {len(payload)} bytes is truncated", seq)
    label, confidence, dtype, count = struct.unpack_from("<HbBH", payload)
    if len(payload) != 6 + count:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"INFER declares {count} elements but carries {len(payload) - 6}",
                            seq)
    return Infer(seq, label, confidence, payload[6:], dtype)


def decode(body: bytes) -> Message:
    """Parse a body; raise ``ProtocolError`` with the code to answer with."""
    if len(body) < HEADER.size:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"body of {len(body)} bytes is shorter than the header")
    if len(body) > MAX_BODY:
        raise ProtocolError(ErrorCode.TOO_LONG, f"body of {len(body)} bytes exceeds {MAX_BODY}")
    version, kind, seq = HEADER.unpack_from(body)
    payload = body[HEADER.size :]
    if version != VERSION:
        raise ProtocolError(ErrorCode.BAD_VERSION, f"protocol version {version}, this side speaks {VERSION}", seq,
                            VERSION)
    if kind == MsgType.HELLO:
        return _hello(payload, seq)
    if kind == MsgType.INFER:
        return _infer(payload, seq)
    if kind == MsgType.ANSWER:
        label, confidence, source, flags = _fixed(payload, "<HHBB", seq, MsgType.ANSWER)
        if source not in Source._value2member_map_:
            raise ProtocolError(ErrorCode.BAD_LENGTH, f"ANSWER source {source} is not 0, 1 or 2", seq)
        return AnswerMsg(seq, label, confidence / 65535, Source(source), bool(flags & 1))
    if kind == MsgType.ERROR:
        code, detail = _fixed(payload, "<BH", seq, MsgType.ERROR)
        if code not in ErrorCode._value2member_map_:
            raise ProtocolError(ErrorCode.BAD_LENGTH, f"ERROR code {code} is unknown", seq)
        return ErrorMsg(seq, ErrorCode(code), detail)
    if kind == MsgType.FEED:
        if len(payload) < 3 or len(payload) != 3 + struct.unpack_from("<H", payload, 1)[0]:
            raise ProtocolError(ErrorCode.BAD_LENGTH, f"FEED payload of {len(payload)} bytes is malformed", seq)
        return Feed(seq, payload[3:], payload[0])
    if kind == MsgType.REPORT:
        label, source, rejected, local_label, confidence, latency = _fixed(payload, "<HBBHbI", seq, MsgType.REPORT)
        if source not in Source._value2member_map_:
            raise ProtocolError(ErrorCode.BAD_LENGTH, f"REPORT source {source} is not 0, 1 or 2", seq)
        return Report(seq, label, Source(source), bool(rejected & 1), local_label, confidence, latency)
    if kind in (MsgType.PING, MsgType.PONG):
        _fixed(payload, "<", seq, MsgType(kind))
        return Ping(seq) if kind == MsgType.PING else Pong(seq)
    raise ProtocolError(ErrorCode.BAD_TYPE, f"unknown message type 0x{kind:02x}", seq, kind)


def describe(msg: Message) -> str:
    """A canonical one-line form, shared with the C test harness for the golden vectors."""
    if isinstance(msg, Hello):
        fw = ".".join(map(str, msg.firmware))
        return f"HELLO seq={msg.seq} fw={fw} hash={msg.model_hash.hex()} id={msg.device_id}"
    if isinstance(msg, Infer):
        return (f"INFER seq={msg.seq} label={msg.local_label} conf={msg.local_confidence} dtype={msg.dtype} "
                f"n={len(msg.data)} data={msg.data.hex()}")
    if isinstance(msg, AnswerMsg):
        return (f"ANSWER seq={msg.seq} label={msg.label} conf={_q16(msg.confidence)} source={int(msg.source)} "
                f"rejected={int(msg.rejected)}")
    if isinstance(msg, ErrorMsg):
        return f"ERROR seq={msg.seq} code={int(msg.code)} detail={msg.detail}"
    if isinstance(msg, Feed):
        return f"FEED seq={msg.seq} dtype={msg.dtype} n={len(msg.data)} data={msg.data.hex()}"
    if isinstance(msg, Report):
        return (f"REPORT seq={msg.seq} label={msg.label} source={int(msg.source)} rejected={int(msg.rejected)} "
                f"local_label={msg.local_label} conf={msg.local_confidence} latency_us={msg.latency_us}")
    return f"{type(msg).__name__.upper()} seq={msg.seq}"
