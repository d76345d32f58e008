"""fidelity.auroc against scikit-learn's roc_auc_score, which it replaces to spare the export sklearn's import."""

from __future__ import annotations

import numpy as np
import pytest

from bisup.converters.fidelity import auroc


def _cases(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Float32 confidences (the float supervisor), int8 codes as float64 (many ties), and a few tiny sets."""
    cases = []
    for size in (2, 3, 5, 17, 256, 1000):
        for _ in range(20):
            correct = rng.random(size) < rng.uniform(0.05, 0.95)
            floats = rng.random(size).astype(np.float32)
            codes = rng.integers(-128, 128, size).astype(np.float64)
            few = rng.integers(0, 4, size).astype(np.float64)
            cases += [(correct, floats), (correct, codes), (correct, few)]
    return cases


def test_auroc_equals_sklearn_bit_for_bit():
    from sklearn.metrics import roc_auc_score

    for correct, confidence in _cases(np.random.default_rng(0)):
        expected = None if correct.all() or not correct.any() else float(roc_auc_score(correct.astype(int),
                                                                                       confidence))
        assert auroc(correct, confidence) == expected


@pytest.mark.parametrize("correct", [np.ones(4, dtype=bool), np.zeros(4, dtype=bool)])
def test_auroc_is_none_with_one_class(correct):
    assert auroc(correct, np.arange(4, dtype=np.float32)) is None
