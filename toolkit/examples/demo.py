"""``bisup demo``: the whole BiSupervised path once, on digits, with no server, board or download.

It trains (and caches) a small local CNN and a larger remote CNN, exports the local one for a
board, calibrates both supervisors on the validation split, and sends the test split through the
deployed path: the local int8 model in TFLM, the int8 threshold decision, and for unsure inputs a
relay through the serial bridge over a pty pair: a virtual device (TFLM + int8 threshold) speaks
the wire protocol to the same bridge ``bisup bridge`` runs, so the demo exercises the deployed
path, not a separate simulation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bisup import training
from bisup.boards import load_board
from bisup.calibration import single as calibrate
from bisup.calibration.thresholds import DEFAULT_COST, CostModel, RemoteRule, figures
from bisup.converters.artefacts import Thresholds
from bisup.converters.runners import dequantize
from bisup.examples import digits
from bisup.export import single as export
from bisup.firmware_bridge.bundle import Bundle
from bisup.firmware_bridge.device_model import LocalModel
from bisup.firmware_bridge.handler import RequestHandler
from bisup.firmware_bridge.relay import Answer, Relay, RemoteSupervisor, Source
from bisup.firmware_bridge.remotes import RemoteModel, open_remote
from bisup.firmware_bridge.serial_bridge import bridge_over_pty
from bisup.firmware_bridge.virtual_device import SerialLink, VirtualDevice

Progress = Callable[[str], None]
DEFAULT_BOARD = "nrf52840"  # no kernel caveat hits the digits CNN there (esp32s3's esp-nn FC one does)
MODEL_VERSION = "digits-v1"
LOCAL_EPOCHS = 40
REMOTE_EPOCHS = 40


def cache_root() -> Path:
    """``$BISUP_CACHE``, else ``$XDG_CACHE_HOME/bisup``, else ``~/.cache/bisup``."""
    if os.environ.get("BISUP_CACHE"):
        return Path(os.environ["BISUP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bisup"


def train_and_save(build, path: Path, parts, epochs: int, label: str, seed: int, progress: Progress) -> None:
    training.seed_everything(seed)
    model = training.train(build(), *parts["train"], epochs=epochs, label=label, progress=progress)
    partial = path.with_suffix(".partial.keras")
    model.save(partial)
    partial.replace(path)  # a killed run never leaves a half-written model in the cache


def models(cache: Path, parts, seed: int, retrain: bool, progress: Progress) -> tuple[Path, Path]:
    """The local and remote ``.keras`` files, trained once and then taken from the cache."""
    folder = cache / f"{MODEL_VERSION}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    local, remote = folder / "local.keras", folder / "remote.keras"
    for path, build, epochs, label in (
        (local, digits.local_cnn, LOCAL_EPOCHS, "local CNN"),
        (remote, digits.remote_cnn, REMOTE_EPOCHS, "remote CNN"),
    ):
        if path.is_file() and not retrain:
            progress(f"{label}: cached at {path}")
        else:
            train_and_save(build, path, parts, epochs, label, seed, progress)
    return local, remote


def through_the_path(local: LocalModel, bundle: Bundle, relay: Relay, x: np.ndarray) -> list[Answer]:
    """Each input as deployed: a virtual device (TFLM int8 + threshold) on one end of a pty, the
    serial bridge (relay + remote supervisor) on the other, speaking the wire protocol."""
    with bridge_over_pty(RequestHandler(relay, bundle)) as port:
        device = VirtualDevice(SerialLink(port), local, bundle.threshold_int8, device_id="demo")
        device.hello()
        return device.run(x)


def row(name: str, labels: np.ndarray, y: np.ndarray, relayed: np.ndarray, rejected: np.ndarray) -> dict:
    """One table row (see ``thresholds.figures``)."""
    return {"name": name} | figures(labels, y, relayed, rejected)


def rows(local: LocalModel, remote: RemoteModel, answers: list[Answer], x, y) -> list[dict]:
    """local-only, remote-only and BiSupervised rows on the same inputs."""
    x_q, local_labels, _ = local.run(x)
    remote_labels = remote.predict(dequantize(x_q, local.info.inputs[0]).astype(np.float32)).argmax(axis=1)
    none, every = np.zeros(len(y), bool), np.ones(len(y), bool)
    labels = np.array([a.label for a in answers])
    relayed = np.array([a.source is not Source.LOCAL for a in answers])
    rejected = np.array([a.rejected for a in answers])
    return [
        row("local-only", local_labels, y, none, none),
        row("remote-only", remote_labels, y, every, none),
        row("bisupervised", labels, y, relayed, rejected),
    ]


@dataclass(frozen=True)
class DemoResult:
    """What `bisup demo` found: local-only, remote-only and BiSupervised on the test split, the thresholds
    calibration chose, and the folder with the artefacts."""

    rows: list[dict]
    thresholds: Thresholds
    out_dir: Path

    def row(self, name: str) -> dict:
        return next(r for r in self.rows if r["name"] == name)

    def to_json(self) -> dict:
        """What ``bisup demo --json`` prints."""
        return {"rows": self.rows}


def run(
    out_dir: Path | None = None,
    seed: int = 0,
    board: str = DEFAULT_BOARD,
    max_remote_fraction: float = 0.3,
    max_reject: float = 0.005,
    cost: CostModel = DEFAULT_COST,
    retrain: bool = False,
    progress: Progress = lambda message: None,
) -> DemoResult:
    """Run the demo: train (or reuse the cached models), export, calibrate, and send the test split through a
    virtual device, a pty and the serial bridge."""
    cache = cache_root()
    out = out_dir or cache / "demo"
    out.mkdir(parents=True, exist_ok=True)
    parts = digits.splits(seed)
    local_keras, remote_keras = models(cache, parts, seed, retrain, progress)
    for name in ("train", "val", "test"):
        np.savez(out / f"{name}.npz", x=parts[name][0], y=parts[name][1])
    report = export.export(local_keras, out / "train.npz", load_board(board), out, eval_path=out / "val.npz",
                           progress=progress)
    local = LocalModel(out / "model.tflite", report.arena_recommended_bytes)
    remote = open_remote(remote_keras)
    progress(f"calibrating on {len(parts['val'][1])} validation samples: at most {max_remote_fraction:.0%} remote "
             f"calls, at most {max_reject:.1%} rejected")
    result = calibrate.calibrate(out / "model.tflite", remote, out / "val.npz",
                                 calibrate.Mode("budget", max_remote_fraction), RemoteRule(max_reject=max_reject),
                                 cost=cost, progress=progress, local=local)
    calibrate.write(result, out)
    chosen = result.chosen
    relay = Relay(remote, RemoteSupervisor(result.remote_supervisor, chosen.remote_threshold), local.quantization)
    x_test, y_test = parts["test"]
    progress(f"sending {len(y_test)} test inputs from a virtual device over a pty through the serial bridge")
    answers = through_the_path(local, Bundle.load(out), relay, x_test)
    return DemoResult(rows(local, remote, answers, x_test, y_test), result.thresholds(), out)
