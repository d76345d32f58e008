"""95% intervals for the figures of a policy on a test set, and for the margin between two policies.

A cluster (percentile) bootstrap: the test set is resampled by *group*, so inputs that are copies of one
original (``bisup.examples.hard_digits`` redraws each digit 15 times) move together and the interval is
not narrowed by copies pretending to be independent; with one group per input it is the ordinary
bootstrap. The margin between two policies is bootstrapped on the per-input *difference* (paired): both
policies answer the same inputs, and most inputs are answered alike, so the paired interval is far
narrower than two separate intervals would suggest.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def _group_sums(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the sum of ``values`` and the number of inputs."""
    _, index = np.unique(groups, return_inverse=True)
    return np.bincount(index, weights=values), np.bincount(index).astype(float)


def interval(values: np.ndarray, groups: np.ndarray | None = None, seed: int = 0) -> tuple[float, float]:
    """The 95% cluster-bootstrap interval of ``values.mean()`` (``groups``: one id per input; None: each its own)."""
    values = np.asarray(values, dtype=float)
    groups = np.arange(len(values)) if groups is None else np.asarray(groups)
    sums, counts = _group_sums(values, groups)
    weights = np.random.default_rng(seed).multinomial(len(sums), np.full(len(sums), 1 / len(sums)), RESAMPLES)
    means = (weights @ sums) / (weights @ counts)
    low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def paired_margin(a_right: np.ndarray, b_right: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same inputs, with its paired 95% interval."""
    diff = np.asarray(a_right, dtype=float) - np.asarray(b_right, dtype=float)
    low, high = interval(diff, groups)
    return {"margin": float(diff.mean()), "ci95": [low, high], "inputs": len(diff),
            "a_only_right": int((diff > 0).sum()), "b_only_right": int((diff < 0).sum())}
