"""Simulated validation draws for comparing risk procedures (used by tests and bench/risk_modes.py).

A population is a million (int8 confidence, correct) pairs from a model of a local classifier;
its true selective risk at every threshold is known from the whole population, so each draw's
certified threshold can be judged: a violation when its true risk exceeds the target, and its
coverage against the best valid threshold's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bisup.calibration import risk_control
from bisup.calibration.risk_control import NEVER_TRUST, Tally


def _code(p: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """An int8 confidence code for a confidence p in [lo, hi], saturating at 127 as int8 softmax does."""
    return np.clip(np.round((p - lo) / (hi - lo) * 256 - 128), -128, 127).astype(int)


def _population(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if kind == "calibrated":  # ~89% accurate, confidence mass near 1, 1% label noise at the top
        p = 1 - rng.beta(0.6, 5.0, n)
        return _code(p), rng.random(n) < np.minimum(p, 0.99)
    if kind == "overconfident":  # ~84% accurate, accuracy p^3 below confidence, 29% in the top code
        p = 1 - rng.beta(0.4, 6.0, n)
        return _code(p), rng.random(n) < np.minimum(p ** 3, 0.985)
    if kind == "linear":  # accuracy rising linearly over uniformly spread codes: a shallow risk curve
        conf = rng.integers(-128, 128, n)
        return conf, rng.random(n) < 0.55 + 0.45 * (conf + 128) / 255
    if kind == "noise-floor":  # 3% errors even at the top, which few inputs reach: the strictest tests fail
        p = 1 - rng.beta(1.0, 4.0, n)
        return _code(p, 0.15, 1.0), rng.random(n) < np.minimum(p, 0.97)
    raise ValueError(kind)


KINDS = ("calibrated", "overconfident", "linear", "noise-floor")


@dataclass
class Population:
    confidence: np.ndarray
    correct: np.ndarray
    true_risk: np.ndarray  # per CODES
    coverage: np.ndarray  # per CODES
    joint_risk: np.ndarray  # per CODES: fraction of all inputs accepted and wrong

    @classmethod
    def make(cls, kind: str, seed: int = 0, n: int = 1_000_000) -> Population:
        conf, correct = _population(kind, n, np.random.default_rng(seed))
        t = Tally.of(conf, correct)
        return cls(conf, correct, np.where(t.accepted > 0, t.wrong / np.maximum(t.accepted, 1), 0.0),
                   t.accepted / n, t.wrong / n)

    def best_coverage(self, max_risk: float) -> float:
        """The coverage of the loosest threshold whose true risk is within the target."""
        return float(self.coverage[self.true_risk <= max_risk].max())

    def at(self, threshold: int, table: np.ndarray) -> float:
        return 0.0 if threshold == NEVER_TRUST else float(table[threshold + 128])


@dataclass
class Result:
    violations: float  # share of draws whose certified threshold has true risk above the target
    coverage_ratio: float  # mean coverage over draws / best valid coverage
    none: float  # share of draws that certified nothing
    joint_risk: float  # mean over draws of the accepted-and-wrong fraction


def simulate(population: Population, procedure: str, max_risk: float, delta: float, n: int, draws: int,
             seed: int = 1) -> Result:
    """Draw ``draws`` validation sets of ``n`` and run ``procedure`` (or ``conformal``) on each."""
    rng = np.random.default_rng(seed)
    chosen = []
    for _ in range(draws):
        s = rng.choice(len(population.confidence), n, replace=False)
        conf, correct = population.confidence[s], population.correct[s]
        chosen.append(risk_control.conformal(conf, correct, max_risk) if procedure == "conformal"
                      else risk_control.certify(procedure, conf, correct, max_risk, delta))
    risk = np.array([population.at(t, population.true_risk) for t in chosen])
    coverage = np.array([population.at(t, population.coverage) for t in chosen])
    joint = np.array([population.at(t, population.joint_risk) for t in chosen])
    return Result(float((risk > max_risk).mean()), float(coverage.mean() / population.best_coverage(max_risk)),
                  float((np.array(chosen) == NEVER_TRUST).mean()), float(joint.mean()))

