"""``bisup retrain``: the data flywheel's second half.

The relayed inputs a bridge collected (``bisup bridge --collect``) are labelled for free by the
remote model. Fine-tuning the local model on its training data plus those (the remote's labels as
targets, or its probabilities with ``distill``) teaches it the inputs it was unsure about, so the
next deployment relays fewer of them. This module fine-tunes, then exports, calibrates and bundles
both the deployed model and the new one the same way, so that before and after differ only in the
weights, and measures both on a held-out labelled set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bisup import datasets
from bisup.boards import load_board
from bisup.calibration import single as calibrate
from bisup.calibration import thresholds
from bisup.calibration.single import Mode
from bisup.converters import graph
from bisup.converters.errors import BisupError
from bisup.converters.scores import looks_like_probabilities
from bisup.export import bundles
from bisup.export import single as export
from bisup.firmware_bridge.device_model import LocalModel
from bisup.firmware_bridge.remotes import open_remote
from bisup.firmware_bridge.shards import Collected, read_collected

Progress = Callable[[str], None]


class RetrainError(BisupError, ValueError):
    """Collected data or a model that cannot be retrained together; the message says what to fix."""


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What ``bisup retrain`` was given (see its --help)."""

    model: Path
    train: Path
    collected: Path
    data: Path
    remote: str
    board: str
    out: Path
    mode: Mode
    test: Path | None = None
    rule: thresholds.RemoteRule = thresholds.DEFAULT_RULE
    epochs: int = 20
    learning_rate: float = 1e-3
    distill: bool = False
    include_rejected: bool = False
    seed: int = 0
    supervisor: str = "max-softmax"


@dataclass
class Side:
    """One model (before or after) as exported and calibrated, and what it achieves on the held-out set."""

    folder: Path
    threshold_int8: int
    remote_supervisor: str
    validation: dict
    test: dict = field(default_factory=dict)


def check_collected(collected: Collected, shape: tuple[int, ...], classes: int, where: Path) -> None:
    """Collected inputs must fit the model's input and their labels its classes."""
    if int(np.prod(collected.quantization.shape)) != int(np.prod(shape)):
        raise RetrainError(f"{where} holds inputs of shape {collected.quantization.shape} but the model takes "
                           f"{shape}; collect with a bundle of this model")
    if collected.probabilities.shape[1] != classes or collected.remote_label.max(initial=0) >= classes:
        raise RetrainError(f"{where} holds answers over {collected.probabilities.shape[1]} classes but the model "
                           f"has {classes}; the remote and the local model must share one label set")


def targets(collected: Collected, classes: int, distill: bool, include_rejected: bool) -> tuple[np.ndarray, ...]:
    """The collected inputs to train on and their soft or one-hot targets."""
    keep = collected.accepted | include_rejected
    x = collected.inputs()[keep]
    y = collected.probabilities[keep] if distill else np.eye(classes, dtype=np.float32)[collected.remote_label[keep]]
    return x, y


def fine_tune(model, model_path: Path, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float, seed: int,
              progress: Progress):
    """``model`` (loaded from ``model_path``) trained further on (x, soft or one-hot y), with a loss that matches
    its outputs."""
    import keras

    from bisup import training

    if not isinstance(model, keras.Model) or not model.trainable_weights:
        raise RetrainError(f"{model_path} has no trainable weights here (a SavedModel loads frozen); give the "
                           ".keras file")
    training.seed_everything(seed)
    logits = not looks_like_probabilities(np.asarray(model.predict(x[:32], verbose=0)))
    model.compile(keras.optimizers.Adam(learning_rate), keras.losses.CategoricalCrossentropy(from_logits=logits),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, shuffle=True, verbose=0,
              callbacks=[training.epoch_reporter(epochs, "fine-tuning", progress)])
    return model


def _export_and_calibrate(model_path: Path, plan: Plan, remote, out: Path, progress: Progress) -> Side:
    report = export.export(model_path, plan.train, load_board(plan.board), out, plan.supervisor, plan.data,
                           progress=progress)
    local = LocalModel(out / "model.tflite", report.arena_recommended_bytes)
    result = calibrate.calibrate(out / "model.tflite", remote, plan.data, plan.mode, plan.rule, progress=progress,
                                 local=local)
    calibrate.write(result, out)
    return Side(out, result.chosen.threshold_int8, result.remote_supervisor, result.chosen.as_dict())


