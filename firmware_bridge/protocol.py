"""Message bodies of the bisup wire protocol, version 2 (see PROTOCOL.md).

The body is transport-neutral: serial wraps it in COBS + CRC (``framing``), MQTT carries it as is.
``decode`` never raises anything but ``ProtocolError``, whose code and sequence number let the
receiver answer with an ERROR frame instead of dropping the frame silently.

Version 2 puts the device's boot id in every header: a device draws a new one at every boot, the
host echoes it, and every cache key includes it, so sequence numbers that restart at 1 after a
reboot can never be answered with another boot's answers.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from bisup.converters.errors import BisupError

VERSION = 2
LEGACY_VERSION = 1
MAX_BODY = 262_144  # the host's limit; a device states its own (a compile-time macro) in HELLO
HEADER = struct.Struct("<BBII")  # version, type, seq, boot: seq sits at offset 2 in every version
LEGACY_HEADER = struct.Struct("<BBI")
HASH_BYTES = 32
MAX_ID = 32
DTYPE_INT8 = 1
MAX_HOLD_MS = 60_000  # the longest a device honours BUSY's hold (its detail), whatever a host asks


class MsgType(IntEnum):
    HELLO = 0x01
    INFER = 0x10
    ANSWER = 0x11
    SPLIT = 0x12
    PING = 0x20
    PONG = 0x21
    STATS = 0x22
    FEED = 0x30
    REPORT = 0x31
    PROFILE = 0x32
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
    BUSY = 9  # the bridge's admission limits refused the request: answer locally for ``detail`` ms


class Source(IntEnum):
    LOCAL = 0
    REMOTE = 1
    FALLBACK = 2


class ProtocolError(BisupError, ValueError):
    """A body or frame that cannot be accepted; ``seq`` and ``boot`` are 0 when the header cannot be
    trusted. ``peer_version`` is the version the sender spoke, so the ERROR reply can be laid out in it."""

    def __init__(self, code: ErrorCode, message: str, seq: int = 0, detail: int = 0, boot: int = 0,
                 peer_version: int = VERSION):
        super().__init__(f"{code.name}: {message}")
        self.code, self.seq, self.detail, self.boot, self.peer_version = code, seq, detail, boot, peer_version


@dataclass(frozen=True)
class Hello:
    seq: int
    firmware: tuple[int, int, int]
    model_hash: bytes
    device_id: str
    max_body: int = MAX_BODY
    boot: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class Infer:
    seq: int
    local_label: int
    local_confidence: int
    data: bytes
    dtype: int = DTYPE_INT8
    boot: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class Split:
    """Split computing: an unsure multi-exit device relays the int8 activation at the cut after stage
    ``stage`` (1-based); the bridge's remote tail for that cut finishes the network. Answered by ANSWER."""

    seq: int
    stage: int
    local_label: int
    local_confidence: int
    data: bytes
    dtype: int = DTYPE_INT8
    boot: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class AnswerMsg:
    """``load``: the bridge's load level, 0 (idle, or a bridge that does not say) .. ``MAX_LOAD``: about that many
    requests waited ahead of this one (flag bits 1..3; a multi-exit device's scheduler reads it)."""

    seq: int
    label: int
    confidence: float
    source: Source
    rejected: bool = False
    load: int = 0
    boot: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class ErrorMsg:
    seq: int
    code: ErrorCode
    detail: int = 0
    boot: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class Ping:
    seq: int
    boot: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class Pong:
    seq: int
    boot: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class Stats:
    """What a device did since it booted, so the bridge sees the answers that never leave the device.
    Counters are cumulative, so a lost or repeated STATS costs nothing; the bridge does not answer it."""

    seq: int
    inferences: int
    local: int  # answered locally: the supervisor trusted the local answer (or an early exit did)
    relayed: int  # sent to the bridge as INFER or SPLIT
    out_of_range: int | None = None  # a scheduled multi-exit device: inputs decided off its calibrated link range
    boot: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class Feed:
    """HIL: the host hands the device test input number ``seq``."""

    seq: int
    data: bytes
    dtype: int = DTYPE_INT8
    boot: int = field(default=0, kw_only=True)


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
    infer_cycles: int = 0  # SysTick cycles of the local inference alone (on QEMU with -icount: instructions / 40)
    boot: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class Profile:
    """HIL: SysTick cycles of each layer of the inference of input ``seq`` (at most 255 layers)."""

    seq: int
    cycles: tuple[int, ...]
    boot: int = field(default=0, kw_only=True)


