"""`bisup bridge --collect` against hostile or broken input (issue 19, "A fair flywheel").

Measured before: 2,048 junk inputs from one device filled a 0.3 MB cap and 0 of 300 honest relays
were kept; a 30,000-character device id made one shard 40x the cap; a shard without ``digest`` or of
another input width was a traceback in ``bisup retrain``; the bridge said nothing about 3 of 7
corrupt-shard cases; a killed flush left its ``.tmp-*`` file forever.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_errors import error_line
from click.testing import CliRunner

from bisup.cli import main
from bisup.firmware_bridge.collect import CollectError, Collector, read_collected
from bisup.firmware_bridge.protocol import MAX_ID, Source
from bisup.firmware_bridge.relay import Answer, InferRequest, InputQuantization
from bisup.firmware_bridge.shards import record_bytes

QUANT = InputQuantization(1 / 255, -128, (8, 8, 1))
HASH = "ab" * 32
CAP = 300_000  # the 0.3 MB
RECORD = record_bytes(64, 10)  # 281 B: what one relay of an 8x8x1 input with 10 classes adds
HONEST = ("honest-1", "honest-2", "honest-3")


class Inputs:
    """Distinct int8 inputs, like a device that never sends the same one twice."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def relay(self, collector: Collector, device: str) -> None:
        x = self.rng.integers(-128, 128, 64, dtype=np.int8)
        collector.relayed(device, InferRequest(device, 0, x, 1, -30, 0),
                          Answer(0, 3, 0.9, Source.REMOTE, False, 3, np.eye(10, dtype=np.float32)[3]))


def _per_device(folder: Path) -> dict[str, int]:
    devices, counts = np.unique(read_collected(folder).device, return_counts=True)
    return dict(zip(devices.tolist(), counts.tolist(), strict=True))


def _folder_bytes(folder: Path) -> int:
    return sum(shard.stat().st_size for shard in folder.glob("shard-*.npz"))


def test_a_junk_flood_leaves_honest_devices_their_share(tmp_path):
    """One device sends 2,048 junk inputs first, at full speed; the honest devices' 300 relays are all kept."""
    logged: list[str] = []
    c = Collector(tmp_path, QUANT, HASH, logged.append, max_bytes=CAP)
    inputs = Inputs()
    for _ in range(2048):
        inputs.relay(c, "junk")
    for _ in range(100):
        for device in HONEST:
            inputs.relay(c, device)
            inputs.relay(c, "junk")  # still flooding
    c.close()
    kept = _per_device(tmp_path)
    assert {device: kept[device] for device in HONEST} == dict.fromkeys(HONEST, 100)
    assert kept["junk"] * RECORD <= CAP / 4  # at most a quarter of the cap: max(4 devices, the floor of 4)
    assert sum("device 'junk' holds" in line and "its share" in line for line in logged) == 1


def test_honest_devices_that_send_past_their_share_get_all_of_it(tmp_path):
    """Everyone sends more than the cap holds: each honest device still gets its share, the flood no more."""
    c = Collector(tmp_path, QUANT, HASH, print, max_bytes=CAP)
    inputs = Inputs(1)
    for _ in range(2048):
        inputs.relay(c, "junk")
    for _ in range(400):
        for device in HONEST:
            inputs.relay(c, device)
            inputs.relay(c, "junk")
    c.close()
    kept, share = _per_device(tmp_path), c.share()
    shares = {device: kept[device] * RECORD / CAP for device in kept}
    print(f"\nshares of the {CAP:,} B cap: {shares}; final share {share / CAP:.4f}")
    assert share > 0.24 * CAP  # a quarter of the cap less the shard headers
    for device in HONEST:
        assert kept[device] * RECORD >= share - RECORD, (device, kept)
    assert kept["junk"] * RECORD <= CAP / 4
    assert c.held_bytes() == {device: n * RECORD for device, n in kept.items()}
    assert _folder_bytes(tmp_path) <= CAP


