"""Risk mode for a multi-exit deployment: early answers certified against the full network (issue 21).

The promise, with probability at least 1 - delta over the draw of the calibration set: among the
inputs the device answers at an early exit (any exit before its last stage), the share answered
wrongly where the full network (the last exit) would have answered rightly is at most ``max_risk``.
That loss is 0 or 1 per input and bounds the accuracy gap from above (CALM's consistency and Jazbec
et al.'s performance gap, in their binary form), so exact binomial p-values apply and the machinery of
``bisup.calibration.risk_control`` is reused as is, only with another tally.

The family is one parameter: a single int8 confidence threshold ``t`` shared by every exit, ordered
from strict (nothing answered early) to loose (-128), fixed before the data is seen. The device answers
at the first exit whose confidence reaches ``t``; an input the last exit is unsure of too is relayed.
Answers at the last exit, and the fallback after a rejected or lost relay, are the full network's
own: they cost the promise nothing. Relays only fall as ``t`` loosens, so a remote budget is certified
as for one exit, with one Clopper-Pearson bound (``thresholds.choose_budget_guaranteed`` explains why).
Learned (EENet) scorers are fitted on the calibration labels, so they cannot be tested on them: risk
mode certifies the per-exit threshold rule only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bisup.calibration import risk_control
from bisup.calibration.exits import (
    DEFAULT_LINK,
    ExitOutcomes,
    LinkCost,
    PolicyError,
    Progress,
    Result,
    apply,
    best_split,
    labelled_outcomes,
)
from bisup.calibration.risk_control import CODES, NEVER_TRUST, Tally
from bisup.calibration.thresholds import clopper_pearson_upper
from bisup.converters.artefacts import NEVER, Policy
from bisup.firmware_bridge.exits_model import StagedModel
from bisup.firmware_bridge.remotes import RemoteModel

RISK = "early answer wrong where the full network (last exit) is right, among the inputs answered at early exits"


@dataclass(frozen=True)
class RiskTarget:
    """What ``bisup calibrate --max-local-error`` asks of a multi-exit export."""

    max_risk: float
    delta: float = 0.1
    procedure: str = risk_control.DEFAULT_PROCEDURE
    max_remote_fraction: float | None = None  # None: relays are not bounded, only reported

    def check(self) -> None:
        """One line naming the option that is out of range."""
        if not 0 < self.max_risk < 1:
            raise PolicyError(f"--max-local-error {self.max_risk} must lie strictly between 0 and 1")
        if not 0 < self.delta < 1:
            raise PolicyError(f"--delta {self.delta} must lie strictly between 0 and 1")
        if self.max_remote_fraction is not None and not 0 <= self.max_remote_fraction <= 1:
            raise PolicyError(f"--max-remote-fraction {self.max_remote_fraction} must lie in 0..1")
        risk_control.resolve(self.procedure, 0)


def _at_or_above(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per candidate threshold (``CODES``), the summed weight of the int8 codes at or above it."""
    hist = np.bincount(np.asarray(codes, dtype=np.int64) + 128, weights=weights.astype(float), minlength=len(CODES))
    return np.rint(np.cumsum(hist[::-1])[::-1]).astype(np.int64)


def gap_tally(confidence: np.ndarray, correct: np.ndarray) -> Tally:
    """Per shared threshold: inputs answered at an early exit, and how many of them are lost (wrong there, right
    at the last exit). ``confidence`` and ``correct`` are ``(E, N)``.

    Exit ``e`` answers for thresholds in (max of the earlier exits' confidences, its own], so each exit adds
    its losses over that interval: two cumulative histograms, O(E N) rather than one pass per threshold."""
    early = np.asarray(confidence[:-1], dtype=np.int64)
    lost = ~np.asarray(correct[:-1], bool) & np.asarray(correct[-1], bool)
    reached = np.maximum.accumulate(early, axis=0)
    wrong = _at_or_above(early[0], lost[0])
    for e in range(1, len(early)):
        first_here = lost[e] & (early[e] > reached[e - 1])
        wrong += _at_or_above(early[e], first_here) - _at_or_above(reached[e - 1], first_here)
    return Tally(_at_or_above(reached[-1], np.ones(early.shape[1])), wrong)


def relays(confidence: np.ndarray) -> np.ndarray:
    """Per shared threshold, the inputs no exit is sure of: those the device relays."""
    top = np.asarray(confidence).max(axis=0)
    return len(top) - _at_or_above(top, np.ones(len(top)))


def certify_threshold(confidence: np.ndarray, correct: np.ndarray, target: RiskTarget) -> int:
    """The loosest shared threshold the procedure certifies (``NEVER_TRUST``: none)."""
    return risk_control.certify_tallies(target.procedure, lambda at: gap_tally(confidence[:, at], correct[:, at]),
                                        confidence.shape[1], target.max_risk, target.delta)


def smallest_risk(confidence: np.ndarray, correct: np.ndarray, target: RiskTarget) -> float | None:
    """The smallest ``max_risk`` (to 0.1 %) for which the procedure certifies some early answers; None if
    not even 99.9 %. Bisection keeps ``hi`` certified, so the figure named is one that works."""
    def passes(per_mille: int) -> bool:
        return certify_threshold(confidence, correct, replace(target, max_risk=per_mille / 1000)) != NEVER_TRUST

    lo, hi = 0, 999
    if not passes(hi):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(mid) else (mid, hi)
    return hi / 1000