Message = Hello | Infer | Split | AnswerMsg | ErrorMsg | Ping | Pong | Stats | Feed | Report | Profile


def _q16(value: float) -> int:
    return max(0, min(65535, round(value * 65535)))


INFER_FIXED = struct.Struct("<HbBI")  # local label, local confidence, dtype, element count
FEED_FIXED = struct.Struct("<BI")  # dtype, element count
SPLIT_FIXED = struct.Struct("<BHbBI")  # stage, local label, local confidence, dtype, element count
ANSWER_FMT, ERROR_FMT, REPORT_FMT, MAX_BODY_FMT, STATS_FMT = "<HHBB", "<BI", "<HBBHbII", "<I", "<III"
STATS_SCHEDULED_FMT = "<IIII"  # STATS with the out-of-range counter
MAX_LOAD = 7


def bounded_id(device: str) -> str:
    """``device`` when it fits HELLO's 1..MAX_ID characters, else its first MAX_ID - 9, ``~`` and a digest.

    Ids the bridge does not read from HELLO (an MQTT topic level, a serial port's name) have no limit of their
    own, yet each becomes a key of the bridge's state and a metric label: a 60,000-character id cost 600 KB per
    scrape. The digest keeps apart two long ids that share their first characters."""
    if len(device) <= MAX_ID:
        return device
    digest = hashlib.blake2b(device.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{device[: MAX_ID - 9]}~{digest}"


def _payload(msg: Message) -> tuple[MsgType, bytes]:
    if isinstance(msg, Hello):
        ident = msg.device_id.encode("ascii")
        if not 1 <= len(ident) <= MAX_ID or len(msg.model_hash) != HASH_BYTES:
            raise ValueError(f"device id must be 1..{MAX_ID} ASCII bytes and the hash {HASH_BYTES} bytes")
        return MsgType.HELLO, (bytes(msg.firmware) + msg.model_hash + struct.pack(MAX_BODY_FMT, msg.max_body)
                               + bytes([len(ident)]) + ident)
    if isinstance(msg, Infer):
        fixed = INFER_FIXED.pack(msg.local_label, msg.local_confidence, msg.dtype, len(msg.data))
        return MsgType.INFER, fixed + msg.data
    if isinstance(msg, Split):
        fixed = SPLIT_FIXED.pack(msg.stage, msg.local_label, msg.local_confidence, msg.dtype, len(msg.data))
        return MsgType.SPLIT, fixed + msg.data
    if isinstance(msg, AnswerMsg):
        flags = int(msg.rejected) | min(max(msg.load, 0), MAX_LOAD) << 1
        return MsgType.ANSWER, struct.pack(ANSWER_FMT, msg.label, _q16(msg.confidence), msg.source, flags)
    if isinstance(msg, ErrorMsg):
        return MsgType.ERROR, struct.pack(ERROR_FMT, msg.code, msg.detail)
    if isinstance(msg, Stats):
        counts = (msg.inferences, msg.local, msg.relayed)
        if msg.out_of_range is None:
            return MsgType.STATS, struct.pack(STATS_FMT, *counts)
        return MsgType.STATS, struct.pack(STATS_SCHEDULED_FMT, *counts, msg.out_of_range)
    if isinstance(msg, Feed):
        return MsgType.FEED, FEED_FIXED.pack(msg.dtype, len(msg.data)) + msg.data
    if isinstance(msg, Report):
        return MsgType.REPORT, struct.pack(REPORT_FMT, msg.label, msg.source, int(msg.rejected), msg.local_label,
                                           msg.local_confidence, msg.latency_us, msg.infer_cycles)
    if isinstance(msg, Profile):
        if len(msg.cycles) > 255:
            raise ValueError(f"a PROFILE carries at most 255 layers, not {len(msg.cycles)}")
        return MsgType.PROFILE, bytes([len(msg.cycles)]) + struct.pack(f"<{len(msg.cycles)}I", *msg.cycles)
    return (MsgType.PING if isinstance(msg, Ping) else MsgType.PONG), b""


def encode(msg: Message, max_body: int = MAX_BODY) -> bytes:
    """The body of ``msg``; raises ValueError when it would exceed ``max_body`` (the receiver's limit)."""
    kind, payload = _payload(msg)
    body = HEADER.pack(VERSION, kind, msg.seq, msg.boot) + payload
    if len(body) > max_body:
        raise ValueError(f"message body of {len(body)} bytes exceeds the limit of {max_body}")
    return body


def encode_error(exc: ProtocolError) -> bytes:
    """The ERROR reply to a body that raised ``exc``, laid out in the version its sender speaks: a
    version-1 device can read a version-1 ERROR, so it ends its request with its own local answer."""
    if exc.peer_version == LEGACY_VERSION:
        return LEGACY_HEADER.pack(LEGACY_VERSION, MsgType.ERROR, exc.seq) + struct.pack("<BH", exc.code,
                                                                                       min(exc.detail, 0xFFFF))
    return encode(ErrorMsg(exc.seq, exc.code, exc.detail, boot=exc.boot))


def _fixed(payload: bytes, fmt: str, seq: int, kind: MsgType) -> tuple:
    size = struct.calcsize(fmt)
    if len(payload) != size:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"{kind.name} payload is {len(payload)} bytes, expected {size}", seq)
    return struct.unpack(fmt, payload)


