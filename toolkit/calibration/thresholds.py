"""Choose the local (int8) and remote thresholds from validation outcomes.

For every candidate local threshold ``t`` (each int8 code, plus 128 = never trust locally) the
remote threshold is chosen by the remote rule among the inputs ``t`` relays. The system is then
scored as deployed: trusted inputs get the local label, relayed ones the remote label when the
remote supervisor accepts it, and the local label as a fallback when it rejects it. The mode picks
one ``t`` from that sweep:

- budget: the most accurate point with at most the given fraction of remote calls;
- target accuracy: the fewest remote calls that reach the target system accuracy;
- risk guarantee: the most local answers whose error rate is bounded (see ``choose_risk``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import beta

from bisup.calibration import risk_control
from bisup.converters.artefacts import NEVER_TRUST, Decision, trusted
from bisup.converters.errors import BisupError


class ThresholdError(BisupError, ValueError):
    """A target that the data cannot reach or cannot certify; the message says what can."""


@dataclass(frozen=True)
class Outcomes:
    """Per-sample validation outcomes: local int8 confidence and labels, remote label and score."""

    confidence_int8: np.ndarray
    local_pred: np.ndarray
    remote_pred: np.ndarray
    remote_confidence: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class RemoteRule:
    """Remote supervisor rule: at most ``max_reject`` of all inputs rejected, or a target accuracy
    of the accepted remote answers (``target_accuracy``)."""

    max_reject: float | None = 0.005
    target_accuracy: float | None = None


@dataclass(frozen=True)
class CostModel:
    """Price of one remote call (any currency) and its added latency in seconds."""

    price_per_call: float = 1.0
    latency_s: float = 0.0


DEFAULT_RULE = RemoteRule()
DEFAULT_COST = CostModel()


@dataclass(frozen=True)
class Point:
    """One operating point and what it achieves on the validation set."""

    threshold_int8: int
    remote_threshold: float
    accuracy: float
    remote_fraction: float
    rejected_fraction: float
    accepted_accuracy: float
    local_accepted_error: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def answers(o: Outcomes, t: int, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The label the device ends up with, and the relayed and rejected masks, at ``(t, r)``."""
    decision = Decision(t, r)
    relayed = ~decision.trusted(o.confidence_int8)
    rejected = relayed & ~decision.accepted(o.remote_confidence)
    label = np.where(relayed & ~rejected, o.remote_pred, o.local_pred)
    return label, relayed, rejected


def figures(labels: np.ndarray, y: np.ndarray, relayed: np.ndarray, rejected: np.ndarray) -> dict:
    """System figures of the answers a device ended up with; cost saved is against remote-only,
    which calls the remote for every input. Shared by calibration, the demo and HIL reports."""
    correct = np.asarray(labels) == np.asarray(y)
    relayed, rejected = np.asarray(relayed, dtype=bool), np.asarray(rejected, dtype=bool)
    return {
        "accuracy": float(correct.mean()),
        "remote_fraction": float(relayed.mean()),
        "rejected_fraction": float(rejected.mean()),
        "accepted_accuracy": float(correct[~rejected].mean()) if (~rejected).any() else 0.0,
        "cost_saved": float(1.0 - relayed.mean()),
    }


def evaluate(o: Outcomes, t: int, r: float) -> Point:
    label, relayed, rejected = answers(o, t, r)
    local = ~relayed
    system = figures(label, o.y, relayed, rejected)
    return Point(
        threshold_int8=int(t),
        remote_threshold=float(r),
        accuracy=system["accuracy"],
        remote_fraction=system["remote_fraction"],
        rejected_fraction=system["rejected_fraction"],
        accepted_accuracy=system["accepted_accuracy"],
        local_accepted_error=float((o.local_pred[local] != o.y[local]).mean()) if local.any() else None,
    )


def remote_threshold(o: Outcomes, relayed: np.ndarray, rule: RemoteRule) -> float:
    """The remote threshold the rule gives for the inputs ``relayed`` sends to the remote."""
    if rule.target_accuracy is not None:
        return _threshold_for_accuracy(o, relayed, rule.target_accuracy)
    scores = np.sort(o.remote_confidence[relayed])
    if rule.max_reject is None or len(scores) == 0:
        return -math.inf
    allowed = int(math.floor(rule.max_reject * len(o) + 1e-9))
    return float(scores[allowed]) if allowed < len(scores) else math.inf


def _threshold_for_accuracy(o: Outcomes, relayed: np.ndarray, target: float) -> float:
    conf = o.remote_confidence[relayed]
    right = (o.remote_pred == o.y)[relayed]
    for candidate in np.unique(conf):
        keep = conf >= candidate
        if right[keep].mean() >= target:
            return float(candidate)
    return math.inf  # no accepted remote answer is accurate enough: reject them all


