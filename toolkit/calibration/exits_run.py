"""``bisup exits`` and the multi-exit half of ``bisup calibrate``.

``build`` attaches and trains the exits (``bisup.converters.exits``) and writes, next to ``exits.keras``,
the remote tails the bridge serves for split computing: ``tail0.keras`` is the whole network (for a
relayed raw input), ``tail{s}.keras`` the rest after cut ``s``. Plain single-input Keras models, so
any model server (or ``bisup bridge --tail``) can serve them.

``calibrate`` runs the stages as the board does (TFLM, int8 activations between stages) and every
tail on what the device would send, then chooses the per-exit-threshold baseline and the learned
policy for the budgets (``bisup.calibration.exits``) and writes ``policy.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from bisup import datasets
from bisup.calibration import exits as policy
from bisup.calibration.exits import ExitOutcomes, LinkCost
from bisup.converters.artefacts import StageTable
from bisup.converters.exits_policy import Policy
from bisup.converters.runners import dequantize_affine
from bisup.firmware_bridge.exits_model import StagedModel
from bisup.firmware_bridge.relay import RemoteSupervisor
from bisup.firmware_bridge.remotes import RemoteModel, open_remote

Progress = Callable[[str], None]


def tail_path(directory: Path, split: int) -> Path:
    return Path(directory) / f"tail{split}.keras"


def build(model_path: str | Path, at: list[str], train_path: str | Path, out_dir: str | Path, epochs: int = 30,
          joint: bool = False, progress: Progress = lambda message: None) -> dict:
    """Write ``exits.keras`` and the tails; return the float accuracy of every exit on the training set."""
    from bisup.converters import exits, graph
    from bisup.examples.digits import seed_everything

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = graph.load_model(model_path)
    graph.num_classes(model, model_path)  # a one-unit model gets exits of one class otherwise
    seed_everything(0)  # before the heads exist: their initial weights are drawn when they are built
    multi = exits.attach(model, at)
    x, y = datasets.load_npz(train_path)
    if y is None:
        raise datasets.DataError(f"{train_path} has no labels 'y'; training exits needs labels")
    datasets.check_matches(x, y, graph.input_shape(multi), int(multi.output[exits.FINAL].shape[-1]), train_path)
    progress(f"training {len(at)} exit head(s) on {len(x)} samples"
             + (" jointly with the backbone (EENet loss)" if joint else " with the backbone frozen"))
    exits.train(multi, x, y, epochs, joint, progress)
    multi.save(out / "exits.keras")
    import keras

    keras.Model(multi.inputs[0], multi.output[exits.FINAL], name="tail0").save(tail_path(out, 0))
    for split in range(1, len(at) + 1):
        exits.tail(multi, split).save(tail_path(out, split))
    return exits.accuracies(multi, x, y)


def open_tails(directory: str | Path, splits: int) -> dict[int, RemoteModel]:
    """The in-process remote tails ``tail0`` .. ``tail{splits-1}`` written by ``build``."""
    return {s: open_remote(tail_path(Path(directory), s)) for s in range(splits)}


def outcomes(staged: StagedModel, tails: dict[int, RemoteModel], x: np.ndarray, y: np.ndarray,
             remote_supervisor: str = "max-softmax") -> tuple[ExitOutcomes, np.ndarray]:
    """Every exit and every split on ``(x, y)``; also the remote confidences ``(splits, N)``."""
    run = staged.run_all(x)
    table = staged.table
    cuts = zip(run.activation, table.stages[:-1], strict=True)
    inputs = [(run.x_q, table.stages[0].input)] + [(a, s.activation) for a, s in cuts]
    labels, confidences = [], []
    for split, (q, quant) in enumerate(inputs):
        floats = dequantize_affine(q, quant["scale"], quant["zero_point"]).astype(np.float32)
        remote_labels, remote_conf, _ = RemoteSupervisor(remote_supervisor, 0.0).judge(tails[split].predict(floats))
        labels.append(remote_labels)
        confidences.append(remote_conf)
    sent = [int(np.prod(table.stages[0].input["shape"]))] + [s.activation["bytes"] for s in table.stages[:-1]]
    o = ExitOutcomes(run.labels, np.stack(run.confidence), run.scores, np.asarray(y), np.stack(labels),
                     np.ones((len(inputs), len(y)), bool), table.cumulative_macs, sent)
    return o, np.stack(confidences)


def with_remote_rule(o: ExitOutcomes, remote_confidence: np.ndarray, thresholds: np.ndarray) -> ExitOutcomes:
    return replace(o, remote_accepted=remote_confidence >= thresholds[:, None])


def calibrate(staged: StagedModel, tails: dict[int, RemoteModel], data_path: str | Path,
              max_device_fraction: float, max_remote_fraction: float, max_reject: float = 0.005,
              link: LinkCost = policy.DEFAULT_LINK, remote_supervisor: str = "max-softmax",
              progress: Progress = lambda message: None,
              out_dir: str | Path | None = None) -> tuple[dict[str, Policy], ExitOutcomes]:
    """The baseline and learned policies within ``max_device_fraction`` of the full network's MACs and
    ``max_remote_fraction`` remote calls, and the outcomes they were chosen on; writes ``policy.json`` (the
    learned one) and ``policy-thresholds.json`` (the baseline) into ``out_dir`` (default: next to the stages)."""
    x, y = datasets.load_npz(data_path)
    if y is None:
        raise datasets.DataError(f"{data_path} has no labels 'y'; calibration needs a labelled validation set")
    progress(f"running {len(x)} samples through {len(staged)} stages (TFLM) and {len(tails)} remote tails")
    o, remote_conf = outcomes(staged, tails, x, y, remote_supervisor)
    thresholds = policy.remote_thresholds(remote_conf, max_reject)
    o = with_remote_rule(o, remote_conf, thresholds)
    budget = max_device_fraction * o.cumulative_macs[-1]
    chosen = {}
    for kind in ("thresholds", "learned"):
        found, result = policy.search(o, kind, budget, max_remote_fraction, link)
        chosen[kind] = replace(found, remote_thresholds=[float(t) for t in thresholds],
                               remote_supervisor=remote_supervisor,
                               achieved=result.figures(o.y) | {"samples": len(y), "data": str(data_path)})
        progress(f"{kind}: " + ", ".join(f"{k} {v:.4g}" for k, v in chosen[kind].achieved.items()
                                          if isinstance(v, float)))
    out = Path(out_dir or staged.directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "policy.json").write_text(chosen["learned"].dumps())
    (out / "policy-thresholds.json").write_text(chosen["thresholds"].dumps())
    return chosen, o


def open_tail_dir(directory: str | Path, table: StageTable) -> dict[int, RemoteModel]:
    """The tails ``bisup exits`` wrote, checked to match the stages."""
    directory = Path(directory)
    missing = [str(tail_path(directory, s)) for s in range(len(table.stages)) if not tail_path(directory, s).is_file()]
    if missing:
        raise datasets.DataError(f"the remote tails {', '.join(missing)} are missing; give --remote the folder "
                                 "`bisup exits --out` wrote (it holds tail0.keras ... for split computing)")
    return open_tails(directory, len(table.stages))