def _hello(payload: bytes, seq: int, boot: int) -> Hello:
    fixed = 3 + HASH_BYTES + 4 + 1
    if len(payload) < fixed or len(payload) != fixed + payload[fixed - 1] or not 1 <= payload[fixed - 1] <= MAX_ID:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"HELLO payload of {len(payload)} bytes is malformed", seq)
    ident = payload[fixed:]
    if not ident.isascii():
        raise ProtocolError(ErrorCode.BAD_LENGTH, "HELLO device id is not ASCII", seq)
    (max_body,) = struct.unpack_from(MAX_BODY_FMT, payload, 3 + HASH_BYTES)
    return Hello(seq, tuple(payload[:3]), payload[3 : 3 + HASH_BYTES], ident.decode("ascii"), max_body, boot=boot)


def _tensor(payload: bytes, fixed: struct.Struct, seq: int, kind: MsgType) -> tuple:
    """The fixed fields of an INFER, SPLIT or FEED, checked against the element count it declares."""
    if len(payload) < fixed.size:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"{kind.name} payload of {len(payload)} bytes is truncated", seq)
    fields = fixed.unpack_from(payload)
    if len(payload) != fixed.size + fields[-1]:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"{kind.name} declares {fields[-1]} elements but carries "
                            f"{len(payload) - fixed.size}", seq)
    return fields


def _source(value: int, seq: int, kind: MsgType) -> Source:
    if value not in Source._value2member_map_:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"{kind.name} source {value} is not 0, 1 or 2", seq)
    return Source(value)


def _header(body: bytes) -> tuple[int, int, int]:
    """Version, type and seq of a body, or a ProtocolError that a reply can be built from."""
    if len(body) < LEGACY_HEADER.size:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"body of {len(body)} bytes is shorter than the header")
    version, kind, seq = LEGACY_HEADER.unpack_from(body)
    if version != VERSION:
        raise ProtocolError(ErrorCode.BAD_VERSION, f"protocol version {version}, this side speaks {VERSION}", seq,
                            VERSION, peer_version=version)
    if len(body) < HEADER.size:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"body of {len(body)} bytes is shorter than the header", seq)
    return version, kind, seq


def decode(body: bytes) -> Message:
    """Parse a body; raise ``ProtocolError`` with the code (and seq and boot, where readable) to answer with."""
    if len(body) > MAX_BODY:
        raise ProtocolError(ErrorCode.TOO_LONG, f"body of {len(body)} bytes exceeds {MAX_BODY}")
    _, kind, seq = _header(body)
    boot = HEADER.unpack_from(body)[3]
    try:
        return _message(kind, body[HEADER.size :], seq, boot)
    except ProtocolError as exc:
        exc.boot = boot
        raise