def sweep(o: Outcomes, rule: RemoteRule) -> list[Point]:
    """Every operating point, in increasing local threshold (so increasing remote fraction)."""
    candidates = sorted({int(c) for c in np.unique(o.confidence_int8)} | {-128, NEVER_TRUST})
    return [evaluate(o, t, remote_threshold(o, ~trusted(o.confidence_int8, t), rule)) for t in candidates]


def choose_budget(points: list[Point], max_remote_fraction: float) -> Point:
    """The most accurate point within the remote-call budget (fewer calls on ties)."""
    within = [p for p in points if p.remote_fraction <= max_remote_fraction + 1e-12]
    return max(within, key=lambda p: (p.accuracy, -p.remote_fraction))


def choose_budget_guaranteed(points: list[Point], samples: int, max_remote_fraction: float, delta: float) -> Point:
    """The most accurate point whose relay rate is certified within the budget: the one-sided (1 - delta)
    Clopper-Pearson upper bound of its relay count on ``samples`` inputs is at most ``max_remote_fraction``.

    One bound suffices, without a union over thresholds: the relay rate is monotone in the threshold, so
    every point that passes lies at or below the largest threshold that passes, and that one deploys a
    rate above the budget only if the bound at the first threshold whose true rate exceeds it failed,
    which happens with probability at most delta.
    """
    if not (0 < delta < 1 and 0 <= max_remote_fraction <= 1):
        raise ThresholdError(f"delta {delta} must lie strictly between 0 and 1, the budget {max_remote_fraction} "
                             "in 0..1")
    within = [p for p in points
              if clopper_pearson_upper(round(p.remote_fraction * samples), samples, delta) <= max_remote_fraction]
    if not within:
        floor = clopper_pearson_upper(0, samples, delta)
        raise ThresholdError(f"with {samples} validation samples no budget below {floor:.2%} can be certified at "
                             f"confidence {1 - delta:.0%}; raise --max-remote-fraction or use more samples")
    return max(within, key=lambda p: (p.accuracy, -p.remote_fraction))


def budget_guarantee_text(max_remote_fraction: float, delta: float) -> str:
    return (f"With probability at least {1 - delta:.0%} over the draw of the validation set, the deployed fraction "
            f"of inputs relayed to the remote is at most {max_remote_fraction:.2%}, provided validation and "
            "deployment inputs are exchangeable. A Clopper-Pearson upper bound on the relay rate; the rate is "
            "monotone in the threshold, so one bound covers the choice.")


def choose_target(points: list[Point], target_accuracy: float) -> Point:
    """The fewest remote calls that reach ``target_accuracy``; say the best achievable if none does."""
    reaching = [p for p in points if p.accuracy >= target_accuracy - 1e-12]
    if not reaching:
        best = max(points, key=lambda p: (p.accuracy, -p.remote_fraction))
        raise ThresholdError(
            f"target accuracy {target_accuracy:.4f} is unreachable on this data; the best achievable is "
            f"{best.accuracy:.4f} at {best.remote_fraction:.1%} remote calls"
        )
    return min(reaching, key=lambda p: (p.remote_fraction, -p.accuracy))


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) Clopper-Pearson upper bound on an error rate."""
    if n == 0 or errors >= n:
        return 1.0
    return float(beta.ppf(1 - delta, errors + 1, n - errors))


def guarantee_text(max_risk: float, delta: float, samples: int, procedure: str = risk_control.DEFAULT_PROCEDURE) -> str:
    return (
        f"With probability at least {1 - delta:.0%} over the draw of the validation set, the error rate of "
        f"answers the device accepts locally is at most {max_risk:.2%}, provided validation and deployment "
        "inputs are exchangeable (e.g. i.i.d. from one distribution). "
        f"{risk_control.describe(procedure, delta, samples)}."
    )


def choose_risk(o: Outcomes, rule: RemoteRule, max_risk: float, delta: float,
                procedure: str = risk_control.DEFAULT_PROCEDURE) -> Point:
    """The threshold ``procedure`` certifies (see ``bisup.calibration.risk_control``) with its remote threshold."""
    if not (0 < max_risk < 1 and 0 < delta < 1):
        raise ThresholdError(f"risk {max_risk} and delta {delta} must both lie strictly between 0 and 1")
    needed = risk_control.samples_needed(max_risk, delta)
    if len(o) < needed:
        raise ThresholdError(
            f"the validation set has {len(o)} samples; certifying a local error of at most {max_risk:.2%} "
            f"at confidence {1 - delta:.0%} needs at least {needed}"
        )
    t = risk_control.certify(procedure, o.confidence_int8, o.local_pred == o.y, max_risk, delta)
    return evaluate(o, t, remote_threshold(o, ~trusted(o.confidence_int8, t), rule))


def cost_figures(point: Point, cost: CostModel) -> dict:
    """Cost per request against remote-only, which calls the remote for every input."""
    return {
        "cost_per_request": point.remote_fraction * cost.price_per_call,
        "remote_only_cost_per_request": cost.price_per_call,
        "cost_saved": 1.0 - point.remote_fraction,
        "mean_added_latency_s": point.remote_fraction * cost.latency_s,
    }
