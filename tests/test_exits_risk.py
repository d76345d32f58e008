"""Multi-exit risk mode over 200 simulated calibration draws of 5,000 (issue 21, item 3).

The deployed threshold must keep its promise (true loss within the target in all but delta of the
draws, with the sampling noise of 200 draws on top), keep the remote budget likewise, and keep 80% of
the best valid early share at a 10% target. A plug-in choice (the loosest threshold whose measured loss
is within the target) on the same draws must break the promise, or the simulation could not see a break.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from exits_risk_simulation import KINDS, Population, hardest_budget, simulate

from bisup.calibration import exits_risk
from bisup.calibration.exits import ExitOutcomes, PolicyError
from bisup.calibration.exits_risk import RiskTarget
from bisup.calibration.risk_control import CODES

DRAWS, N, DELTA = 200, 5000, 0.1
SLACK = 3 * (DELTA * (1 - DELTA) / DRAWS) ** 0.5  # three standard errors of a violation rate over DRAWS


@pytest.fixture(scope="module")
def populations():
    return {kind: Population.make(kind, n=400_000) for kind in KINDS}


@pytest.mark.parametrize("max_risk", [0.05, 0.10])
@pytest.mark.parametrize("kind", KINDS)
def test_the_early_answers_keep_their_promise(populations, kind, max_risk):
    result = simulate(populations[kind], RiskTarget(max_risk, DELTA), N, DRAWS)
    assert result.violations / DRAWS <= DELTA + SLACK, result
    if max_risk == 0.10:
        assert result.early_ratio >= 0.8, result


@pytest.mark.parametrize("kind", KINDS)
def test_the_remote_budget_holds_at_its_edge(populations, kind):
    target = RiskTarget(0.10, DELTA)
    budget = hardest_budget(populations[kind], target, N, 50)
    result = simulate(populations[kind], replace(target, max_remote_fraction=budget), N, DRAWS)
    assert result.budget_violations / DRAWS <= DELTA + SLACK, result
    assert result.none < 0.9, result  # the budget binds, but not always


def test_a_plug_in_choice_breaks_the_promise_the_simulation_checks(populations):
    population, rng = populations["nested"], np.random.default_rng(1)
    broken = 0
    for _ in range(DRAWS):
        s = rng.choice(population.confidence.shape[1], N, replace=False)
        tally = exits_risk.gap_tally(population.confidence[:, s], population.correct[:, s])
        within = np.flatnonzero((tally.accepted > 0) & (tally.wrong <= 0.05 * tally.accepted))
        broken += population.true_risk[within.min()] > 0.05
    assert broken / DRAWS > DELTA + SLACK


def test_the_tally_counts_the_first_sure_exit_and_the_last_exit_as_reference():
    rng = np.random.default_rng(3)
    conf, correct = rng.integers(-128, 128, (3, 300)), rng.random((3, 300)) < 0.7
    tally = exits_risk.gap_tally(conf, correct)
    for i, t in enumerate(CODES):
        above = conf[:2] >= t
        answered, first = above.any(0), above.argmax(0)
        lost = answered & ~correct[first, np.arange(300)] & correct[2]
        assert (tally.accepted[i], tally.wrong[i]) == (answered.sum(), lost.sum()), t


def _outcomes(n: int, seed: int = 0) -> ExitOutcomes:
    """Two exits on ``n`` inputs: confident early answers are right, unsure ones a coin toss."""
    rng = np.random.default_rng(seed)
    conf = rng.integers(-128, 128, (2, n))
    y = rng.integers(0, 3, n)
    early_right = (conf[0] > 60) | (rng.random(n) < 0.5)
    labels = np.stack([np.where(early_right, y, (y + 1) % 3), y])
    return ExitOutcomes(labels, conf, [np.zeros((n, 3), int)] * 2, y, np.stack([y, y]), np.ones((2, n), bool),
                        [1000, 5000], [64, 256])


def test_the_certified_policy_records_its_promise():
    o = _outcomes(3000)
    policy, result = exits_risk.certify_policy(o, RiskTarget(0.05, 0.1, "fixed-sequence"))
    assert policy.kind == "thresholds" and policy.relay and len(set(policy.thresholds)) == 1
    assert 40 <= policy.thresholds[0] <= 80  # about where the coin tosses start
    g = exits_risk.guarantee(RiskTarget(0.05, 0.1, "fixed-sequence"), o)
    assert (g["max_local_error"], g["delta"], g["samples"], g["procedure"]) == (0.05, 0.1, 3000, "fixed-sequence")
    assert "at most 5.00% more often than the full network's" in g["statement"]
    assert exits_risk.achieved(o, result)["early_loss"] <= 0.05


def test_an_error_no_policy_meets_names_the_smallest_the_data_supports():
    with pytest.raises(PolicyError, match=r"no early exit can be certified at --max-local-error 0.10% .* the "
                                          r"smallest the data supports is \d+\.\d%"):
        exits_risk.certify_policy(_outcomes(3000), RiskTarget(0.001, 0.1))


def test_a_remote_budget_the_certified_policy_exceeds_is_named():
    with pytest.raises(PolicyError, match="still relays .* above --max-remote-fraction 1.00%; raise either"):
        exits_risk.certify_policy(_outcomes(3000), RiskTarget(0.05, 0.1, max_remote_fraction=0.01))


def test_no_remote_budget_means_the_last_exit_answers_the_rest():
    policy, result = exits_risk.certify_policy(_outcomes(3000), RiskTarget(0.05, 0.1, max_remote_fraction=0))
    assert not policy.relay and not result.relayed.any()