def _message(kind: int, payload: bytes, seq: int, boot: int) -> Message:
    if kind == MsgType.HELLO:
        return _hello(payload, seq, boot)
    if kind == MsgType.INFER:
        label, confidence, dtype, count = _tensor(payload, INFER_FIXED, seq, MsgType.INFER)
        return Infer(seq, label, confidence, payload[INFER_FIXED.size :], dtype, boot=boot)
    if kind == MsgType.SPLIT:
        stage, label, confidence, dtype, _ = _tensor(payload, SPLIT_FIXED, seq, MsgType.SPLIT)
        return Split(seq, stage, label, confidence, payload[SPLIT_FIXED.size :], dtype, boot=boot)
    if kind == MsgType.ANSWER:
        label, confidence, source, flags = _fixed(payload, ANSWER_FMT, seq, MsgType.ANSWER)
        return AnswerMsg(seq, label, confidence / 65535, _source(source, seq, MsgType.ANSWER), bool(flags & 1),
                         (flags >> 1) & MAX_LOAD, boot=boot)
    if kind == MsgType.ERROR:
        code, detail = _fixed(payload, ERROR_FMT, seq, MsgType.ERROR)
        if code not in ErrorCode._value2member_map_:
            raise ProtocolError(ErrorCode.BAD_LENGTH, f"ERROR code {code} is unknown", seq)
        return ErrorMsg(seq, ErrorCode(code), detail, boot=boot)
    if kind == MsgType.STATS:
        scheduled = len(payload) == struct.calcsize(STATS_SCHEDULED_FMT)
        return Stats(seq, *_fixed(payload, STATS_SCHEDULED_FMT if scheduled else STATS_FMT, seq, MsgType.STATS),
                     boot=boot)
    if kind == MsgType.FEED:
        dtype, _ = _tensor(payload, FEED_FIXED, seq, MsgType.FEED)
        return Feed(seq, payload[FEED_FIXED.size :], dtype, boot=boot)
    if kind == MsgType.REPORT:
        label, source, rejected, local_label, confidence, latency, cycles = _fixed(payload, REPORT_FMT, seq,
                                                                                   MsgType.REPORT)
        return Report(seq, label, _source(source, seq, MsgType.REPORT), bool(rejected & 1), local_label, confidence,
                      latency, cycles, boot=boot)
    if kind == MsgType.PROFILE:
        if not payload or len(payload) != 1 + 4 * payload[0]:
            raise ProtocolError(ErrorCode.BAD_LENGTH, f"PROFILE payload of {len(payload)} bytes is malformed", seq)
        return Profile(seq, struct.unpack(f"<{payload[0]}I", payload[1:]), boot=boot)
    if kind in (MsgType.PING, MsgType.PONG):
        _fixed(payload, "<", seq, MsgType(kind))
        return Ping(seq, boot=boot) if kind == MsgType.PING else Pong(seq, boot=boot)
    raise ProtocolError(ErrorCode.BAD_TYPE, f"unknown message type 0x{kind:02x}", seq, kind)


def describe(msg: Message) -> str:
    """A canonical one-line form, shared with the C test harness for the golden vectors."""
    head = f"{type(msg).__name__.upper().removesuffix('MSG')} seq={msg.seq} boot={msg.boot}"
    if isinstance(msg, Hello):
        fw = ".".join(map(str, msg.firmware))
        return f"{head} fw={fw} hash={msg.model_hash.hex()} max_body={msg.max_body} id={msg.device_id}"
    if isinstance(msg, Infer):
        return (f"{head} label={msg.local_label} conf={msg.local_confidence} dtype={msg.dtype} n={len(msg.data)} "
                f"data={msg.data.hex()}")
    if isinstance(msg, Split):
        return (f"{head} stage={msg.stage} label={msg.local_label} conf={msg.local_confidence} dtype={msg.dtype} "
                f"n={len(msg.data)} data={msg.data.hex()}")
    if isinstance(msg, AnswerMsg):
        return (f"{head} label={msg.label} conf={_q16(msg.confidence)} source={int(msg.source)} "
                f"rejected={int(msg.rejected)}" + (f" load={msg.load}" if msg.load else ""))
    if isinstance(msg, ErrorMsg):
        return f"{head} code={int(msg.code)} detail={msg.detail}"
    if isinstance(msg, Stats):
        extra = "" if msg.out_of_range is None else f" out_of_range={msg.out_of_range}"
        return f"{head} inferences={msg.inferences} local={msg.local} relayed={msg.relayed}{extra}"
    if isinstance(msg, Feed):
        return f"{head} dtype={msg.dtype} n={len(msg.data)} data={msg.data.hex()}"
    if isinstance(msg, Report):
        return (f"{head} label={msg.label} source={int(msg.source)} rejected={int(msg.rejected)} "
                f"local_label={msg.local_label} conf={msg.local_confidence} latency_us={msg.latency_us} "
                f"infer_cycles={msg.infer_cycles}")
    if isinstance(msg, Profile):
        return f"{head} n={len(msg.cycles)} cycles={','.join(map(str, msg.cycles))}"
    return head
