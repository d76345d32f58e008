"""Certify a local threshold: the error of the answers it accepts is at most ``max_risk`` w.p. 1 - delta.

Each candidate int8 threshold ``t`` is a hypothesis "the error rate among inputs with confidence
>= t exceeds max_risk", tested with an exact binomial p-value on the validation inputs it accepts
(Learn-then-Test). Procedures differ in how they control the chance of wrongly certifying any one:

- ``auto`` (the default): ``split-fixed-sequence`` on 2,000 samples or more, ``fixed-sequence``
  below, where the ordering split is too small to find a good start (bench/risk_modes.py and
  the simulation tests measure both; the choice depends on the sample count only, not on labels).
- ``split-fixed-sequence``: a fixed fraction of the validation set, drawn with a
  fixed seed, only picks where to start, the threshold with the smallest p-value there; the rest
  tests from that start towards looser thresholds, each at level delta, stopping at the first
  failure. The order does not depend on the data it is tested on, so fixed-sequence testing needs
  no multiple-testing correction, and it starts where a test has power rather than at the
  strictest thresholds, whose handful of inputs fails on one unlucky error.
- ``fixed-sequence``: the same test on the whole set, from the strictest threshold that accepts
  enough inputs to pass at all.
- ``sgr``: Geifman & El-Yaniv's selection with guaranteed risk, a binary search with a union
  bound (delta / ceil(log2 m)) over its steps.
- ``conformal`` is not offered for deployment: conformal risk control bounds the *expected*
  fraction of all inputs answered locally and wrongly, a weaker promise than the others; the
  simulation in ``bench/risk_modes.py`` compares it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from bisup.converters.artefacts import NEVER_TRUST

PROCEDURES = ("auto", "split-fixed-sequence", "fixed-sequence", "sgr")
DEFAULT_PROCEDURE = "auto"
SPLIT_FROM = 2000  # samples: below this, auto tests on the whole set
ORDERING_FRACTION = 0.2  # of the validation set, spent on choosing where the sequence starts
ORDERING_SEED = 0  # fixed, so a calibration is reproducible and the split cannot be shopped for
CODES = np.arange(-128, 128)  # candidate thresholds, strictest last


@dataclass(frozen=True)
class Tally:
    """Per candidate threshold (``CODES``): how many validation inputs it accepts, and how many are wrong."""

    accepted: np.ndarray
    wrong: np.ndarray

    @classmethod
    def of(cls, confidence_int8: np.ndarray, correct: np.ndarray) -> Tally:
        order = np.argsort(confidence_int8, kind="stable")
        conf, wrong = np.asarray(confidence_int8)[order], ~np.asarray(correct, dtype=bool)[order]
        wrong_at_or_above = np.concatenate([np.cumsum(wrong[::-1])[::-1], [0]])
        first = np.searchsorted(conf, CODES, side="left")
        return cls(len(conf) - first, wrong_at_or_above[first])

    def p_values(self, max_risk: float) -> np.ndarray:
        """P(this few errors or fewer | the true risk is max_risk); 1 where nothing is accepted."""
        return np.where(self.accepted > 0, binom.cdf(self.wrong, np.maximum(self.accepted, 1), max_risk), 1.0)


def samples_needed(max_risk: float, delta: float) -> int:
    """The fewest accepted inputs with which even an error-free set certifies ``max_risk`` at ``delta``."""
    return math.ceil(math.log(delta) / math.log(1 - max_risk))


def _walk_looser(passed: np.ndarray, start: int) -> int:
    """Fixed-sequence testing from index ``start`` towards looser thresholds: the last one passed."""
    chosen = NEVER_TRUST
    for i in range(start, -1, -1):
        if not passed[i]:
            break
        chosen = int(CODES[i])
    return chosen


TallyOf = Callable[[np.ndarray], Tally]  # the tally of the validation inputs at these indices


def fixed_sequence(tally: Tally, max_risk: float, delta: float) -> int:
    """From the strictest threshold accepting at least ``samples_needed`` inputs, loosening."""
    testable = np.flatnonzero(tally.accepted >= samples_needed(max_risk, delta))
    if len(testable) == 0:
        return NEVER_TRUST
    return _walk_looser(tally.p_values(max_risk) <= delta, int(testable.max()))


def split_fixed_sequence(tally_of: TallyOf, n: int, max_risk: float, delta: float,
                         fraction: float = ORDERING_FRACTION, seed: int = ORDERING_SEED) -> int:
    """Start where the ordering split is most certain, then fixed-sequence on the rest (module docstring)."""
    order = np.random.default_rng(seed).permutation(n)
    head, rest = order[: int(n * fraction)], order[int(n * fraction):]
    start = int(np.argmin(tally_of(head).p_values(max_risk)))
    return _walk_looser(tally_of(rest).p_values(max_risk) <= delta, start)


def sgr(tally: Tally, max_risk: float, delta: float) -> int:
    """Binary search for the loosest passing threshold, each step at delta / ceil(log2 m)."""
    passed = tally.p_values(max_risk) <= delta / math.ceil(math.log2(len(CODES)))
    lo, hi, chosen = 0, len(CODES) - 1, NEVER_TRUST
    while lo <= hi:
        mid = (lo + hi) // 2
        if passed[mid]:
            chosen, hi = int(CODES[mid]), mid - 1
        else:
            lo = mid + 1
    return chosen


def conformal(confidence_int8: np.ndarray, correct: np.ndarray, max_joint_risk: float) -> int:
    """Conformal risk control: loosest t with (n R_n(t) + 1) / (n + 1) <= max_joint_risk.

    The loss is 1 when an input is accepted and wrong, so E[that loss] <= max_joint_risk: an
    expected fraction of all inputs, not a high-probability bound on the accepted ones' error.
    """
    tally = Tally.of(confidence_int8, correct)
    n = len(confidence_int8)
    ok = np.flatnonzero((tally.wrong + 1) / (n + 1) <= max_joint_risk)
    return int(CODES[ok.min()]) if len(ok) else NEVER_TRUST


def resolve(procedure: str, samples: int) -> str:
    """The procedure ``auto`` stands for on this many samples; any other name as given, if known."""
    if procedure not in PROCEDURES:
        raise ValueError(f"unknown risk procedure {procedure!r}; choose one of {', '.join(PROCEDURES)}")
    if procedure == "auto":
        return "split-fixed-sequence" if samples >= SPLIT_FROM else "fixed-sequence"
    return procedure


def certify_tallies(procedure: str, tally_of: TallyOf, n: int, max_risk: float, delta: float) -> int:
    """The loosest threshold ``procedure`` certifies (NEVER_TRUST if none), for any risk a ``Tally`` counts:
    ``tally_of(indices)`` tallies those of the ``n`` validation inputs (the split procedure tallies two parts)."""
    resolved = resolve(procedure, n)
    if resolved == "split-fixed-sequence":
        return split_fixed_sequence(tally_of, n, max_risk, delta)
    run = {"fixed-sequence": fixed_sequence, "sgr": sgr}[resolved]
    return run(tally_of(np.arange(n)), max_risk, delta)


def certify(procedure: str, confidence_int8: np.ndarray, correct: np.ndarray, max_risk: float,
            delta: float) -> int:
    """The loosest threshold ``procedure`` certifies for one exit's error (NEVER_TRUST if none)."""
    conf, right = np.asarray(confidence_int8), np.asarray(correct, dtype=bool)
    return certify_tallies(procedure, lambda at: Tally.of(conf[at], right[at]), len(conf), max_risk, delta)


def describe(procedure: str, delta: float, samples: int) -> str:
    """The procedure in words, for thresholds.json and the report."""
    return {
        "split-fixed-sequence": (f"Learn-then-Test: {ORDERING_FRACTION:.0%} of the validation set (seed "
                                 f"{ORDERING_SEED}) picks the starting threshold, the other "
                                 f"{1 - ORDERING_FRACTION:.0%} tests thresholds from there towards looser ones "
                                 f"with exact binomial p-values at level {delta}, stopping at the first failure"),
        "fixed-sequence": (f"Learn-then-Test: exact binomial p-values at level {delta}, tested from the strictest "
                           "testable threshold towards looser ones, stopping at the first failure"),
        "sgr": (f"SGR (Geifman & El-Yaniv): binary search with binomial tail bounds at "
                f"{delta}/{math.ceil(math.log2(len(CODES)))} per step"),
    }[resolve(procedure, samples)]
