"""``bisup demo --exits``: SPINN and EENet on digits, deployed, next to BiSupervised.

The demo's remote CNN (the network too big to run whole on every input) gets three early exits.
Its stages are exported for the board, the exit policies are calibrated on the validation split for
an average device budget and a remote-call budget, and the test split goes through the deployed
path: a multi-exit virtual device (every stage in TFLM, the integer exit rule) speaking the wire
protocol over a pty to the serial bridge, which serves the remote tails for INFER and SPLIT.

Two tasks: ``digits`` (the default; every exit is nearly always right, so the policies tie) and
``hard-digits`` (``bisup.examples.hard_digits``: redrawn digits, thousands of validation and test
inputs, exits far from saturated), where policies can be told apart. Every row carries a 95% interval
and the learned-vs-thresholds margin a paired one (``bisup.calibration.intervals``). The rows are the
exact simulated rule (``calibration.exits.apply``) on every test input; every test input also goes
through the deployed path under every policy (7.4 ms an input measured on a loaded machine: under 3 min
for hard-digits), which must agree input by input (label, exit, MACs, bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bisup.boards import load_board
from bisup.calibration import exits as policy
from bisup.calibration import intervals
from bisup.calibration.exits import ExitOutcomes, PolicyError, Result
from bisup.converters.artefacts import NEVER, Policy
from bisup.examples import demo, demo_link, digits, hard_digits
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
HARD_EPOCHS = 20  # the hard task's backbone: 10,780 redrawn training digits, about a minute
LEARNED, BASELINE = "learned (EENet)", "per-exit thresholds"


@dataclass(frozen=True)
class Task:
    """One benchmark and its budgets by default."""

    max_device_fraction: float
    max_remote_fraction: float


# hard-digits is saturated at digits' budgets (every policy reaches the last exit's accuracy), so it is
# run where the device must choose: 40% of the network's MACs on average and one input in five relayed.
TASKS = {"digits": Task(0.6, 0.4), "hard-digits": Task(0.4, 0.2)}


def task(name: str) -> Task:
    if name not in TASKS:
        raise PolicyError(f"--task {name!r} is not a task; choose one of {', '.join(TASKS)}")
    return TASKS[name]


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


def agreement(answers: list[StagedAnswer], simulated: Result) -> float:
    """The share of inputs the deployed path answered exactly as the simulated rule (label, exit, MACs, bytes)."""
    same = [(a.answer.label, a.exit_taken, a.device_macs, a.sent_bytes)
            == (simulated.labels[i], simulated.exit_taken[i], simulated.device_macs[i], simulated.sent[i])
            for i, a in enumerate(answers)]
    return float(np.mean(same))


def row(name: str, r: Result, y: np.ndarray, groups: np.ndarray) -> dict:
    """One table row: the figures, and the 95% cluster-bootstrap interval of accuracy, remote calls and MACs."""
    per_input = {"accuracy": r.labels == y, "remote_fraction": r.relayed, "mean_device_macs": r.device_macs}
    return {"name": name} | r.figures(y) | {"ci95": {k: list(intervals.interval(v, groups))
                                                       for k, v in per_input.items()}}


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


def fixed(o: ExitOutcomes, split: int, exit_taken: int) -> Result:
    """Local-only (``exit_taken`` the last exit) or remote-only (-1, relaying at ``split``) on every input."""
    n, local = len(o.y), exit_taken >= 0
    labels = o.labels[exit_taken] if local else o.remote_labels[split]
    macs = np.full(n, o.cumulative_macs[exit_taken] if local else 0)
    return Result(labels, np.full(n, exit_taken), np.full(n, not local), np.zeros(n, bool), macs,
                  np.full(n, 0 if local else o.sent_bytes[split]))


def _outcomes(model, tails, path: Path, thresholds: np.ndarray) -> ExitOutcomes:
    data = np.load(path)
    o, conf = policy.outcomes(model, tails, data["x"], data["y"])
    return policy.with_remote_rule(o, conf, thresholds)


def backbone(task_name: str, parts: dict, seed: int, retrain: bool, progress: Progress) -> Path:
    """The network that gets the exits: the demo's cached remote CNN, or one trained on the hard task."""
    cache = demo.cache_root()
    if task_name == "digits":
        return demo.models(cache, parts, seed, retrain, progress)[1]
    path = cache / f"{task_name}-v1-seed{seed}" / "remote.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and not retrain:
        progress(f"remote CNN ({task_name}): cached at {path}")
    else:
        demo.train_and_save(digits.remote_cnn, path, parts, HARD_EPOCHS, f"remote CNN ({task_name})", seed, progress)
    return path


