"""Golden frames shared by the Python and C implementations (``vectors/golden.txt``).

Each line is ``name<TAB>frame hex<TAB>expected``. ``expected`` is ``protocol.describe`` of the
decoded message, or ``INVALID code=N seq=S`` for a frame a receiver must reject with that error.
``python -m bisup.firmware_bridge.golden`` rewrites the file; a test checks it is up to date.
"""

from __future__ import annotations

from pathlib import Path

from bisup.firmware_bridge import framing
from bisup.firmware_bridge import protocol as p

GOLDEN = Path(__file__).with_name("vectors") / "golden.txt"
HASH = bytes(range(32))


IMAGE_96X96X3 = 96 * 96 * 3  # the largest input the protocol must carry (issue 10): 27,648 int8 elements
BOOT = 0x8BADF00D


def _valid() -> list[tuple[str, p.Message]]:
    digits = bytes((i * 37) % 256 for i in range(64))
    image = bytes((i * 7 + i // 251) % 256 for i in range(IMAGE_96X96X3))
    return [
        ("hello", p.Hello(1, (1, 2, 3), HASH, "dev-01", 1040, boot=BOOT)),
        ("infer_digits", p.Infer(7, 3, -20, digits, boot=BOOT)),
        ("infer_zeros", p.Infer(8, 9, -128, bytes(64), boot=0)),
        ("infer_96x96x3", p.Infer(9, 0, 127, image, boot=0xFFFFFFFF)),
        ("split_activation", p.Split(10, 2, 4, -3, bytes((i * 13 + 5) % 256 for i in range(2048)), boot=BOOT)),
        ("answer_remote", p.AnswerMsg(7, 5, 0.875, p.Source.REMOTE, boot=BOOT)),
        ("answer_rejected", p.AnswerMsg(8, 9, 0.25, p.Source.FALLBACK, rejected=True, boot=BOOT)),
        ("answer_loaded", p.AnswerMsg(11, 2, 0.5, p.Source.REMOTE, rejected=True, load=5, boot=BOOT)),
        ("error_tensor", p.ErrorMsg(9, p.ErrorCode.BAD_TENSOR, IMAGE_96X96X3 * 3, boot=BOOT)),
        ("error_busy", p.ErrorMsg(12, p.ErrorCode.BUSY, 1500, boot=BOOT)),  # answer locally for 1.5 s
        ("ping", p.Ping(0xFFFFFFFF, boot=1)),
        ("feed", p.Feed(17, bytes((i * 11) % 256 for i in range(64)), boot=BOOT)),
        ("report_remote", p.Report(17, 4, p.Source.REMOTE, False, 9, -60, 1234, 56789, boot=BOOT)),
        ("pong", p.Pong(0, boot=BOOT)),
        ("profile", p.Profile(17, (4608, 0, 70000, 1), boot=BOOT)),
        ("stats", p.Stats(42, 70000, 61234, 8766, boot=BOOT)),
        ("stats_scheduled", p.Stats(43, 70001, 61235, 8766, 4321, boot=BOOT)),
    ]


def _reframe(body: bytes, crc: int | None = None) -> bytes:
    crc = framing.crc16(body) if crc is None else crc
    return framing.cobs.encode(body + crc.to_bytes(2, "little")) + framing.DELIMITER


def _invalid() -> list[tuple[str, bytes, str]]:
    """Frames every receiver must refuse. A frame longer than the receiver's limit is not here: each
    side has its own limit (the host's ``MAX_BODY``, the device's ``BISUP_PROTO_MAX_BODY``), tested apart."""
    infer = p.encode(p.Infer(7, 3, -20, bytes(64), boot=BOOT))
    bad_crc = _reframe(infer, framing.crc16(infer) ^ 0x0101)
    legacy_infer = p.LEGACY_HEADER.pack(1, p.MsgType.INFER, 7) + bytes([3, 0, 0xEC, 1, 64, 0]) + bytes(64)
    return [
        ("bad_crc", bad_crc, "INVALID code=1 seq=0"),
        ("bad_cobs", b"\x09\x01\x02\x00", "INVALID code=2 seq=0"),
        ("truncated_frame", framing.encode_frame(infer)[:20] + b"\x00", "INVALID code=1 seq=0"),  # valid COBS
        ("short_header", _reframe(b"\x02\x10\x07"), "INVALID code=6 seq=0"),
        ("v2_header_cut", _reframe(infer[:8]), "INVALID code=6 seq=7"),
        ("legacy_v1_infer", _reframe(legacy_infer), "INVALID code=4 seq=7"),
        ("bad_version", _reframe(b"\x03" + infer[1:]), "INVALID code=4 seq=7"),
        ("bad_type", _reframe(infer[:1] + b"\x42" + infer[2:]), "INVALID code=5 seq=7"),
        ("infer_count_mismatch", _reframe(infer[:-1]), "INVALID code=6 seq=7"),
        ("split_count_mismatch", _reframe(p.encode(p.Split(11, 1, 2, 0, bytes(512), boot=BOOT))[:-1]),
         "INVALID code=6 seq=11"),
        ("answer_short", _reframe(p.encode(p.AnswerMsg(4, 1, 0.5, p.Source.REMOTE))[:-1]), "INVALID code=6 seq=4"),
        ("stats_short", _reframe(p.encode(p.Stats(5, 3, 2, 1, boot=BOOT))[:-1]), "INVALID code=6 seq=5"),
        ("hello_bad_id_length", _reframe(p.encode(p.Hello(2, (1, 0, 0), HASH, "x", boot=BOOT))[:-1]),
         "INVALID code=6 seq=2"),
    ]


def vectors() -> list[tuple[str, bytes, str]]:
    valid = [(name, framing.encode_frame(p.encode(msg)), p.describe(msg)) for name, msg in _valid()]
    return valid + _invalid()


def render() -> str:
    lines = [f"# bisup protocol v{p.VERSION} golden frames: name, frame (hex, with its 0x00 delimiter), expected"]
    lines += [f"{name}\t{frame.hex()}\t{expected}" for name, frame, expected in vectors()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    GOLDEN.write_text(render())
    print(f"wrote {GOLDEN}")
