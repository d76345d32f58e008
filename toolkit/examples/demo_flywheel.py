"""``bisup demo --flywheel``: one turn of the data flywheel on digits, end to end.

1. Deploy: the local CNN, exported and calibrated on the clean validation split (as ``bisup demo``).
2. The clean test digits go through the deployed path first (the drift alarm stays quiet); then the
   deployment stream drifts: training digits rotated by up to 20 degrees and noised
   (``digits.shifted``, two draws each), which the local model was never shown. A virtual device
   sends it through the serial bridge over a pty, with the drift alarm watching and the collector
   keeping every relayed input with the remote's answer.
3. ``bisup retrain`` on what was collected (distilling the remote's probabilities): fine-tune,
   export, calibrate before and after on a labelled sample of the new stream (shifted validation
   digits), and compare on held-out shifted test digits, whose originals neither model nor the
   stream contains.

The remote CNN here is trained with the same kind of augmentation (other draws), standing for a
big general model that is robust where the small one is not; that is what makes its answers worth
learning from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from bisup.boards import load_board
from bisup.calibration import single as calibrate
from bisup.calibration.thresholds import RemoteRule
from bisup.examples import digits
from bisup.examples.demo import MODEL_VERSION, cache_root, models, train_and_save
from bisup.export import single as export
from bisup.firmware_bridge.bundle import Bundle
from bisup.firmware_bridge.collect import Collector
from bisup.firmware_bridge.device_model import LocalModel
from bisup.firmware_bridge.drift import DriftAlarm
from bisup.firmware_bridge.events import Fanout
from bisup.firmware_bridge.handler import RequestHandler
from bisup.firmware_bridge.relay import Relay, Source
from bisup.firmware_bridge.remotes import open_remote
from bisup.firmware_bridge.serial_bridge import bridge_over_pty
from bisup.firmware_bridge.virtual_device import SerialLink, VirtualDevice
from bisup.flywheel import retrain

Progress = Callable[[str], None]
STREAM_SEEDS = (11, 12)  # two shifted draws of the training digits: the deployment stream
VAL_SEED, TEST_SEED = 21, 31
AUGMENT_SEEDS = (101, 102)  # the remote's own augmentation draws
REMOTE_EPOCHS = 30


def robust_remote(cache: Path, parts, seed: int, progress: Progress) -> Path:
    """The remote CNN trained on clean and shifted training digits (cached like the demo's models)."""
    path = cache / f"{MODEL_VERSION}-seed{seed}" / "remote-robust.keras"
    if path.is_file():
        progress(f"robust remote CNN: cached at {path}")
        return path
    x, y = parts["train"]
    augmented = {"train": (np.concatenate([x, *(digits.shifted(x, s) for s in AUGMENT_SEEDS)]),
                           np.concatenate([y] * (1 + len(AUGMENT_SEEDS))))}
    train_and_save(digits.remote_cnn, path, augmented, REMOTE_EPOCHS, "robust remote CNN", seed, progress)
    return path


def _write_sets(out: Path, parts) -> dict[str, Path]:
    x_train, y_train = parts["train"]
    sets = {"train": parts["train"], "val": parts["val"],
            "stream": (np.concatenate([digits.shifted(x_train, s) for s in STREAM_SEEDS]),
                       np.concatenate([y_train] * len(STREAM_SEEDS))),
            "shifted_val": (digits.shifted(parts["val"][0], VAL_SEED), parts["val"][1]),
            "shifted_test": (digits.shifted(parts["test"][0], TEST_SEED), parts["test"][1])}
    paths = {}
    for name, (x, y) in sets.items():
        paths[name] = out / f"{name}.npz"
        np.savez(paths[name], x=x, y=y)
    return paths


def deploy(local_keras: Path, remote_path: Path, paths: dict, board: str, budget: float, out: Path,
           progress: Progress) -> Bundle:
    """Export and calibrate as `bisup demo` does: on clean validation digits, within the call budget."""
    report = export.export(local_keras, paths["train"], load_board(board), out, eval_path=paths["val"],
                           progress=progress)
    local = LocalModel(out / "model.tflite", report.arena_recommended_bytes)
    result = calibrate.calibrate(out / "model.tflite", open_remote(remote_path), paths["val"],
                                 calibrate.Mode("budget", budget), progress=progress, local=local)
    calibrate.write(result, out)
    return Bundle.load(out)


def stream(bundle: Bundle, remote_path: Path, x: np.ndarray, collected: Path | None, log: Progress) -> dict:
    """A stream through a virtual device and the serial bridge, with a fresh drift alarm and (given a folder)
    the collector."""
    drift = DriftAlarm.from_thresholds(bundle.thresholds, log)
    collector = None if collected is None else Collector(collected, bundle.quantization, bundle.model_hash.hex(), log)
    relay = Relay(open_remote(remote_path), bundle.remote_supervisor, bundle.quantization)
    try:
        events = Fanout(drift, *([collector] if collector else []))
        with bridge_over_pty(RequestHandler(relay, bundle, events=events)) as port:
            device = VirtualDevice(SerialLink(port), bundle.local_model(), bundle.threshold_int8, device_id="field")
            device.hello()
            answers = device.run(x)
    finally:
        if collector:
            collector.close()
    view = drift.remote_fraction.view()
    return {"inputs": len(x), "relayed": int(sum(a.source is not Source.LOCAL for a in answers)),
            "collected": collector.collected if collector else 0,
            "drift_alarm": drift.remote_fraction.fired > 0 or bool(drift.disagreement and drift.disagreement.fired),
            "live_remote_fraction": view.live, "calibrated_remote_fraction": view.expected,
            "band": [view.lower, view.upper]}


def run(out_dir: Path | None, seed: int, board: str, budget: float, target_accuracy: float, progress: Progress) -> dict:
    """All three steps; returns the stream figures and the retrain result (see ``retrain.retrain``)."""
    cache = cache_root()
    out = out_dir or cache / "demo-flywheel"
    out.mkdir(parents=True, exist_ok=True)
    parts = digits.splits(seed)
    local_keras, _ = models(cache, parts, seed, False, progress)
    remote_path = robust_remote(cache, parts, seed, progress)
    paths = _write_sets(out, parts)
    progress("deploying the local model, calibrated on clean validation digits")
    bundle = deploy(local_keras, remote_path, paths, board, budget, out / "deployed", progress)
    x_stream, _ = np.load(paths["stream"]).values()
    collected = out / "collected"
    for old in collected.glob("shard-*.npz"):  # a fresh turn of the wheel each run
        old.unlink()
    progress(f"first the clean test digits ({len(parts['test'][1])}, like the validation set) through the device "
             "and the bridge: the drift alarm should stay quiet")
    iid = stream(bundle, remote_path, parts["test"][0], None, progress)
    progress(f"streaming {len(x_stream)} rotated, noised digits through the device and the bridge")
    field = stream(bundle, remote_path, x_stream, collected, progress)
    plan = retrain.Plan(model=local_keras, train=paths["train"], collected=collected, data=paths["shifted_val"],
                        remote=str(remote_path), board=board, out=out / "retrained",
                        mode=calibrate.Mode("target", target_accuracy), test=paths["shifted_test"],
                        rule=RemoteRule(max_reject=0.005), distill=True, seed=seed)
    return {"iid": iid, "stream": field, "retrain": retrain.retrain(plan, progress).to_json(),
            "out_dir": str(out)}