def splits(task_name: str, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(x, y, groups)`` per split: a group per original digit (hard-digits) or per input (digits)."""
    if task_name == "hard-digits":
        return hard_digits.grouped_splits(seed)
    return {k: (x, y, np.arange(len(y))) for k, (x, y) in digits.splits(seed).items()}


def policies(o: ExitOutcomes, calibrated: dict[str, Policy], budget: float, max_remote_fraction: float,
             depth_cap: int) -> dict[str, Policy]:
    """The four policies of the table: BiSupervised's single exit, thresholds forced to split, thresholds, learned."""
    thresholds = calibrated["learned"].remote_thresholds
    forced, _ = policy.search(o, "thresholds", budget, max_remote_fraction,
                              split=min(calibrated["thresholds"].depth, depth_cap))
    return {"bisupervised (single exit)": single_exit(o, max_remote_fraction, list(thresholds)),
            "per-exit thresholds, split": replace(forced, remote_thresholds=list(thresholds)),
            BASELINE: calibrated["thresholds"], LEARNED: calibrated["learned"]}


def deployed_check(model: StagedModel, tails: dict, chosen: dict[str, Policy], simulated: dict[str, Result],
                   x: np.ndarray, progress: Progress) -> dict:
    """The test inputs through the deployed path under every policy; per policy, the share answered exactly
    as the simulated rows say."""
    agree = {}
    for name, chosen_policy in chosen.items():
        progress(f"{name}: sending {len(x)} test inputs through a multi-exit virtual device and the serial bridge")
        answers = through_the_path(model, relay_for(model, tails, chosen_policy), chosen_policy, x)
        agree[name] = agreement(answers, simulated[name])
    return {"inputs": len(x), "agreement": agree}


def run(out_dir: Path | None = None, seed: int = 0, board: str = demo.DEFAULT_BOARD,
        max_device_fraction: float | None = None, max_remote_fraction: float | None = None,
        max_reject: float = 0.005, retrain: bool = False, progress: Progress = lambda message: None,
        task_name: str = "digits", link: demo_link.LinkRun | None = None) -> dict:
    """Run the demo; return ``{"rows": [...], "margin": {...}, "deployed": {...}, "policies": {...}, ...}``
    (budgets None: the task's defaults, ``TASKS``); with ``link``, also ``"link"``: the test split over the
    emulated link (see ``demo_link``)."""
    chosen_task = task(task_name)
    device_fraction = chosen_task.max_device_fraction if max_device_fraction is None else max_device_fraction
    remote_fraction = chosen_task.max_remote_fraction if max_remote_fraction is None else max_remote_fraction
    out = out_dir or demo.cache_root() / ("demo-exits" if task_name == "digits" else f"demo-exits-{task_name}")
    out.mkdir(parents=True, exist_ok=True)
    parts = splits(task_name, seed)
    network = backbone(task_name, {k: v[:2] for k, v in parts.items()}, seed, retrain, progress)
    for name in ("train", "val", "test"):
        np.savez(out / f"{name}.npz", x=parts[name][0], y=parts[name][1])
    staged.build(network, cut_names(network), out / "train.npz", out, EXIT_EPOCHS, progress=progress)
    table = staged.export(out / "exits.keras", out / "train.npz", load_board(board), out, eval_path=out / "val.npz",
                          progress=progress)
    model = StagedModel(out)
    tails = staged.open_tails(out, len(table.stages))
    calibrated, val = policy.calibrate(model, tails, out / "val.npz", device_fraction, remote_fraction,
                                       max_reject, progress=progress)
    budget = device_fraction * table.cumulative_macs[-1]
    chosen = policies(val, calibrated, budget, remote_fraction, len(table.stages) - 1)
    test = _outcomes(model, tails, out / "test.npz", np.array(calibrated["learned"].remote_thresholds))
    x, y, groups = parts["test"]
    simulated = {name: policy.apply(p, test) for name, p in chosen.items()}
    baselines = {"local-only (last exit)": fixed(test, 0, test.exits - 1), "remote-only": fixed(test, 0, -1)}
    rows = [row(name, r, y, groups) for name, r in (baselines | simulated).items()]
    margin = intervals.paired_margin(simulated[LEARNED].labels == y, simulated[BASELINE].labels == y, groups)
    over_link = {} if link is None else {"link": demo_link.run(link, model, tails, chosen, x, out, progress, y, val,
                                                               board)}
    sizes = {"val": len(val.y), "test": len(y), "test_originals": len(np.unique(groups))}
    return {**over_link, "task": task_name, "sizes": sizes,
            "rows": rows, "margin": {"a": LEARNED, "b": BASELINE} | margin,
            "deployed": deployed_check(model, tails, chosen, simulated, x, progress),
            "policies": {k: v.to_json() for k, v in chosen.items()},
            "stages": [s.__dict__ for s in table.stages], "table": table, "full_macs": table.cumulative_macs[-1],
            "device_budget_macs": budget, "max_device_fraction": device_fraction,
            "max_remote_fraction": remote_fraction, "out_dir": str(out)}