def _held_out(test: Path, shape: tuple[int, ...], classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The labelled held-out set, checked before any training or export spends minutes."""
    x, y = datasets.load_npz(test)
    if y is None:
        raise datasets.DataError(f"{test} has no labels 'y'; the before/after comparison needs them")
    datasets.check_matches(x, y, shape, classes, test)
    return x, y


def _measure(side: Side, remote, x: np.ndarray, y: np.ndarray) -> thresholds.Outcomes:
    """The side's system on the held-out set as deployed (its int8 and remote thresholds), into ``side.test``."""
    local = LocalModel(side.folder / "model.tflite")
    o, _ = calibrate.outcomes(local, remote, side.remote_supervisor, x, y)
    point = thresholds.evaluate(o, side.threshold_int8, side.validation["remote_threshold"])
    side.test = point.as_dict() | {"local_accuracy": float((o.local_pred == y).mean()), "samples": len(y)}
    return o


def _matched(before: Side, after: thresholds.Outcomes, rule: thresholds.RemoteRule) -> dict:
    """The fewest remote calls with which the new model reaches the old system's held-out accuracy (chosen on the
    held-out set itself, so a reference for how much of the gain calibration kept, not a deployable point)."""
    try:
        point = thresholds.choose_target(thresholds.sweep(after, rule), before.test["accuracy"])
    except thresholds.ThresholdError:
        return {}
    return {"accuracy": point.accuracy, "remote_fraction": point.remote_fraction}


@dataclass(frozen=True)
class RetrainResult:
    """One turn of the flywheel: the model before and after (each exported, calibrated and measured), the new
    bundle, and how many collected inputs it learned from."""

    collected: int  # relayed inputs the bridge kept
    trained_on: int  # of them, those the remote supervisor accepted (or all, with include_rejected)
    bundle: Path
    model: Path
    before: Side
    after: Side
    after_at_before_accuracy: dict  # the new model at the old held-out accuracy (empty without a test set)

    def to_json(self) -> dict:
        """What ``bisup retrain --json`` prints."""
        return {"collected": self.collected, "trained_on": self.trained_on, "bundle": str(self.bundle),
                "model": str(self.model), "after_at_before_accuracy": self.after_at_before_accuracy,
                **{name: vars(side) | {"folder": str(side.folder)}
                   for name, side in (("before", self.before), ("after", self.after))}}


def retrain(plan: Plan, progress: Progress) -> RetrainResult:
    """Fine-tune, export, calibrate and bundle before and after; return both and the collected counts."""
    collected = read_collected(plan.collected)
    x_train, y_train = datasets.load_npz(plan.train)
    model = graph.load_model(plan.model)
    shape, classes = graph.input_shape(model), graph.num_classes(model, plan.model)
    datasets.check_matches(x_train, y_train, shape, classes, plan.train)
    if y_train is None:
        raise datasets.DataError(f"{plan.train} has no labels 'y'; retraining needs the model's labelled training set")
    check_collected(collected, shape, classes, plan.collected)
    held_out = None if plan.test is None else _held_out(plan.test, shape, classes)
    x_new, y_new = targets(collected, classes, plan.distill, plan.include_rejected)
    if not len(x_new):
        raise RetrainError(f"{plan.collected} holds {len(collected)} relayed inputs but the remote supervisor "
                           "accepted none; nothing to learn from (--include-rejected takes them anyway)")
    progress(f"fine-tuning on {len(x_train)} training samples and {len(x_new)} of {len(collected)} collected inputs "
             f"({'remote probabilities' if plan.distill else 'remote labels'} as targets)")
    x = np.concatenate([x_train, x_new.reshape(-1, *shape)])
    y = np.concatenate([np.eye(classes, dtype=np.float32)[y_train], y_new])
    tuned = fine_tune(model, plan.model, x, y, plan.epochs, plan.learning_rate, plan.seed, progress)
    plan.out.mkdir(parents=True, exist_ok=True)
    tuned_path = plan.out / "retrained.keras"
    tuned.save(tuned_path)
    progress(f"loading the remote model {plan.remote}")
    remote = open_remote(plan.remote)
    sides = {}
    for name, path in (("before", plan.model), ("after", tuned_path)):
        progress(f"{name}: exporting and calibrating {path}")
        sides[name] = _export_and_calibrate(path, plan, remote, plan.out / name, progress)
    bundle = plan.out / "retrained.bisup"
    bundles.build(sides["after"].folder, bundle)
    matched = {}
    if held_out is not None:
        progress(f"running both systems on the {len(held_out[1])} held-out inputs of {plan.test}")
        _measure(sides["before"], remote, *held_out)
        matched = _matched(sides["before"], _measure(sides["after"], remote, *held_out), plan.rule)
    return RetrainResult(len(collected), len(x_new), bundle, tuned_path, sides["before"], sides["after"], matched)