def _refusal(o: ExitOutcomes, correct: np.ndarray, target: RiskTarget) -> PolicyError:
    """Why no policy is deployed, in one line: no early answer certified (and the smallest error that is), or
    the certified one relays more than the budget."""
    t = certify_threshold(o.confidence, correct, target)
    if t != NEVER_TRUST:
        count, bound = relay_bound(o.confidence, t, target.delta)
        return PolicyError(f"at --max-local-error {target.max_risk:.2%} the device still relays {count} of "
                           f"{len(o.y)} inputs (at most {bound:.2%} at confidence {1 - target.delta:.0%}), above "
                           f"--max-remote-fraction {target.max_remote_fraction:.2%}; raise either")
    smallest = smallest_risk(o.confidence, correct, target)
    supported = (f"the smallest the data supports is {smallest:.1%}" if smallest is not None else
                 "no error below 100% can be certified on so few samples")
    return PolicyError(f"no early exit can be certified at --max-local-error {target.max_risk:.2%} with --delta "
                       f"{target.delta} on {len(o.y)} samples; {supported}")


def relay_bound(confidence: np.ndarray, t: int, delta: float) -> tuple[int, float]:
    """Inputs relayed at shared threshold ``t`` and the (1 - delta) Clopper-Pearson upper bound on their rate."""
    count = int(relays(confidence)[int(np.flatnonzero(CODES == t)[0])])
    return count, clopper_pearson_upper(count, confidence.shape[1], delta)


def choose(confidence: np.ndarray, correct: np.ndarray, target: RiskTarget) -> int:
    """The shared threshold to deploy: the loosest certified, or ``NEVER_TRUST`` when none is, or when its relays
    are not certified within the remote budget (a looser one would break the risk, a stricter one relays more)."""
    t = certify_threshold(confidence, correct, target)
    if t == NEVER_TRUST or not target.max_remote_fraction:  # None: unbounded; 0: the policy does not relay
        return t
    return t if relay_bound(confidence, t, target.delta)[1] <= target.max_remote_fraction else NEVER_TRUST


def statement(target: RiskTarget, exits: int, samples: int) -> str:
    """The guarantee in words, for policy.json, the table and ``--help``."""
    level = f"{1 - target.delta:.0%}"
    text = (f"With probability at least {level} over the draw of the calibration set, among the inputs the device "
            f"answers at an early exit (exits 1..{exits - 1}, before its last stage), the share answered wrongly where "
            f"the full network (its last exit) would have answered rightly is at most {target.max_risk:.2%}; so "
            f"early answers are wrong at most {target.max_risk:.2%} more often than the full network's on the same "
            "inputs, provided calibration and deployment inputs are exchangeable. "
            f"{risk_control.describe(target.procedure, target.delta, samples)}, over one confidence threshold "
            "shared by every exit.")
    if target.max_remote_fraction is None:
        return text
    return text + (f" With probability at least {level}, the fraction of inputs relayed is at most "
                   f"{target.max_remote_fraction:.2%} (a Clopper-Pearson bound; relays only fall as the threshold "
                   f"loosens, so one bound covers the choice); both hold together with probability at least "
                   f"{1 - 2 * target.delta:.0%}.")


def certify_policy(o: ExitOutcomes, target: RiskTarget, link: LinkCost = DEFAULT_LINK) -> tuple[Policy, Result]:
    """The certified policy: every exit at the loosest certified threshold, the whole network on the device,
    relaying (unless the remote budget is 0) what the link favours."""
    target.check()
    correct = o.labels == o.y[None, :]
    t = choose(o.confidence, correct, target)
    if t == NEVER_TRUST:
        raise _refusal(o, correct, target)
    relay = target.max_remote_fraction != 0
    policy = Policy("thresholds", o.exits, [t] * (o.exits - 1) + [t if relay else -NEVER], relay,
                    best_split(o, o.exits, link) if relay else 0)
    return policy, apply(policy, o)


def guarantee(target: RiskTarget, o: ExitOutcomes) -> dict:
    """What policy.json records of the promise."""
    return {"max_local_error": target.max_risk, "risk": RISK, "delta": target.delta,
            "procedure": risk_control.resolve(target.procedure, len(o.y)), "samples": len(o.y),
            "max_remote_fraction": target.max_remote_fraction, "statement": statement(target, o.exits, len(o.y))}


def achieved(o: ExitOutcomes, result: Result) -> dict:
    """The figures on the calibration set, with the early answers' share and their measured loss."""
    early = (result.exit_taken >= 0) & (result.exit_taken < o.exits - 1)
    lost = early & (result.labels != o.y) & (o.labels[-1] == o.y)
    return result.figures(o.y) | {"early_fraction": float(early.mean()),
                                  "early_loss": float(lost.sum() / early.sum()) if early.any() else 0.0}


def calibrate(staged: StagedModel, tails: dict[int, RemoteModel], data_path: str | Path, target: RiskTarget,
              max_reject: float = 0.005, link: LinkCost = DEFAULT_LINK, remote_supervisor: str = "max-softmax",
              progress: Progress = lambda message: None, out_dir: str | Path | None = None) -> Policy:
    """The certified policy on the labelled set at ``data_path``, written to ``policy.json`` in ``out_dir``."""
    target.check()
    o, thresholds = labelled_outcomes(staged, tails, data_path, max_reject, remote_supervisor, progress)
    found, result = certify_policy(o, target, link)
    policy = replace(found, remote_thresholds=[float(t) for t in thresholds], remote_supervisor=remote_supervisor,
                     achieved=achieved(o, result) | {"samples": len(o.y), "data": str(data_path)},
                     guarantee=guarantee(target, o))
    out = Path(out_dir or staged.directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "policy.json").write_text(policy.dumps())
    return policy
