"""The Python codec against the golden frames, round trips, and 10^5 fuzzed frames."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bisup.firmware_bridge import framing, golden
from bisup.firmware_bridge import protocol as p


def _outcome(frame: bytes) -> str:
    items = framing.FrameReader().feed(frame)
    assert len(items) == 1, items
    item = items[0]
    if isinstance(item, p.ProtocolError):
        return f"INVALID code={int(item.code)} seq={item.seq}"
    try:
        return p.describe(p.decode(item))
    except p.ProtocolError as exc:
        return f"INVALID code={int(exc.code)} seq={exc.seq}"


def test_golden_file_is_up_to_date():
    assert golden.GOLDEN.read_text() == golden.render(), "run: python -m bisup.firmware_bridge.golden"


@pytest.mark.parametrize(("name", "frame", "expected"), golden.vectors(), ids=[v[0] for v in golden.vectors()])
def test_golden_frames_decode_as_specified(name, frame, expected):
    assert _outcome(frame) == expected


def test_valid_golden_frames_reencode_byte_for_byte():
    for name, frame, expected in golden.vectors():
        if expected.startswith("INVALID"):
            continue
        body = framing.FrameReader().feed(frame)[0]
        assert framing.encode_frame(p.encode(p.decode(body))) == frame, name


def test_crc_is_xmodem():
    assert framing.crc16(b"123456789") == 0x31C3


def test_body_limit_is_enforced_on_both_sides():
    with pytest.raises(ValueError, match="exceeds the limit of 262144"):
        p.encode(p.Infer(1, 0, 0, bytes(p.MAX_BODY)))
    with pytest.raises(ValueError, match="exceeds the limit of 1040"):  # a device's limit, from its HELLO
        p.encode(p.Feed(1, bytes(1040)), max_body=1040)
    assert _outcome(b"\x01" * (framing.MAX_FRAME + 1) + b"\x00") == "INVALID code=3 seq=0"


def test_a_96x96x3_image_goes_through_a_frame():
    image = bytes(range(256)) * 108  # 27,648 int8 elements
    msg = p.Infer(3, 1, -5, image, boot=77)
    items = framing.FrameReader().feed(framing.encode_frame(p.encode(msg)))
    assert p.decode(items[0]) == msg


def test_a_version_1_peer_gets_an_error_it_can_read():
    """An old device's INFER is refused with BAD_VERSION in the v1 layout (6-byte header), carrying its
    seq and our version: its state machine then ends the request with its own local answer."""
    legacy = p.LEGACY_HEADER.pack(1, p.MsgType.INFER, 41) + bytes([3, 0, 0xEC, 1, 4, 0]) + bytes(4)
    with pytest.raises(p.ProtocolError) as caught:
        p.decode(legacy)
    reply = p.encode_error(caught.value)
    assert reply == bytes([1, 0x7F]) + (41).to_bytes(4, "little") + bytes([p.ErrorCode.BAD_VERSION, 2, 0])


def test_seq_and_boot_survive_a_payload_error():
    body = bytearray(p.encode(p.Infer(9, 1, 2, bytes(8), boot=0xDEADBEEF)))
    body[-1:] = b""
    with pytest.raises(p.ProtocolError) as caught:
        p.decode(bytes(body))
    assert (caught.value.seq, caught.value.boot, caught.value.code) == (9, 0xDEADBEEF, p.ErrorCode.BAD_LENGTH)
    assert p.decode(p.encode_error(caught.value)) == p.ErrorMsg(9, p.ErrorCode.BAD_LENGTH, 0, boot=0xDEADBEEF)


U32 = st.integers(0, 2**32 - 1)
TENSOR = st.one_of(st.binary(max_size=900), st.binary(min_size=27_648, max_size=30_000))
messages = st.one_of(
    st.builds(p.Hello, U32, st.tuples(*[st.integers(0, 255)] * 3), st.binary(min_size=32, max_size=32),
              st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=32), U32, boot=U32),
    st.builds(p.Infer, U32, st.integers(0, 65535), st.integers(-128, 127), TENSOR, boot=U32),
    st.builds(p.AnswerMsg, U32, st.integers(0, 65535), st.integers(0, 65535).map(lambda q: q / 65535),
              st.sampled_from(list(p.Source)), st.booleans(), boot=U32),
    st.builds(p.ErrorMsg, U32, st.sampled_from(list(p.ErrorCode)), U32, boot=U32),
    st.builds(p.Ping, U32, boot=U32),
    st.builds(p.Pong, U32, boot=U32),
    st.builds(p.Feed, U32, TENSOR, boot=U32),
    st.builds(p.Report, U32, st.integers(0, 65535), st.sampled_from(list(p.Source)), st.booleans(),
              st.integers(0, 65535), st.integers(-128, 127), U32, U32, boot=U32),
    st.builds(p.Profile, U32, st.lists(U32, max_size=255).map(tuple), boot=U32),
)


@given(messages)
@settings(max_examples=500)
def test_every_message_round_trips_through_a_frame(msg):
    items = framing.FrameReader().feed(b"\x00\x00" + framing.encode_frame(p.encode(msg)))
    assert len(items) == 1
    assert p.decode(items[0]) == msg


def _mutate(frame: bytearray, rng: random.Random) -> bytes:
    for _ in range(rng.randint(1, 4)):
        if not frame:
            break
        at = rng.randrange(len(frame))
        op = rng.randrange(5)
        if op == 0:
            frame[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            frame[at] = rng.randrange(256)
        elif op == 2:
            del frame[at]
        elif op == 3:
            frame.insert(at, rng.randrange(256))
        else:
            del frame[at + 1:]
    return bytes(frame)


FRAMES = [frame for _, frame, _ in golden.vectors()]


@given(seed=st.integers(0, 2**32 - 1), noise=st.binary(max_size=64))
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_frames_never_crash_the_decoder(seed, noise):
    """1,000 examples x 100 mutated frames = 10^5 frames; only ProtocolError may come out, and the
    reader still decodes a clean frame afterwards."""
    rng = random.Random(seed)
    reader = framing.FrameReader()
    stream = bytearray(noise)
    for _ in range(100):
        stream += _mutate(bytearray(rng.choice(FRAMES)), rng)
    for item in reader.feed(bytes(stream)):
        if isinstance(item, bytes):
            try:
                p.decode(item)
            except p.ProtocolError:
                pass
    clean = reader.feed(b"\x00" + FRAMES[0])
    assert isinstance(clean[-1], bytes) and isinstance(p.decode(clean[-1]), p.Hello)
