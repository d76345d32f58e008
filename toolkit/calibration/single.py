"""``bisup calibrate``: choose both supervisors' thresholds from a validation set.

The local model runs as the board runs it (int8, in the TFLM interpreter) and its threshold is
chosen in the int8 units of its confidence output, which is what the firmware compares. The
remote model sees what the bridge will hand it: the device's int8 input, dequantized.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bisup import datasets
from bisup.calibration import risk_control, thresholds
from bisup.calibration.thresholds import CostModel, Outcomes, Point, RemoteRule
from bisup.converters.artefacts import ExportReport, LocalThreshold, RemoteThreshold, Thresholds, dumps, trusted
from bisup.converters.errors import BisupError, ConversionError
from bisup.converters.runners import dequantize
from bisup.converters.scores import KINDS
from bisup.firmware_bridge.device_model import LocalModel
from bisup.firmware_bridge.relay import RemoteSupervisor
from bisup.firmware_bridge.remotes import RemoteModel

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """Default progress sink for library use."""


def outcomes(local: LocalModel, remote: RemoteModel, supervisor_kind: str, x: np.ndarray, y: np.ndarray):
    """Run both models on ``x``; return the outcomes and the int8 inputs."""
    x_q, local_pred, confidence = local.run(x)
    probs = remote.predict(dequantize(x_q, local.info.inputs[0]).astype(np.float32))
    if probs.shape[1] != local.num_classes:
        raise ConversionError(
            f"the local model has {local.num_classes} classes but the remote has {probs.shape[1]}; "
            "both must predict the same label set"
        )
    labels, remote_conf, _ = RemoteSupervisor(supervisor_kind, 0.0).judge(probs)
    return Outcomes(confidence, local_pred, labels, remote_conf, y), x_q


class ModeError(BisupError, ValueError):
    """Not exactly one way of choosing the local threshold was given."""


@dataclass(frozen=True)
class Mode:
    """How the local threshold is chosen: ``budget``, ``target`` or ``risk``."""

    kind: str
    value: float
    delta: float | None = None  # risk: 0.1 when None; budget: None is the point estimate, a value a guarantee
    procedure: str = risk_control.DEFAULT_PROCEDURE  # risk only: how thresholds are tested

    @classmethod
    def from_options(cls, max_remote_fraction: float | None, target_accuracy: float | None,
                     max_local_error: float | None, delta: float | None, procedure: str) -> Mode:
        """The mode of exactly one of the three options (``calibrate``, ``retrain`` and ``demo`` take them)."""
        given = [(k, v) for k, v in (("budget", max_remote_fraction), ("target", target_accuracy),
                                     ("risk", max_local_error)) if v is not None]
        if len(given) != 1:
            raise ModeError("give exactly one of --max-remote-fraction, --target-accuracy, --max-local-error")
        return cls(given[0][0], given[0][1], delta, procedure)

    @property
    def risk_delta(self) -> float:
        return 0.1 if self.delta is None else self.delta

    def describe(self) -> dict:
        names = {"budget": "max_remote_fraction", "target": "target_accuracy", "risk": "max_local_error"}
        entry = {"mode": self.kind, names[self.kind]: self.value}
        if self.kind == "risk":
            return entry | {"delta": self.risk_delta, "procedure": self.procedure}
        return entry | ({"delta": self.delta} if self.kind == "budget" and self.delta is not None else {})


@dataclass
class Calibration:
    """The chosen thresholds, the whole sweep, and what they achieve on the validation set."""

    chosen: Point
    points: list[Point]
    mode: Mode
    rule: RemoteRule
    remote_supervisor: str
    cost: CostModel
    local: LocalModel
    outcomes: Outcomes
    local_supervisor: str = "unknown"
    guarantee: str | None = None
    data: str = ""
    baselines: dict = field(default_factory=dict)

    def thresholds(self) -> Thresholds:
        """What ``thresholds.json`` holds: the chosen thresholds, how they were chosen, what they achieve."""
        c = self.chosen
        local = LocalThreshold(self.local_supervisor, c.threshold_int8, self.local.threshold_float(c.threshold_int8),
                               self.local.confidence.scale, self.local.confidence.zero_point)
        remote = RemoteThreshold(self.remote_supervisor, _finite(c.remote_threshold),
                                 max_reject=self.rule.max_reject if self.rule.target_accuracy is None else None,
                                 target_accuracy=self.rule.target_accuracy)
        return Thresholds(local, remote, self.mode.describe(), self.guarantee,
                          c.as_dict() | thresholds.cost_figures(c, self.cost) | self._drift_baseline(), self.baselines,
                          {"price_per_call": self.cost.price_per_call, "latency_s": self.cost.latency_s},
                          {"data": self.data, "samples": len(self.outcomes)})


    def _drift_baseline(self) -> dict:
        """How often the remote's label differs from the device's on relayed inputs: the drift alarm's
        second signal (the first is the remote fraction)."""
        o, relayed = self.outcomes, ~trusted(self.outcomes.confidence_int8, self.chosen.threshold_int8)
        if not relayed.any():
            return {}
        return {"relayed_disagreement": float((o.local_pred[relayed] != o.remote_pred[relayed]).mean())}


def _finite(value: float) -> float:
    """JSON has no infinities: -1 accepts every score in [0, 1], 2 rejects every one."""
    return -1.0 if value == -math.inf else 2.0 if value == math.inf else value


def _choose(o: Outcomes, mode: Mode, rule: RemoteRule, points: list[Point]) -> tuple[Point, str | None]:
    if mode.kind == "budget":
        if not 0 <= mode.value <= 1:
            raise thresholds.ThresholdError(f"max remote fraction {mode.value} must lie in 0..1")
        if mode.delta is None:
            return thresholds.choose_budget(points, mode.value), None
        return (thresholds.choose_budget_guaranteed(points, len(o), mode.value, mode.delta),
                thresholds.budget_guarantee_text(mode.value, mode.delta))
    if mode.kind == "target":
        return thresholds.choose_target(points, mode.value), None
    point = thresholds.choose_risk(o, rule, mode.value, mode.risk_delta, mode.procedure)
    return point, thresholds.guarantee_text(mode.value, mode.risk_delta, len(o), mode.procedure)


def export_report(model_path: Path) -> ExportReport | None:
    """The export report beside an exported model (None for a model exported elsewhere)."""
    report = Path(model_path).with_name("report.json")
    return ExportReport.read(report) if report.is_file() else None


def calibrate(
    local_path: str | Path,
    remote: RemoteModel,
    data_path: str | Path,
    mode: Mode,
    rule: RemoteRule = thresholds.DEFAULT_RULE,
    remote_supervisor: str = "max-softmax",
    cost: CostModel = thresholds.DEFAULT_COST,
    progress: Progress = _quiet,
    local: LocalModel | None = None,
) -> Calibration:
    """Choose thresholds on the labelled set at ``data_path``; see the module docstring."""
    if remote_supervisor not in KINDS:
        raise thresholds.ThresholdError(f"unknown remote supervisor {remote_supervisor!r}; choose one of {KINDS}")
    report = export_report(Path(local_path))
    local = local or LocalModel(local_path, report.arena_recommended_bytes if report else None)
    x, y = datasets.load_npz(data_path)
    if y is None:
        raise datasets.DataError(f"{data_path} has no labels 'y'; calibration needs a labelled validation set")
    datasets.check_matches(x, y, local.quantization.shape, local.num_classes, data_path)
    progress(f"running {len(x)} validation samples through the local int8 model (TFLM) and the remote model")
    o, _ = outcomes(local, remote, remote_supervisor, x, y)
    points = thresholds.sweep(o, rule)
    chosen, guarantee = _choose(o, mode, rule, points)
    baselines = {
        "local_only_accuracy": float((o.local_pred == y).mean()),
        "remote_only_accuracy": float((o.remote_pred == y).mean()),
    }
    return Calibration(chosen, points, mode, rule, remote_supervisor, cost, local, o,
                       report.supervisor if report else "unknown", guarantee, str(data_path), baselines)


def write(calibration: Calibration, out_dir: str | Path) -> dict[str, Path]:
    """Write ``thresholds.json`` and ``tradeoff.png``."""
    from bisup.calibration.plot import tradeoff

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"thresholds": out / "thresholds.json", "plot": out / "tradeoff.png"}
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as handle:
        handle.write(dumps(calibration.thresholds()))
    Path(handle.name).replace(paths["thresholds"])
    tradeoff(calibration, paths["plot"])
    return paths
