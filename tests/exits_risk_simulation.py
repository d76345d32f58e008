"""Simulated calibration draws for the multi-exit risk mode (used by tests and bench/risk_exits.py).

A population is a million inputs through a three-exit model: each input has a difficulty, each exit a
correctness and an int8 confidence. Its true loss (early answer wrong where the last exit is right,
among early answers), early share and relay share at every shared threshold come from the whole
population, so each draw's choice can be judged: a violation when its true loss exceeds the target,
a budget violation when its true relay share exceeds the remote budget, and its early share against
the best valid threshold's (the loosest whose true loss is within the target, chosen with hindsight).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from risk_simulation import _code
from scipy.stats import binomtest

from bisup.calibration import exits_risk
from bisup.calibration.exits_risk import RiskTarget
from bisup.calibration.risk_control import CODES, NEVER_TRUST


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _population(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(3, n)`` confidence codes and correctness."""
    z = rng.normal(size=n)  # difficulty
    skill = np.array([0.3, 1.3, 2.6])[:, None]  # ~56%, 74%, 88% accurate
    p = _sigmoid(skill - 1.5 * z)
    if kind == "nested":  # one uniform per input: an exit right implies every later exit right
        correct = rng.random(n) < p
    elif kind == "independent":  # each exit errs on its own: the last is sometimes wrong where an early one is right
        correct = rng.random((3, n)) < p
    else:
        raise ValueError(kind)
    noise = {"nested": 0.6, "independent": 0.6}[kind]
    confidence = _code(_sigmoid(skill - 1.5 * z + rng.normal(scale=noise, size=(3, n)) + 0.8))  # overconfident
    return confidence, correct


KINDS = ("nested", "independent")


@dataclass
class Population:
    confidence: np.ndarray
    correct: np.ndarray
    true_risk: np.ndarray  # per CODES
    early: np.ndarray  # per CODES: share answered at an early exit
    relayed: np.ndarray  # per CODES: share relayed

    @classmethod
    def make(cls, kind: str, seed: int = 0, n: int = 1_000_000) -> Population:
        conf, correct = _population(kind, n, np.random.default_rng(seed))
        t = exits_risk.gap_tally(conf, correct)
        return cls(conf, correct, np.where(t.accepted > 0, t.wrong / np.maximum(t.accepted, 1), 0.0),
                   t.accepted / n, exits_risk.relays(conf) / n)

    def best_early(self, max_risk: float) -> float:
        """The early share of the loosest threshold whose true loss is within the target."""
        return float(self.early[self.true_risk <= max_risk].max())

    def at(self, threshold: int, table: np.ndarray, never: float = 0.0) -> float:
        return never if threshold == NEVER_TRUST else float(table[int(np.flatnonzero(CODES == threshold)[0])])


@dataclass
class Result:
    draws: int
    violations: int  # draws whose deployed threshold's true loss exceeds the target
    budget_violations: int  # draws whose deployed threshold's true relay share exceeds the remote budget
    early_ratio: float  # mean early share over draws / the best valid threshold's
    none: float  # share of draws that deployed nothing

    def interval(self, count: int) -> tuple[float, float]:
        """95% Clopper-Pearson interval of a violation rate."""
        ci = binomtest(count, self.draws).proportion_ci(0.95)
        return float(ci.low), float(ci.high)


def choices(population: Population, target: RiskTarget, n: int, draws: int, seed: int = 1) -> list[int]:
    """The threshold deployed on each of ``draws`` calibration sets of ``n``."""
    rng = np.random.default_rng(seed)
    chosen = []
    for _ in range(draws):
        s = rng.choice(population.confidence.shape[1], n, replace=False)
        chosen.append(exits_risk.choose(population.confidence[:, s], population.correct[:, s], target))
    return chosen


def hardest_budget(population: Population, target: RiskTarget, n: int, draws: int) -> float:
    """A remote budget at the true relay share of the median unbudgeted choice: about half the draws are near
    its edge, where a bound that is too optimistic would show."""
    chosen = [t for t in choices(population, replace(target, max_remote_fraction=None), n, draws, seed=99)
              if t != NEVER_TRUST]
    return population.at(int(np.median(chosen)), population.relayed, 1.0)


def simulate(population: Population, target: RiskTarget, n: int, draws: int, seed: int = 1) -> Result:
    """Draw ``draws`` calibration sets of ``n`` and judge each deployed threshold on the population."""
    chosen = choices(population, target, n, draws, seed)
    risk = np.array([population.at(t, population.true_risk) for t in chosen])
    relayed = np.array([population.at(t, population.relayed) for t in chosen])
    early = np.array([population.at(t, population.early) for t in chosen])
    deployed = np.array(chosen) != NEVER_TRUST
    over_budget = deployed & (relayed > (target.max_remote_fraction if target.max_remote_fraction else 1.0))
    return Result(draws, int((risk > target.max_risk).sum()), int(over_budget.sum()),
                  float(early.mean() / population.best_early(target.max_risk)), float((~deployed).mean()))