def test_a_lone_device_fills_a_quarter_and_later_devices_split_the_rest_evenly(tmp_path):
    """A device alone gets a quarter (the floor of 4 shares), and keeps it when five more arrive: the share
    shrinks to a sixth, so it gets nothing more, and the five split what is left evenly."""
    c = Collector(tmp_path, QUANT, HASH, print, max_bytes=CAP)
    inputs = Inputs(2)
    for _ in range(2000):
        inputs.relay(c, "alone")
    alone = c.held_bytes()["alone"]
    assert c.share() - RECORD < alone <= c.share() <= CAP / 4
    later = ("d2", "d3", "d4", "d5", "d6")
    for _ in range(2000):
        for device in later:
            inputs.relay(c, device)
        inputs.relay(c, "alone")
    c.close()
    kept = _per_device(tmp_path)
    assert kept["alone"] * RECORD == alone
    assert max(kept[d] for d in later) - min(kept[d] for d in later) <= 1
    assert max(kept[d] for d in later) * RECORD <= c.share() < alone
    assert _folder_bytes(tmp_path) <= CAP + RECORD


def test_a_long_device_id_is_shortened_once_and_no_shard_passes_the_cap(tmp_path):
    """A 30,000-character id (an MQTT topic can carry any) once made a 123 MB shard under a 0.3 MB cap."""
    logged: list[str] = []
    c = Collector(tmp_path, QUANT, HASH, logged.append, max_bytes=CAP, min_shares=1)  # one device may fill it
    inputs = Inputs(3)
    long_a, long_b = "a" * 30_000, "a" * 29_999 + "b"
    for _ in range(3000):
        inputs.relay(c, long_a)
    c.close()
    sizes = [shard.stat().st_size for shard in tmp_path.glob("shard-*.npz")]
    print(f"\nlong id: shards {sizes} B under a {CAP:,} B cap")
    assert max(sizes) <= CAP and sum(sizes) <= CAP + RECORD and max(sizes) > CAP * 0.9
    assert sum("30,000 characters" in line for line in logged) == 1
    assert not any(long_a in line for line in logged)
    both = Collector(tmp_path / "both", QUANT, HASH, print)  # two long ids that share their first 29,999 characters
    inputs.relay(both, long_a)
    inputs.relay(both, long_b)
    both.close()
    devices = set(read_collected(tmp_path / "both").device.tolist())
    assert len(devices) == 2 and all(len(d) == MAX_ID and d.startswith("a" * 23 + "~") for d in devices)


def test_leftover_temporary_files_are_cleared_and_a_complete_one_kept(tmp_path):
    """What a flush killed before its rename leaves: an empty file (killed after mkstemp), half a shard, and a
    whole one (killed between fsync and rename)."""
    c = Collector(tmp_path, QUANT, HASH, print, shard_records=2)
    inputs = Inputs(4)
    for _ in range(4):
        inputs.relay(c, "d1")
    c.close()
    first, second = sorted(tmp_path.glob("shard-*.npz"))
    (tmp_path / ".tmp-empty.npz").write_bytes(b"")
    (tmp_path / ".tmp-half.npz").write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    os.replace(second, tmp_path / ".tmp-whole.npz")
    logged: list[str] = []
    restarted = Collector(tmp_path, QUANT, HASH, logged.append)
    restarted.close()
    assert not list(tmp_path.glob(".tmp-*"))
    assert len(read_collected(tmp_path)) == 4  # the whole one is a shard again
    assert [line for line in logged if "temporary" in line] == [
        f"collect: removed 2 temporary file(s) a killed flush left in {tmp_path}; recovered 1 complete one(s) as "
        "shards"]
    Collector(tmp_path, QUANT, HASH, logged.append).close()
    assert sum("temporary" in line for line in logged) == 1  # nothing left to say the second time


