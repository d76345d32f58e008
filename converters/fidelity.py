"""Accuracy and fidelity of the int8 export: what quantization cost, and what the board computes.

Figures compare the float Keras graph with the int8 graph as run by TFLM (the board oracle), and
TFLM with LiteRT bit for bit. The supervisor's quality is its AUROC at separating correct from
wrong predictions: a supervisor is only useful if it ranks mistakes below correct answers.
"""

from __future__ import annotations

import numpy as np

from bisup.converters.signature import CONFIDENCE, SCORES


def auroc(correct: np.ndarray, confidence: np.ndarray) -> float | None:
    """AUROC of confidence for correct-vs-wrong; None when every prediction is right (or wrong).

    The same operations, in the same order, as scikit-learn's ``roc_auc_score`` (its ROC curve without the
    collinear points, then the trapezoid rule), so the reports' figures are bit for bit what they were; importing
    ``sklearn.metrics`` (with scipy.stats and pandas) cost about 1.3 s of every export
    (tests/test_fidelity.py compares the two)."""
    if correct.all() or not correct.any():
        return None
    order = np.argsort(confidence, kind="stable")[::-1]
    scores, truth = np.asarray(confidence)[order], np.asarray(correct, dtype=np.float64)[order]
    ends = np.concatenate([np.nonzero(np.diff(scores))[0], [len(scores) - 1]])
    tps = np.cumsum(truth)[ends]
    fps = 1 + ends.astype(np.float64) - tps
    if len(fps) > 2:
        corners = np.concatenate([[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), [True]])
        tps, fps = tps[corners], fps[corners]
    tps, fps = np.concatenate([[0.0], tps]), np.concatenate([[0.0], fps])
    return float(np.trapezoid(tps / tps[-1], fps / fps[-1]))


def bitexact_fraction(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Fraction of samples whose every output is identical in ``a`` and ``b``."""
    same = np.ones(len(a[SCORES]), dtype=bool)
    for name in (SCORES, CONFIDENCE):
        same &= np.all(a[name] == b[name], axis=1)
    return float(same.mean())


def compare(float_out: dict[str, np.ndarray], tflm_out: dict[str, np.ndarray], y: np.ndarray | None) -> dict:
    """Float vs int8 (TFLM) top-1 agreement, and accuracy and AUROC when labels are given."""
    float_pred = float_out[SCORES].argmax(axis=1)
    int8_pred = tflm_out[SCORES].argmax(axis=1)
    result = {
        "int8_float_top1_agreement": float((float_pred == int8_pred).mean()),
        "float_accuracy": None,
        "int8_accuracy": None,
        "auroc_float": None,
        "auroc_int8": None,
    }
    if y is not None:
        float_ok, int8_ok = float_pred == y, int8_pred == y
        result |= {
            "float_accuracy": float(float_ok.mean()),
            "int8_accuracy": float(int8_ok.mean()),
            "auroc_float": auroc(float_ok, float_out[CONFIDENCE].reshape(-1)),
            "auroc_int8": auroc(int8_ok, tflm_out[CONFIDENCE].reshape(-1).astype(np.float64)),
        }
    return result
