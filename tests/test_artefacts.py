"""The typed artefacts: round trips, format checks, and the one decision rule (fast, no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bisup.boards import all_boards, load_board
from bisup.converters.artefacts import (
    NEVER_TRUST,
    ArtefactError,
    BoardProfile,
    BundleManifest,
    Decision,
    LocalThreshold,
    Member,
    RemoteThreshold,
    Thresholds,
    dumps,
    trusted,
)


def _thresholds() -> Thresholds:
    return Thresholds(LocalThreshold("max-softmax", 41, 0.66, 0.0039, -128),
                      RemoteThreshold("max-softmax", 0.86, max_reject=0.005),
                      {"mode": "budget", "max_remote_fraction": 0.3}, None, {"accuracy": 0.99}, {}, {}, {})


def test_thresholds_round_trip_through_the_file_text():
    original = _thresholds()
    assert Thresholds.from_json(dumps(original)) == original
    assert "target_accuracy" not in json.loads(dumps(original))["remote"]  # None fields are not written


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(format=2), "format 2, from a newer bisup; this one reads format 1: upgrade bisup"),
    (lambda d: d.update(format=0), "format 0, from an older bisup; this one reads format 1: run `bisup calibrate`"),
    (lambda d: d.pop("format"), "is not a bisup thresholds file (it has no format version)"),
    (lambda d: d.pop("remote"), "lacks its local and remote sections"),
    (lambda d: d["local"].pop("threshold_int8"), "(local) lacks threshold_int8"),
    (lambda d: d["local"].update(threshold_int8=300), "is not an int8 code or 128"),
    (lambda d: d["remote"].update(threshold="high"), "remote threshold 'high' is not a number"),
])
def test_a_bad_thresholds_file_is_named(change, message):
    data = _thresholds().to_json()
    change(data)
    with pytest.raises(ArtefactError, match="t.json") as caught:
        Thresholds.from_json(json.dumps(data), "t.json")
    assert message in str(caught.value)


def test_not_json_at_all_is_named(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_bytes(b"\x00\xff")
    with pytest.raises(ArtefactError, match=f"{path} is not valid JSON"):
        Thresholds.read(path)
    with pytest.raises(ArtefactError, match="cannot be read"):
        Thresholds.read(tmp_path / "absent.json")


def test_manifest_and_board_profiles_round_trip():
    manifest = BundleManifest("0.1.0", "2026-11-25T00:00:00Z", "ab" * 32, {"model.tflite": Member("ab" * 32, 9400)})
    assert BundleManifest.from_json(dumps(manifest)) == manifest
    for board in all_boards():
        assert BoardProfile.from_json(dumps(board)) == board
    assert load_board("esp32s3").to_json()["model_flash_budget"] == load_board("esp32s3").model_flash_budget


def test_the_one_decision_rule():
    """The device answers locally iff confidence >= threshold (int8 units); 128 never; the remote answer
    is kept iff its score >= the remote threshold. The C library's bisup_proto_trusted is checked against the
    same cases in tests/c/proto_harness.c."""
    confidence = np.array([-128, -21, -20, 127])
    assert trusted(confidence, -20).tolist() == [False, False, True, True]
    assert not trusted(confidence, NEVER_TRUST).any() and trusted(confidence, -128).all()
    decision = _thresholds().decision
    assert decision == Decision(41, 0.86)
    assert decision.accepted(np.array([0.85, 0.86, 0.9])).tolist() == [False, True, True]
