"""The exit policy of a multi-exit device (``policy.json``) and its one decision rule.

Calibration (``bisup.calibration.exits``) chooses a policy; the virtual device and the firmware apply it.
Both go through ``exit_scores`` here, in integers, so a device decides exactly as calibration
assumed. See ``bisup.calibration.exits`` for what the policy means and how it is chosen.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bisup.converters.artefacts import ArtefactError, _build, _read, _versioned

NEVER = 2**40  # a threshold no score reaches: do not answer at that exit


def features(confidence: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """int features of one exit for a batch: the int8 confidences of this exit and every earlier one
    (``confidence`` is ``(exits so far, N)``), the exit's top int8 score and its top-1 minus top-2."""
    top2 = np.sort(np.asarray(scores, dtype=np.int64), axis=1)[:, -2:]
    return np.column_stack([np.asarray(confidence, dtype=np.int64).T, top2[:, 1], top2[:, 1] - top2[:, 0]])


@dataclass(frozen=True)
class Scorer:
    """EENet's scorer for one exit, in integers: ``score = features . weights + bias``."""

    weights: list[int]
    bias: int

    def score(self, feats: np.ndarray) -> np.ndarray:
        return feats @ np.asarray(self.weights, dtype=np.int64) + self.bias


@dataclass(frozen=True)
class Policy:
    """How a multi-exit device decides (``bisup.calibration.exits`` explains the fields)."""

    FORMAT = 1
    kind: str  # "thresholds" (int8 confidence) or "learned" (EENet scorers)
    depth: int  # device stages before relaying (1..E)
    thresholds: list[int]  # per exit 1..depth in the score's units; NEVER: do not answer there
    relay: bool
    split: int  # what is relayed: 0 the raw input (INFER), s the activation at cut s (SPLIT)
    scorers: list[Scorer] = field(default_factory=list)
    remote_thresholds: list[float] = field(default_factory=list)  # per split, for the bridge's supervisor
    remote_supervisor: str = "max-softmax"
    achieved: dict = field(default_factory=dict)

    def exit_score(self, exit_index: int, confidence: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Exit ``exit_index``'s (0-based) score for a batch; ``confidence`` holds exits 0..exit_index."""
        if self.kind == "thresholds":
            return np.asarray(confidence[exit_index], dtype=np.int64)
        return self.scorers[exit_index].score(features(confidence[: exit_index + 1], scores))

    def answers_at(self, exit_index: int, score: np.ndarray) -> np.ndarray:
        """Whether exit ``exit_index`` answers locally (the rule the firmware applies after each stage)."""
        return np.asarray(score) >= self.thresholds[exit_index]

    def to_json(self) -> dict:
        return {"format": self.FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, raw: bytes | str | dict, where: str = "policy.json") -> Policy:
        data = _versioned(raw, where, "exit policy", cls.FORMAT, "run `bisup calibrate` on the stages again")
        scorers = data.get("scorers", [])
        if not isinstance(scorers, list):
            raise ArtefactError(f"{where}: scorers is not a list; run `bisup calibrate` on the stages again")
        return _build(cls, data, where, scorers=[_build(Scorer, s if isinstance(s, dict) else {}, f"{where} (scorer)")
                                                 for s in scorers])

    @classmethod
    def read(cls, path: str | Path) -> Policy:
        return cls.from_json(_read(Path(path), "exit policy"), str(path))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"