def _good(folder: Path) -> dict[str, np.ndarray]:
    """The arrays of a real shard of three records."""
    c = Collector(folder, QUANT, HASH, print)
    inputs = Inputs(5)
    for device in ("d1", "d2", "d3"):
        inputs.relay(c, device)
    c.close()
    (shard,) = folder.glob("shard-*.npz")
    with np.load(shard) as data:
        return {key: data[key] for key in data.files}


def _changed(**changes) -> Callable[[dict], dict]:
    return lambda arrays: {key: value for key, value in (arrays | changes).items() if value is not None}


def _resized(arrays: dict) -> dict:
    return arrays | {"x": arrays["x"][:, :16], "shape": np.array([4, 4, 1])}


def _reclassed(arrays: dict) -> dict:
    return arrays | {"probabilities": np.zeros((3, 12), np.float32)}


def _flipped(data: bytes) -> bytes:
    """One byte of the inputs' data flipped: the zip's CRC no longer matches."""
    at = data.index(b"x.npy") + 200
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


# case: (how the bad shard is made from the good arrays or bytes, what the one line says)
BYTES_CASES = {
    "truncated": (lambda data: data[: len(data) // 2], "is corrupt (truncated: "),
    "empty": (lambda data: b"", "is corrupt (empty: 0 bytes"),
    "not a zip": (lambda data: b"time,device\n1,d1\n", "is corrupt (not an .npz archive)"),
    "damaged member": (_flipped, "is corrupt (damaged: "),
}
ARRAY_CASES = {
    "an .npy, not an .npz": (lambda arrays: arrays["x"], "is corrupt (not an .npz archive)"),
    "python objects": (_changed(x=np.array([{"a": 1}, None, 3], dtype=object)),
                       "is corrupt (it holds Python objects, not arrays)"),
    "no digest": (_changed(digest=None), "is corrupt (no 'digest': not a bisup collect shard of format 1)"),
    "another format": (_changed(format=np.array(2)), "is corrupt (format 2; this bisup reads format 1)"),
    "float inputs": (lambda a: a | {"x": a["x"].astype(np.float32)}, "is corrupt ('x' is float32 of 2 dimensions, "
                                                                      "not int8 of 2)"),
    "text labels": (lambda a: a | {"remote_label": a["remote_label"].astype(str)}, "is corrupt ('remote_label' is "),
    "short digests": (lambda a: a | {"digest": a["digest"][:, :8]}, "is corrupt (digests of 8 bytes, not 16)"),
    "uneven columns": (lambda a: a | {"digest": a["digest"][:2]}, "is corrupt (columns of different lengths: x 3, "),
    "inputs wider than the shape": (lambda a: a | {"shape": np.array([4, 4, 1])},
                                    "is corrupt (inputs of 64 values where its shape (4, 4, 1) has 16)"),
}
OTHER_MODEL_CASES = {  # whole shards, but not of this model: named against what was expected
    "another model hash": (_changed(model_hash=np.array("cd" * 32)), "holds relays of model cdcdcdcdcdcdcdcd…"),
    "another input shape": (_resized, "holds inputs of shape (4, 4, 1) (scale 0.00392157, zero point -128)"),
}


def _write_bad(folder: Path, good: dict[str, np.ndarray], case: str) -> Path:
    """The good shard as shard-0 and the bad one as shard-1 (read in that order)."""
    np.savez(folder / "shard-0-good.npz", **good)
    bad = folder / "shard-1-bad.npz"
    if case in BYTES_CASES:
        bad.write_bytes(BYTES_CASES[case][0]((folder / "shard-0-good.npz").read_bytes()))
    else:
        make = {**ARRAY_CASES, **OTHER_MODEL_CASES, "another class count": (_reclassed, "")}[case][0]
        made = make(good)
        with bad.open("wb") as f:  # np.save(path) would add .npy to the name
            if isinstance(made, np.ndarray):
                np.save(f, made)
            else:
                np.savez(f, **made)
    return bad


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, np.ndarray]:
    return _good(tmp_path_factory.mktemp("good"))


@pytest.mark.parametrize("case", [*BYTES_CASES, *ARRAY_CASES])
def test_every_corrupt_shard_is_named_in_one_line_by_retrain_and_the_bridge(good, tmp_path, case):
    bad = _write_bad(tmp_path, good, case)
    said = {**BYTES_CASES, **ARRAY_CASES}[case][1]
    with pytest.raises(CollectError) as caught:
        read_collected(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"shard {bad} {said}") and message.endswith("; move it aside to retrain on the others")
    assert "\n" not in message and "pickle" not in message
    logged: list[str] = []
    c = Collector(tmp_path, QUANT, HASH, logged.append)  # the bridge starts, names the shard and goes on
    Inputs(6).relay(c, "d9")
    c.close()
    (line,) = logged
    assert line.startswith(f"collect: shard {bad} {said}")
    assert line.endswith("; skipped, its inputs may be collected again; move it aside before `bisup retrain`")
    assert c.written_shards == 1


@pytest.mark.parametrize("case", list(OTHER_MODEL_CASES))
def test_a_shard_of_another_model_is_named_by_retrain_and_the_bridge(good, tmp_path, case):
    bad = _write_bad(tmp_path, good, case)
    said = OTHER_MODEL_CASES[case][1]
    with pytest.raises(CollectError) as caught:
        read_collected(tmp_path)
    assert str(caught.value).startswith(f"shard {bad} {said}")
    assert f"but shard {tmp_path / 'shard-0-good.npz'} holds" in str(caught.value)
    assert str(caught.value).endswith("move one aside (each model's relays belong in their own folder)")
    logged: list[str] = []
    Collector(tmp_path, QUANT, HASH, logged.append).close()
    (line,) = logged
    assert line.startswith(f"collect: shard {bad} {said}") and "but this bridge collects" in line


def test_shards_with_answers_over_other_classes_are_not_mixed(good, tmp_path):
    bad = _write_bad(tmp_path, good, "another class count")
    with pytest.raises(CollectError) as caught:
        read_collected(tmp_path)
    assert str(caught.value).startswith(f"shard {bad} holds answers over 12 classes but shard ")
    assert "holds answers over 10 classes; move one aside" in str(caught.value)


def test_retrain_names_a_shard_without_digest_in_one_line(good, tmp_path):
    """`bisup retrain` reads the collected shards before it loads a model, so dummy model files suffice here."""
    collected = tmp_path / "collected"
    collected.mkdir()
    bad = _write_bad(collected, good, "no digest")
    for name in ("local.keras", "remote.keras"):
        (tmp_path / name).write_bytes(b"")
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 8, 8, 1), np.float32), y=np.zeros(4, int))
    result = CliRunner().invoke(main, [
        "retrain", "--model", str(tmp_path / "local.keras"), "--train", str(tmp_path / "data.npz"),
        "--collected", str(collected), "--data", str(tmp_path / "data.npz"), "--remote", str(tmp_path / "remote.keras"),
        "--target-accuracy", "0.9", "--out", str(tmp_path / "out")])
    assert error_line(result) == (f"Error: shard {bad} is corrupt (no 'digest': not a bisup collect shard of format 1)"
                                  "; move it aside to retrain on the others")


def test_a_folder_written_before_the_fixed_width_column_still_reads(good, tmp_path):
    """Shards of the earlier layout (device column as wide as its longest id, no local_confidence check) stay
    usable: only what retrain reads is required."""
    np.savez(tmp_path / "shard-0-old.npz", **(good | {"device": good["device"].astype("<U2")}))
    shutil.copy(tmp_path / "shard-0-old.npz", tmp_path / "shard-1-copy.npz")
    assert len(read_collected(tmp_path)) == 3
