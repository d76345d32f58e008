"""The data flywheel end to end (`bisup demo --flywheel`) and `bisup retrain`'s refusals.

Figure (issue 13): after one round on the drifted stream, at least 30% fewer remote calls at the
same system accuracy on held-out drifted digits. "Same" allows one percentage point: the held-out
set has 360 digits, so one digit is 0.28 pp.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_errors import error_line
from click.testing import CliRunner

from bisup.cli import main
from bisup.export import bundles
from bisup.firmware_bridge.bundle import Bundle
from bisup.firmware_bridge.collect import read_collected

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flywheel(demo_run, tmp_path_factory):
    """One turn of the wheel through the command line, `bisup demo --flywheel --json`, in the demo's cache (its
    local CNN; the robust remote is trained here). Returns the JSON, the progress lines and the cache."""
    _, _, cache = demo_run
    out = tmp_path_factory.mktemp("flywheel")
    run = CliRunner(env={"BISUP_CACHE": str(cache)}).invoke(main, ["demo", "--flywheel", "--out", str(out), "--json"])
    assert run.exit_code == 0, run.stderr
    messages = [line.removeprefix("bisup: ") for line in run.stderr.splitlines()]
    return json.loads(run.stdout), messages, cache


def test_one_round_cuts_remote_calls_at_the_same_accuracy(flywheel):
    result = flywheel[0]["retrain"]
    before, after = result["before"]["test"], result["after"]["test"]
    assert after["remote_fraction"] <= 0.7 * before["remote_fraction"], (before, after)
    assert after["accuracy"] >= before["accuracy"] - 0.01, (before, after)
    assert after["local_accuracy"] > before["local_accuracy"] + 0.05  # the local model learned the drift
    assert result["after_at_before_accuracy"]["remote_fraction"] <= 0.7 * before["remote_fraction"]


def test_the_drifted_stream_sets_off_the_alarm_and_every_relay_is_collected(flywheel):
    result, messages, _ = flywheel
    assert not result["iid"]["drift_alarm"] and result["iid"]["collected"] == 0
    field = result["stream"]
    assert field["drift_alarm"] and field["live_remote_fraction"] > field["band"][1]
    assert any(m.startswith("drift alarm: remote fraction") for m in messages)
    collected = read_collected(f"{result['out_dir']}/collected")
    assert len(collected) == field["collected"] == field["relayed"]


def test_the_retrained_bundle_verifies_and_holds_the_new_model(flywheel):
    result = flywheel[0]["retrain"]
    bundles.verify(result["bundle"])
    loaded = Bundle.load(result["bundle"])
    assert loaded.threshold_int8 == result["after"]["threshold_int8"]
    assert loaded.model == (Bundle.load(result["after"]["folder"]).model)


def _retrain(flywheel, tmp_path, **changes):
    result, _, cache = flywheel
    out = result["out_dir"]
    args = {"--model": f"{cache}/digits-v1-seed0/local.keras", "--train": f"{out}/train.npz",
            "--collected": f"{out}/collected", "--data": f"{out}/shifted_val.npz",
            "--remote": f"{cache}/digits-v1-seed0/remote-robust.keras", "--target-accuracy": "0.9",
            "--out": str(tmp_path / "out"), "--epochs": "1"} | changes
    return CliRunner().invoke(main, ["retrain", *(part for item in args.items() for part in item)])


def test_a_collected_set_of_another_input_shape_is_refused(flywheel, tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    source = sorted(Path(flywheel[0]["out_dir"], "collected").glob("shard-*.npz"))[0]
    with np.load(source) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["shape"] = np.array([4, 4, 1])
    arrays["x"] = arrays["x"][:, :16]
    np.savez(folder / "shard-1.npz", **arrays)
    result = _retrain(flywheel, tmp_path, **{"--collected": str(folder)})
    assert "holds inputs of shape (4, 4, 1) but the model takes (8, 8, 1)" in error_line(result)


def test_a_training_set_that_does_not_match_the_model_is_refused(flywheel, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 8, 8, 1), np.float32), y=np.full(10, 12))
    result = _retrain(flywheel, tmp_path, **{"--train": str(bad)})
    assert "labels span 12..12 but the model has 10 classes" in error_line(result)


def test_an_empty_collect_folder_says_how_to_fill_it(flywheel, tmp_path):
    result = _retrain(flywheel, tmp_path, **{"--collected": str(tmp_path)})
    assert f"no collected shards in {tmp_path}; run `bisup bridge --collect" in error_line(result)


def test_the_demo_prints_the_stream_and_the_comparison(flywheel):
    result, messages, _ = flywheel
    assert set(result) == {"iid", "stream", "retrain", "out_dir"}
    assert any("cached at" in m for m in messages)  # the demo's local CNN was reused, not trained again


def test_a_held_out_set_without_labels_is_refused_before_any_training(flywheel, tmp_path):
    unlabelled = tmp_path / "test.npz"
    np.savez(unlabelled, x=np.zeros((10, 8, 8, 1), np.float32))
    result = _retrain(flywheel, tmp_path, **{"--test": str(unlabelled)})
    assert f"{unlabelled} has no labels 'y'; the before/after comparison needs them" in error_line(result)
    assert "fine-tuning" not in result.stderr
