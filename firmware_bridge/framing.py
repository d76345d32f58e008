"""Serial framing: ``COBS(body || crc16_le(body)) 0x00`` with a length limit and resync.

COBS comes from the ``cobs`` package and the CRC is CRC-16/XMODEM from ``binascii.crc_hqx``,
the maintained implementations, so only the framing rules live here. ``FrameReader`` turns an
unreliable byte stream into bodies and counted errors: noise costs at most the frame it hits.
"""

from __future__ import annotations

import binascii
from collections import Counter

from cobs import cobs

from bisup.firmware_bridge.protocol import MAX_BODY, ErrorCode, ProtocolError

DELIMITER = b"\x00"
CRC_BYTES = 2
MAX_FRAME = MAX_BODY + CRC_BYTES + (MAX_BODY + CRC_BYTES) // 254 + 1  # COBS-encoded, without delimiter


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0): the check value of b'123456789' is 0x31C3."""
    return binascii.crc_hqx(data, 0)


def encode_frame(body: bytes) -> bytes:
    if len(body) > MAX_BODY:
        raise ValueError(f"body of {len(body)} bytes exceeds the protocol maximum of {MAX_BODY}")
    return cobs.encode(body + crc16(body).to_bytes(CRC_BYTES, "little")) + DELIMITER


def decode_frame(encoded: bytes) -> bytes:
    """The body of one COBS frame (without its delimiter); raise ProtocolError when it is damaged."""
    if len(encoded) > MAX_FRAME:
        raise ProtocolError(ErrorCode.TOO_LONG, f"frame of {len(encoded)} bytes exceeds {MAX_FRAME}")
    try:
        raw = cobs.decode(encoded)
    except cobs.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_COBS, str(exc)) from exc
    if len(raw) < CRC_BYTES:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"frame of {len(raw)} bytes has no room for a CRC")
    body, trailer = raw[:-CRC_BYTES], raw[-CRC_BYTES:]
    if crc16(body) != int.from_bytes(trailer, "little"):
        raise ProtocolError(ErrorCode.BAD_CRC, "CRC mismatch")
    return body


class FrameReader:
    """Splits a byte stream at ``0x00`` into bodies or ``ProtocolError``s, counting each outcome.

    A run of bytes longer than a maximal frame is discarded up to the next delimiter (one
    ``TOO_LONG``), so memory stays bounded whatever the line delivers.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._overflow = False
        self.counts: Counter[str] = Counter()

    def feed(self, data: bytes) -> list[bytes | ProtocolError]:
        *complete, tail = bytes(data).split(DELIMITER)
        out: list[bytes | ProtocolError] = []
        for chunk in complete:
            out.extend(self._complete(chunk))
        self._append(tail)
        return out

    def _append(self, data: bytes) -> None:
        if self._overflow:
            return
        self._buffer += data
        if len(self._buffer) > MAX_FRAME:
            self._buffer.clear()
            self._overflow = True

    def _complete(self, chunk: bytes) -> list[bytes | ProtocolError]:
        self._append(chunk)
        frame, overflow = bytes(self._buffer), self._overflow
        self._buffer.clear()
        self._overflow = False
        if overflow:
            self.counts["too_long"] += 1
            return [ProtocolError(ErrorCode.TOO_LONG, f"frame longer than {MAX_FRAME} bytes discarded")]
        if not frame:
            return []  # back-to-back delimiters: idle line, nothing lost
        try:
            body = decode_frame(frame)
        except ProtocolError as exc:
            self.counts[exc.code.name.lower()] += 1
            return [exc]
        self.counts["frames"] += 1
        return [body]
