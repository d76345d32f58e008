"""Each in-graph supervisor against its numpy reference, and the temperature rule."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bisup.converters import scores, supervisors, temperature
from bisup.converters.errors import ConversionError


def _probs(rng, n=64, k=10, ties=False):
    logits = rng.normal(size=(n, k)) * 3
    if ties:  # copy the top logit onto a neighbour in half the rows: their margin must be exactly 0
        rows = np.arange(n // 2)
        top = logits[rows].argmax(axis=1)
        logits[rows, (top + 1) % k] = logits[rows, top]
    return scores.softmax(logits).astype(np.float32), logits.astype(np.float32)


@pytest.mark.parametrize("kind", sorted(supervisors.BUILTIN))
@pytest.mark.parametrize("ties", [False, True])
def test_layer_matches_numpy_reference(kind, ties):
    probs, logits = _probs(np.random.default_rng(1), ties=ties)
    layer = supervisors.resolve(kind)
    got = np.asarray(layer(keras.ops.convert_to_tensor(probs), logits=keras.ops.convert_to_tensor(logits)))
    assert got.shape == (len(probs), 1)
    np.testing.assert_allclose(got[:, 0], supervisors.reference(kind, probs), atol=2e-5)


def test_margin_is_zero_for_tied_top_two():
    probs = np.array([[0.4, 0.4, 0.2], [0.7, 0.2, 0.1]], dtype=np.float32)
    got = np.asarray(supervisors.Margin()(keras.ops.convert_to_tensor(probs)))[:, 0]
    np.testing.assert_allclose(got, [0.0, 0.5], atol=1e-6)


def test_confidences_rank_certain_above_uniform():
    certain = np.eye(4, dtype=np.float32)[:1]
    uniform = np.full((1, 4), 0.25, dtype=np.float32)
    for kind in supervisors.BUILTIN:
        hi, lo = supervisors.reference(kind, certain)[0], supervisors.reference(kind, uniform)[0]
        assert hi == pytest.approx(1.0) and lo < hi, kind


def test_unknown_supervisor_names_the_choices():
    with pytest.raises(ConversionError, match="max-softmax, margin, entropy, deepgini"):
        supervisors.resolve("confidence-of-doom")


def test_custom_supervisor_from_file(tmp_path):
    source = tmp_path / "mysup.py"
    source.write_text(
        "import keras\n"
        "class Top(keras.layers.Layer):\n"
        "    def call(self, probs):\n"
        "        return keras.ops.max(probs, axis=-1)\n"
    )
    layer = supervisors.resolve(f"{source}:Top")
    assert supervisors.kind_of(layer) == "Top"
    with pytest.raises(ConversionError, match="has no supervisor 'Nope'"):
        supervisors.resolve(f"{source}:Nope")


def test_temperature_rises_until_confidences_stop_saturating():
    rng = np.random.default_rng(0)
    sharp = rng.normal(size=(500, 10))
    sharp[np.arange(500), rng.integers(0, 10, 500)] += 14  # a very confident model
    chosen = temperature.choose(sharp, "max-softmax")
    assert chosen > 1
    conf = supervisors.reference("max-softmax", scores.softmax(sharp, chosen))
    assert temperature.saturated_fraction(conf) <= temperature.MAX_SATURATED
    previous = temperature.GRID[temperature.GRID.index(chosen) - 1]
    conf_before = supervisors.reference("max-softmax", scores.softmax(sharp, previous))
    assert temperature.saturated_fraction(conf_before) > temperature.MAX_SATURATED


def test_temperature_is_one_for_an_unsure_model_and_custom_layers():
    logits = np.random.default_rng(0).normal(size=(200, 10))
    assert temperature.choose(logits, "margin") == 1.0
    assert temperature.choose(logits * 100, "MyLayer") == 1.0
