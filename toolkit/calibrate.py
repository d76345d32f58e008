"""``bisup calibrate``: choose both supervisors' thresholds from a validation set.

The local model runs as the board runs it (int8, in the TFLM interpreter) and its threshold is
chosen in the int8 units of its confidence output, which is what the firmware compares. The
remote model sees what the bridge will hand it: the device's int8 input, dequantized.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converters.errors import ConversionError
from converters.runners import dequantize
from converters.scores import KINDS
from firmware_bridge.device_model import LocalModel
from firmware_bridge.relay import RemoteSupervisor
from firmware_bridge.remotes import RemoteModel
from toolkit import datasets, thresholds
from toolkit.thresholds import CostModel, Outcomes, Point, RemoteRule

Progress = Callable[[str], None]
FORMAT_VERSION = 1


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


@dataclass(frozen=True)
class Mode:
    """How the local threshold is chosen: ``budget``, ``target`` or ``risk``."""

    kind: str
    value: float
    delta: float = 0.1

    def describe(self) -> dict:
        names = {"budget": "max_remote_fraction", "target": "target_accuracy", "risk": "max_local_error"}
        entry = {"mode": self.kind, names[self.kind]: self.value}
        return entry | ({"delta": self.delta} if self.kind == "risk" else {})


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

    def thresholds_json(self) -> dict:
        c = self.chosen
        return {
            "format": FORMAT_VERSION,
            "local": {
                "supervisor": self.local_supervisor,
                "threshold_int8": c.threshold_int8,
                "threshold": self.local.threshold_float(c.threshold_int8),
                "confidence_scale": self.local.confidence.scale,
                "confidence_zero_point": self.local.confidence.zero_point,
                "rule": "answer locally when confidence_int8 >= threshold_int8 (128: never)",
            },
            "remote": {
                "supervisor": self.remote_supervisor,
                "threshold": _finite(c.remote_threshold),
                "rule": "accept the remote answer when its score >= threshold (scores lie in [0, 1])",
                **({"max_reject": self.rule.max_reject} if self.rule.target_accuracy is None else
                   {"target_accuracy": self.rule.target_accuracy}),
            },
            "selection": self.mode.describe(),
            "guarantee": self.guarantee,
            "achieved": c.as_dict() | thresholds.cost_figures(c, self.cost),
            "baselines": self.baselines,
            "cost_model": {"price_per_call": self.cost.price_per_call, "latency_s": self.cost.latency_s},
            "validation": {"data": self.data, "samples": len(self.outcomes)},
        }


def _finite(value: float) -> float:
    """JSON has no infinities: -1 accepts every score in [0, 1], 2 rejects every one."""
    return -1.0 if value == -math.inf else 2.0 if value == math.inf else value


def _choose(o: Outcomes, mode: Mode, rule: RemoteRule, points: list[Point]) -> tuple[Point, str | None]:
    if mode.kind == "budget":
        if not 0 <= mode.value <= 1:
            raise thresholds.ThresholdError(f"max remote fraction {mode.value} must lie in 0..1")
        return thresholds.choose_budget(points, mode.value), None
    if mode.kind == "target":
        return thresholds.choose_target(points, mode.value), None
    point = thresholds.choose_risk(o, rule, mode.value, mode.delta)
    return point, thresholds.guarantee_text(mode.value, mode.delta)


def _local_supervisor(model_path: Path) -> str:
    report = model_path.with_name("report.json")
    try:
        return json.loads(report.read_text()).get("supervisor", "unknown")
    except (OSError, ValueError):
        return "unknown"


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
    local = local or LocalModel(local_path)
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
                       _local_supervisor(Path(local_path)), guarantee, str(data_path), baselines)


def write(calibration: Calibration, out_dir: str | Path) -> dict[str, Path]:
    """Write ``thresholds.json`` and ``tradeoff.png``."""
    from toolkit.plot import tradeoff

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"thresholds": out / "thresholds.json", "plot": out / "tradeoff.png"}
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as handle:
        json.dump(calibration.thresholds_json(), handle, indent=2)
        handle.write("\n")
    Path(handle.name).replace(paths["thresholds"])
    tradeoff(calibration, paths["plot"])
    return paths
