"""Exit policies told apart on synthetic outcomes (issue 21): no model is trained, each test takes seconds.

A simulated three-exit population where exit 2's own confidence says little about whether exit 2 is right,
but exit 1's confidence does: the learned (EENet) scorer sees every confidence so far, the per-exit threshold
only its own, so at equal budgets the learned policy must win by more than the paired interval's noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from bisup.calibration import exits as policy
from bisup.calibration import intervals
from bisup.calibration.exits import ExitOutcomes
from bisup.cli.tables import exit_margin_text, exit_rows_table

CLASSES = 4
MACS = [100, 600, 1000]


def _code(z: np.ndarray) -> np.ndarray:
    return np.clip(np.round(z * 40), -128, 127).astype(np.int64)


def _population(n: int, seed: int) -> ExitOutcomes:
    """Exit ``e`` is right with probability rising with an input's ease; confidences of exits 1 and 3 track the
    ease, exit 2's barely does. The remote is always right."""
    rng = np.random.default_rng(seed)
    ease = rng.normal(size=n)
    right = rng.random((3, n)) < 1 / (1 + np.exp(-(np.array([[-0.5], [1.0], [2.0]]) + 2.5 * ease)))
    confidence = np.stack([_code(ease + rng.normal(0, 0.4, n)), _code(0.2 * ease + rng.normal(0, 1, n)),
                           _code(ease + rng.normal(0, 0.4, n))])
    y = rng.integers(0, CLASSES, n)
    labels = np.where(right, y, (y + 1) % CLASSES)
    scores = [np.column_stack([c, np.full((n, CLASSES - 1), -128)]) for c in confidence]
    return ExitOutcomes(labels, confidence, scores, y, np.stack([y] * 3), np.ones((3, n), bool), MACS, [64, 96, 128])


@pytest.fixture(scope="module")
def chosen() -> dict:
    """Both policies chosen on one draw of 3,000 for 50% of the MACs and 20% remote calls, and applied to another."""
    val, test = _population(3000, 0), _population(6000, 1)
    found = {kind: policy.search(val, kind, 0.5 * MACS[-1], 0.2)[0] for kind in ("thresholds", "learned")}
    return {"test": test, "results": {kind: policy.apply(p, test) for kind, p in found.items()}}


def test_the_learned_policy_beats_per_exit_thresholds_by_more_than_the_noise(chosen):
    """Fails if the scorers stop using earlier exits' confidences (or are fitted worse): the margin's paired
    interval then reaches 0."""
    test, results = chosen["test"], chosen["results"]
    right = {kind: r.labels == test.y for kind, r in results.items()}
    margin = intervals.paired_margin(right["learned"], right["thresholds"])
    assert margin["ci95"][0] > 0, margin
    for r in results.values():  # at equal budgets: both within them on fresh inputs, up to sampling
        fig = r.figures(test.y)
        assert fig["mean_device_macs"] <= 0.5 * MACS[-1] * 1.05 and fig["remote_fraction"] <= 0.2 * 1.1, fig


def _staircase(n: int) -> ExitOutcomes:
    """One early exit that never helps and a last exit right exactly when its confidence is high; the remote is
    always right, so the best policy relays as many of the low-confidence inputs as the remote budget allows."""
    conf = np.arange(n) % 256 - 128
    y = np.zeros(n, int)
    labels = np.stack([np.ones(n, int), np.where(conf >= 0, 0, 1)])
    return ExitOutcomes(labels, np.stack([np.full(n, -128), conf]), [np.zeros((n, 2), int)] * 2, y,
                        np.zeros((2, n), int), np.ones((2, n), bool), [10, 100], [64, 64])


def test_the_search_spends_the_remote_budget_the_coarse_grid_left():
    """Ten quantiles step by 11% of the inputs: the grid alone relays 22% under a 30% budget; refined, 29-30%."""
    o = _staircase(2560)
    found, result = policy.search(o, "thresholds", 100, 0.3)
    assert 0.29 <= result.relayed.mean() <= 0.3, found


