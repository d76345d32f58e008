"""`bisup demo` end to end: the done-when figures, the JSON shape, the cache, and path consistency."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bisup.calibration import single as calibrate
from bisup.calibration import thresholds
from bisup.cli import main
from bisup.examples import demo, digits
from bisup.firmware_bridge.relay import Source

pytestmark = pytest.mark.slow


def test_bisupervised_saves_calls_at_remote_accuracy(demo_run):
    result, messages, _ = demo_run
    rows = {r["name"]: r for r in result.rows}
    assert list(rows) == ["local-only", "remote-only", "bisupervised"]
    bisup, remote = rows["bisupervised"], rows["remote-only"]
    assert bisup["remote_fraction"] <= 0.4 * remote["remote_fraction"]
    assert remote["accuracy"] - bisup["accuracy"] <= 0.005
    assert bisup["cost_saved"] >= 0.3  # the paper's claim
    assert bisup["accuracy"] > rows["local-only"]["accuracy"]
    assert any("epoch 40/40" in m for m in messages)  # training progress was shown


def test_path_answers_equal_the_offline_decisions(demo_run):
    """The serial path (virtual device, pty, bridge) and the offline scoring agree sample for sample."""
    result, _, cache = demo_run
    local = demo.LocalModel(f"{result.out_dir}/model.tflite")
    x, y = digits.splits(0)["test"]
    remote = demo.open_remote(cache / f"{demo.MODEL_VERSION}-seed0" / "remote.keras")
    chosen = result.thresholds
    o, _ = calibrate.outcomes(local, remote, "max-softmax", x, y)
    r = chosen.remote.threshold
    label, relayed, rejected = thresholds.answers(o, chosen.local.threshold_int8, r)
    relay = demo.Relay(remote, demo.RemoteSupervisor("max-softmax", r), local.quantization)
    answers = demo.through_the_path(local, demo.Bundle.load(result.out_dir), relay, x)
    assert [a.label for a in answers] == label.tolist()
    assert [a.source is not Source.LOCAL for a in answers] == relayed.tolist()
    assert [a.rejected for a in answers] == rejected.tolist()
    bisup = next(r for r in result.rows if r["name"] == "bisupervised")
    assert bisup["accuracy"] == pytest.approx(float((label == y).mean()))


def test_cli_json_uses_the_cache(demo_run, tmp_path):
    _, _, cache = demo_run
    result = CliRunner(env={"BISUP_CACHE": str(cache)}).invoke(main, ["demo", "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"rows"}
    for row in data["rows"]:
        assert set(row) == {"name", "accuracy", "remote_fraction", "rejected_fraction", "accepted_accuracy",
                            "cost_saved"}
        assert all(0 <= row[k] <= 1 for k in row if k != "name")
    assert "cached at" in result.stderr and "epoch" not in result.stderr
    assert (tmp_path / "thresholds.json").is_file() and (tmp_path / "tradeoff.png").is_file()
    assert np.isclose(data["rows"][2]["cost_saved"], 1 - data["rows"][2]["remote_fraction"])
