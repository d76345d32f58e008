"""``bisup demo --exits``: SPINN and EENet on digits, deployed, next to BiSupervised.

The demo's remote CNN (the network too big to run whole on every input) gets three early exits.
Its stages are exported for the board, the exit policies are calibrated on the validation split for
an average device budget and a remote-call budget, and the test split goes through the deployed
path: a multi-exit virtual device (every stage in TFLM, the integer exit rule) speaking the wire
protocol over a pty to the serial bridge, which serves the remote tails for INFER and SPLIT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from bisup.boards import load_board
from bisup.calibration import exits as policy
from bisup.calibration.exits import ExitOutcomes
from bisup.converters.artefacts import NEVER, Policy
from bisup.examples import demo, demo_link, digits
from bisup.export import exits as staged
from bisup.firmware_bridge.exits_device import StagedAnswer, StagedDevice
from bisup.firmware_bridge.exits_model import StagedIdentity, StagedModel, relay_for
from bisup.firmware_bridge.handler import RequestHandler
from bisup.firmware_bridge.relay import Relay
from bisup.firmware_bridge.serial_bridge import bridge_over_pty
from bisup.firmware_bridge.virtual_device import SerialLink

Progress = Callable[[str], None]
# The remote CNN's cuts by position (see digits.remote_cnn): its first convolution, the pooling, the third
# convolution. By position, because Keras numbers layer names per process (conv2d_2 in a fresh one).
EXITS_AT = (0, 2, 3)
EXIT_EPOCHS = 20


def cut_names(backbone: Path) -> list[str]:
    """The names of the remote CNN's layers at ``EXITS_AT``."""
    from bisup.converters import graph

    layers = graph.load_model(backbone).layers
    return [layers[i].name for i in EXITS_AT]


def through_the_path(model: StagedModel, relay: Relay, chosen: Policy, x: np.ndarray) -> list[StagedAnswer]:
    """Each input as deployed: the multi-exit virtual device and the serial bridge over a pty."""
    with bridge_over_pty(RequestHandler(relay, StagedIdentity.of(model))) as port:
        device = StagedDevice(SerialLink(port), model, chosen, device_id="demo-exits")
        device.hello()
        return device.run_staged(x)


def deployed_row(name: str, answers: list[StagedAnswer], y: np.ndarray) -> dict:
    relayed = np.array([a.sent_bytes > 0 or a.exit_taken < 0 for a in answers])
    sent = np.array([a.sent_bytes for a in answers])
    return {"name": name, "accuracy": float((np.array([a.answer.label for a in answers]) == y).mean()),
            "remote_fraction": float(relayed.mean()),
            "rejected_fraction": float(np.mean([a.answer.rejected for a in answers])),
            "mean_device_macs": float(np.mean([a.device_macs for a in answers])),
            "mean_bytes_sent": float(sent.mean()),
            "bytes_per_relay": float(sent[relayed].mean()) if relayed.any() else 0.0}


def single_exit(o: ExitOutcomes, max_remote_fraction: float, thresholds: list[float]) -> Policy:
    """BiSupervised on the last exit alone: the whole network on the device, one threshold, raw input relayed."""
    last = o.exits - 1
    best = None
    for t in sorted({int(c) for c in np.unique(o.confidence[last])} | {NEVER}):
        candidate = Policy("thresholds", o.exits, [NEVER] * last + [t], True, 0, [], thresholds)
        fig = policy.apply(candidate, o).figures(o.y)
        if fig["remote_fraction"] <= max_remote_fraction + 1e-12:
            key = (fig["accuracy"], -fig["remote_fraction"])
            if best is None or key > best[0]:
                best = (key, candidate)
    return best[1]


def _outcomes(model, tails, path: Path, thresholds: np.ndarray) -> ExitOutcomes:
    data = np.load(path)
    o, conf = policy.outcomes(model, tails, data["x"], data["y"])
    return policy.with_remote_rule(o, conf, thresholds)


def run(out_dir: Path | None = None, seed: int = 0, board: str = demo.DEFAULT_BOARD,
        max_device_fraction: float = 0.6, max_remote_fraction: float = 0.4, max_reject: float = 0.005,
        retrain: bool = False, progress: Progress = lambda message: None,
        link: demo_link.LinkRun | None = None) -> dict:
    """Run the demo; return ``{"rows": [...], "policies": {...}, "stages": [...], "out_dir": ...}``; with ``link``,
    also ``"link"``: the test split over the emulated link (see ``demo_link``)."""
    cache = demo.cache_root()
    out = out_dir or cache / "demo-exits"
    out.mkdir(parents=True, exist_ok=True)
    parts = digits.splits(seed)
    _, backbone = demo.models(cache, parts, seed, retrain, progress)
    for name in ("train", "val", "test"):
        np.savez(out / f"{name}.npz", x=parts[name][0], y=parts[name][1])
    staged.build(backbone, cut_names(backbone), out / "train.npz", out, EXIT_EPOCHS, progress=progress)
    table = staged.export(out / "exits.keras", out / "train.npz", load_board(board), out, eval_path=out / "val.npz",
                          progress=progress)
    model = StagedModel(out)
    tails = staged.open_tails(out, len(table.stages))
    policies, val = policy.calibrate(model, tails, out / "val.npz", max_device_fraction, max_remote_fraction,
                                         max_reject, progress=progress)
    thresholds = np.array(policies["learned"].remote_thresholds)
    budget = max_device_fraction * table.cumulative_macs[-1]
    forced, _ = policy.search(val, "thresholds", budget, max_remote_fraction,
                              split=min(policies["thresholds"].depth, len(table.stages) - 1))
    chosen = {"bisupervised (single exit)": single_exit(val, max_remote_fraction, list(thresholds)),
              "per-exit thresholds, split": replace(forced, remote_thresholds=list(thresholds)),
              "per-exit thresholds": policies["thresholds"],
              "learned (EENet)": policies["learned"]}
    test = _outcomes(model, tails, out / "test.npz", thresholds)
    y = parts["test"][1]
    macs = table.cumulative_macs
    rows = [{"name": "local-only (last exit)", "accuracy": float((test.labels[-1] == y).mean()), "remote_fraction": 0.0,
             "rejected_fraction": 0.0, "mean_device_macs": float(macs[-1]), "mean_bytes_sent": 0.0,
             "bytes_per_relay": 0.0},
            {"name": "remote-only", "accuracy": float((test.remote_labels[0] == y).mean()), "remote_fraction": 1.0,
             "rejected_fraction": 0.0, "mean_device_macs": 0.0, "mean_bytes_sent": float(test.sent_bytes[0]),
             "bytes_per_relay": float(test.sent_bytes[0])}]
    for name, chosen_policy in chosen.items():
        progress(f"{name}: sending {len(y)} test inputs through a multi-exit virtual device and the serial bridge")
        relay = relay_for(model, tails, chosen_policy)
        rows.append(deployed_row(name, through_the_path(model, relay, chosen_policy, parts["test"][0]), y))
    over_link = {} if link is None else {"link": demo_link.run(link, model, tails, chosen, parts["test"][0], out,
                                                               progress, y, val, board)}
    return {**over_link, "rows": rows, "policies": {k: v.to_json() for k, v in chosen.items()},
            "stages": [s.__dict__ for s in table.stages], "table": table, "full_macs": macs[-1],
            "device_budget_macs": budget, "out_dir": str(out)}