def test_a_cluster_interval_does_not_count_copies_as_inputs():
    """15 copies of 360 originals carry the information of 360 inputs, not 5,400."""
    right = np.random.default_rng(0).random(360) < 0.85
    copies, groups = np.repeat(right, 15), np.repeat(np.arange(360), 15)
    alone, clustered, naive = (intervals.interval(right), intervals.interval(copies, groups),
                               intervals.interval(copies))
    assert np.diff(clustered)[0] == pytest.approx(np.diff(alone)[0], rel=0.15)
    assert np.diff(clustered)[0] > 3 * np.diff(naive)[0]


def test_a_paired_margin_of_identical_answers_is_exactly_zero():
    right = np.random.default_rng(1).random(500) < 0.8
    assert intervals.paired_margin(right, right) | {"ci95": None} == {
        "margin": 0.0, "ci95": None, "inputs": 500, "a_only_right": 0, "b_only_right": 0}
    assert intervals.paired_margin(right, right)["ci95"] == [0.0, 0.0]


def _row(name: str, accuracy: float) -> dict:
    return {"name": name, "accuracy": accuracy, "remote_fraction": 0.2, "rejected_fraction": 0.0,
            "mean_device_macs": 400.0, "mean_bytes_sent": 12.8, "bytes_per_relay": 64.0,
            "ci95": {"accuracy": [accuracy - 0.01, accuracy + 0.01], "remote_fraction": [0.19, 0.21],
                     "mean_device_macs": [390.0, 410.0]}}


@pytest.mark.parametrize(("ci", "verdict"), [([0.002, 0.01], "excludes 0"), ([-0.001, 0.01], "includes 0")])
def test_the_table_prints_every_interval_and_says_whether_the_margin_is_shown(ci, verdict):
    result = {"rows": [_row("per-exit thresholds", 0.82), _row("learned (EENet)", 0.826)],
              "margin": {"a": "learned (EENet)", "b": "per-exit thresholds", "margin": 0.006, "ci95": ci,
                         "inputs": 5400, "a_only_right": 90, "b_only_right": 58},
              "sizes": {"val": 5385, "test": 5400, "test_originals": 360}, "task": "hard-digits",
              "deployed": {"inputs": 400, "agreement": {"learned (EENet)": 1.0, "per-exit thresholds": 1.0}}}
    table = exit_rows_table(result["rows"])
    assert "82.60 % [81.60, 83.60]" in table and "20.0 % [19.0, 21.0]" in table and "400 [390, 410]" in table
    text = exit_margin_text(result)
    assert f"+0.60 pp, paired 95% CI [{100 * ci[0]:+.2f}, +1.00] ({verdict}" in text
    assert "5,385 validation and 5,400 test inputs (360 originals" in text and "agreed on 100.0 %" in text


def test_an_unknown_task_is_named_with_the_choices():
    from bisup.examples import demo_exits

    with pytest.raises(policy.PolicyError, match="--task 'mnist' is not a task; choose one of digits, hard-digits"):
        demo_exits.task("mnist")


def test_hard_digits_is_deterministic_large_and_drawn_from_disjoint_originals():
    """Thousands of validation and test inputs, the same for a seed, and no test digit seen in training in another
    pose: each split's inputs are redrawings of that split's own originals (``digits.splits``)."""
    from bisup.examples import digits, hard_digits

    parts, originals = hard_digits.grouped_splits(0), digits.splits(0)
    assert {k: len(v[1]) for k, v in parts.items()} == {"train": 10780, "val": 5385, "test": 5400}
    for name, (x, y, groups) in parts.items():
        assert x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
        assert np.array_equal(y, originals[name][1][groups])  # every copy keeps its original's label
    images = originals["test"][0][:40, ..., 0]
    first, again = (hard_digits.redraw(images, np.random.default_rng(7)) for _ in range(2))
    assert np.array_equal(first, again) and not np.array_equal(first, images)
    flat = {name: {row.tobytes() for row in originals[name][0].reshape(len(originals[name][0]), -1)}
            for name in originals}
    assert not flat["train"] & flat["test"] and not flat["train"] & flat["val"]
