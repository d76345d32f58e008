"""`bisup calibrate` on the exported digits model: thresholds, plot, guarantees and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_errors import error_line
from click.testing import CliRunner

from bisup.calibration import risk_control
from bisup.calibration import single as calibrate
from bisup.cli import main
from bisup.converters.runners import dequantize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(converted, tmp_path_factory):
    from bisup.boards import load_board
    from bisup.export.single import write

    out = tmp_path_factory.mktemp("export")
    write(converted, load_board("nrf52840"), out)
    return out / "model.tflite"


@pytest.fixture(scope="module")
def local(exported):
    return calibrate.LocalModel(exported)


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_calibrate_writes_int8_thresholds_table_and_plot(exported, digits_example, tmp_path):
    result = _cli("calibrate", "--local", exported, "--remote", digits_example["model"], "--data",
                  digits_example["val"], "--max-remote-fraction", "0.3", "--out", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "local threshold" in result.stdout and "cost saved" in result.stdout
    data = json.loads((tmp_path / "thresholds.json").read_text())
    assert -128 <= data["local"]["threshold_int8"] <= 128
    assert data["achieved"]["remote_fraction"] <= 0.3
    assert data["local"]["supervisor"] == "max-softmax"  # read from the export's report.json
    png = (tmp_path / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    as_json = _cli("calibrate", "--local", exported, "--remote", digits_example["model"], "--data",
                   digits_example["val"], "--max-remote-fraction", "0.3", "--out", tmp_path, "--json")
    assert json.loads(as_json.stdout) == data


def test_int8_threshold_reproduces_the_float_decision(local, digits_example, tmp_path):
    x, _ = np.load(digits_example["holdout"]).values()
    _, _, confidence = local.run(x)
    for t in range(-128, 128, 7):
        threshold = local.threshold_float(t)
        int8_decision = confidence >= t
        float_decision = dequantize(confidence, local.confidence) >= threshold
        assert np.array_equal(int8_decision, float_decision), t


def test_risk_bound_holds_on_held_out_splits(local, digits_example):
    x, y = np.load(digits_example["holdout"]).values()
    _, pred, confidence = local.run(x)
    correct = pred == y
    rng = np.random.default_rng(0)
    max_risk, delta, trials, violations, certified = 0.02, 0.1, 300, 0, 0
    for _ in range(trials):
        order = rng.permutation(len(y))
        cal, test = order[: len(y) // 2], order[len(y) // 2:]
        t = risk_control.certify(risk_control.DEFAULT_PROCEDURE, confidence[cal], correct[cal], max_risk, delta)
        accepted = test[confidence[test] >= t]
        certified += len(accepted) > 0
        violations += len(accepted) > 0 and (~correct[accepted]).mean() > max_risk
    # the test half is finite, so its own sampling noise is allowed on top of delta
    assert violations / trials <= delta + 0.05
    assert certified / trials > 0.9


def test_risk_mode_states_its_guarantee(exported, digits_example, tmp_path):
    result = _cli("calibrate", "--local", exported, "--remote", digits_example["model"], "--data",
                  digits_example["val"], "--max-local-error", "0.05", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert "exchangeable" in data["guarantee"] and data["selection"]["delta"] == 0.1
    assert data["selection"]["procedure"] == "auto" and "from the strictest testable threshold" in data["guarantee"]
    assert "exchangeable" in _cli("calibrate", "--help").stdout


def test_budget_with_delta_is_guaranteed_and_no_looser_than_the_point_estimate(exported, digits_example, tmp_path):
    runs = {}
    for name, extra in (("point", []), ("guaranteed", ["--delta", "0.1"])):
        result = _cli("calibrate", "--local", exported, "--remote", digits_example["model"], "--data",
                      digits_example["val"], "--max-remote-fraction", "0.3", "--out", tmp_path / name, "--json", *extra)
        assert result.exit_code == 0, result.stderr
        runs[name] = json.loads(result.stdout)
    assert runs["point"]["guarantee"] is None and "delta" not in runs["point"]["selection"]
    assert "deployed fraction of inputs relayed" in runs["guaranteed"]["guarantee"]
    assert runs["guaranteed"]["selection"]["delta"] == 0.1
    assert runs["guaranteed"]["achieved"]["remote_fraction"] <= runs["point"]["achieved"]["remote_fraction"]


def test_too_small_for_the_guarantee(exported, digits_example, tmp_path):
    result = _cli("calibrate", "--local", exported, "--remote", digits_example["model"], "--data",
                  digits_example["val"], "--max-local-error", "0.0005", "--out", tmp_path)
    assert f"needs at least {risk_control.samples_needed(0.0005, 0.1)}" in error_line(result)


def test_unreachable_target(exported, digits_example, tmp_path):
    result = _cli("calibrate", "--local", exported, "--remote", digits_example["model"], "--data",
                  digits_example["val"], "--target-accuracy", "0.99999", "--out", tmp_path)
    assert "best achievable is" in error_line(result)


def test_class_count_mismatch(exported, digits_example, tmp_path):
    import keras

    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(12)])
    other.save(tmp_path / "twelve.keras")
    result = _cli("calibrate", "--local", exported, "--remote", tmp_path / "twelve.keras", "--data",
                  digits_example["val"], "--max-remote-fraction", "0.3", "--out", tmp_path)
    assert "local model has 10 classes but the remote has 12" in error_line(result)


def test_local_must_be_the_exported_tflite(digits_example, tmp_path):
    """--local takes the exported int8 model; a .keras file or a damaged file is named, with the fix."""
    (tmp_path / "broken.tflite").write_bytes(b"\x00" * 64)
    for wrong in (digits_example["model"], tmp_path / "broken.tflite"):
        result = _cli("calibrate", "--local", wrong, "--remote", digits_example["model"], "--data",
                      digits_example["val"], "--max-remote-fraction", "0.3", "--out", tmp_path)
        line = error_line(result)
        assert f"local model {wrong}" in line and "DIR/model.tflite" in line


def test_corrupt_keras_remote_is_named_as_corrupt(exported, digits_example, tmp_path):
    corrupt = tmp_path / "remote.keras"
    corrupt.write_bytes(digits_example["model"].read_bytes()[:500])
    result = _cli("calibrate", "--local", exported, "--remote", corrupt, "--data", digits_example["val"],
                  "--max-remote-fraction", "0.3", "--out", tmp_path)
    assert f"remote model {corrupt} is not a .keras archive (truncated or corrupt)" in error_line(result)


def test_exactly_one_mode(exported, digits_example, tmp_path):
    result = _cli("calibrate", "--local", exported, "--remote", digits_example["model"], "--data",
                  digits_example["val"], "--out", tmp_path)
    assert result.exit_code == 2 and "exactly one of" in result.stderr


def test_float_tflite_remote_matches_keras(digits_example, tmp_path):
    import keras
    import tensorflow as tf

    from bisup.firmware_bridge.remotes import open_remote

    keras.models.load_model(digits_example["model"]).export(tmp_path / "sm", verbose=False)
    (tmp_path / "remote.tflite").write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm")).convert())
    x = np.load(digits_example["val"])["x"][:40]
    a, b = open_remote(tmp_path / "remote.tflite").predict(x), open_remote(digits_example["model"]).predict(x)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.allclose(a.sum(axis=1), 1.0)


def test_savedmodel_remote_and_a_remote_with_the_wrong_input_shape(digits_example, tmp_path):
    import keras

    from bisup.firmware_bridge.remotes import RemoteError, open_remote

    keras.models.load_model(digits_example["model"]).export(tmp_path / "sm", verbose=False)
    x = np.load(digits_example["val"])["x"][:20]
    np.testing.assert_allclose(open_remote(tmp_path / "sm").predict(x), open_remote(digits_example["model"]).predict(x),
                               atol=1e-5)
    wide = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    wide.save(tmp_path / "wide.keras")
    with pytest.raises(RemoteError, match=r"wide.keras failed on inputs of shape \(8, 8, 1\)"):
        open_remote(tmp_path / "wide.keras").predict(x)


def test_tradeoff_shows_accuracy_against_remote_calls_and_in_risk_mode_the_bound(exported, digits_example, tmp_path):
    from bisup.calibration.plot import tradeoff
    from bisup.firmware_bridge.remotes import open_remote

    remote = open_remote(digits_example["model"])
    for mode, panels in ((calibrate.Mode("budget", 0.3), 2), (calibrate.Mode("risk", 0.05), 3)):
        result = calibrate.calibrate(exported, remote, digits_example["val"], mode)
        drawn = tradeoff(result, tmp_path / f"{mode.kind}.png")
        assert len(drawn["panels"]) == panels
        assert drawn["panels"][1] == "accuracy against remote calls"
        assert f"int8 {result.chosen.threshold_int8}" in drawn["chosen_label"]
        assert (tmp_path / f"{mode.kind}.png").read_bytes()[:4] == b"\x89PNG"
    assert drawn["panels"][2] == "risk: certified against observed"
