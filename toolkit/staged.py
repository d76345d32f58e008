"""``bisup export`` of a multi-exit model: one full-int8 stage per exit, each as TFLM arrays and plain C.

The staged graph is converted once and cut into stages (``converters.stages``); the chain of stage
models is then checked against the one graph in the TFLM interpreter, byte for byte, on the
evaluation set, so a stage boundary can never change an answer. ``stages.json`` is the stage table:
MACs, arena (generated C and TFLM), activation bytes and exit accuracy per stage.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from converters import arena, c_arrays, engine, exits, graph, stages, tflite_model
from converters.artefacts import BoardProfile, StageEntry, StageTable, dumps
from converters.errors import ConversionError
from converters.runners import TflmRunner, quantize
from converters.signature import ACTIVATION, SCORES
from toolkit import datasets

Progress = Callable[[str], None]


def is_multi_exit(model_path: str | Path) -> bool:
    """Whether the ``.keras`` file is a multi-exit model made by ``bisup exits``."""
    model = graph.load_model(model_path)
    try:
        exits.exit_names(model)
    except exits.ExitError:
        return False
    return True


def _tflm_arena(model: bytes) -> int:
    with tempfile.NamedTemporaryFile(suffix=".tflite") as handle:
        handle.write(model)
        handle.flush()
        return arena.minimum_arena(Path(handle.name))


def _check_chain(full: bytes, parts: list[bytes], x_q: np.ndarray) -> None:
    """The chain of stages must give the one graph's outputs byte for byte (the TFLM oracle)."""
    info = tflite_model.read(full)
    whole = TflmRunner(full, info, 1 << 20).run(x_q)
    current = x_q
    for stage, part in enumerate(parts, start=1):
        part_info = tflite_model.read(part)
        out = TflmRunner(part, part_info, 1 << 20).run(current)
        for kind in out:
            if not np.array_equal(out[kind], whole[stages.output_name(kind, stage)]):
                raise ConversionError(f"stage {stage}'s {kind} differs from the whole graph's; please report this "
                                      "model (the stage split must be exact)")
        if ACTIVATION in out:
            current = out[ACTIVATION].reshape((len(current), *part_info.output(ACTIVATION).shape[1:]))


def _quant(tensor: tflite_model.Tensor) -> dict:
    return {"shape": list(tensor.shape), "scale": tensor.scale, "zero_point": tensor.zero_point}


def _entry(index: int, part: bytes, generated: engine.Generated, cut: str | None, temp: float, float_acc: float,
           int8_acc: float) -> StageEntry:
    info = tflite_model.read(part)
    activation = None
    if ACTIVATION in info.output_positions:
        out = info.output(ACTIVATION)
        activation = _quant(out) | {"bytes": int(np.prod(out.shape))}
    return StageEntry(f"stage{index}.tflite", hashlib.sha256(part).hexdigest(), cut,
                      sum(step.macs for step in generated.steps), generated.plan.arena_bytes, _tflm_arena(part),
                      len(part), _quant(info.inputs[0]), activation, temp, float_acc, int8_acc)


def _fit_problems(table_stages: list[StageEntry], board: BoardProfile) -> list[str]:
    flash = sum(s.model_bytes for s in table_stages)
    ram = sum(s.engine_arena_bytes for s in table_stages)  # one static arena per stage
    problems = []
    if flash > board.model_flash_budget:
        problems.append(f"the stages need {flash:,} B of flash but {board.name} leaves "
                        f"{board.model_flash_budget:,} B")
    if ram > board.arena_ram_budget:
        problems.append(f"the stages' arenas need {ram:,} B of RAM but {board.name} leaves "
                        f"{board.arena_ram_budget:,} B")
    return problems


def export(model_path: str | Path, calib_path: str | Path, board: BoardProfile, out_dir: str | Path,
           supervisor: str = "max-softmax", eval_path: str | Path | None = None,
           progress: Progress = lambda message: None) -> StageTable:
    """Write ``stage{i}.tflite``, ``stage{i}_data.*`` (TFLM), ``stage{i}_infer.*`` (C engine), the whole
    ``staged.tflite`` and ``stages.json``; return the stage table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    multi = graph.load_model(model_path)
    names = exits.exit_names(multi)
    calib_x, calib_y = datasets.load_npz(calib_path)
    classes = int(multi.output[exits.FINAL].shape[-1])
    datasets.check_matches(calib_x, calib_y, graph.input_shape(multi), classes, calib_path)
    eval_x, eval_y = (calib_x, calib_y) if eval_path is None else datasets.load_npz(eval_path)
    temps = stages.temperatures(multi, calib_x, supervisor)
    progress(f"converting {len(names)} exits to one full-int8 graph (supervisor {supervisor}, temperatures "
             f"{', '.join(f'{t:g}' for t in temps)})")
    full = stages.convert(multi, calib_x, supervisor, temps)
    parts = stages.split(full)
    x_q = quantize(eval_x, tflite_model.read(full).inputs[0])
    progress(f"checking the chain of {len(parts)} stages against the whole graph in TFLM on {len(x_q)} inputs")
    _check_chain(full, parts, x_q)
    (out / "staged.tflite").write_bytes(full)
    float_acc = exits.accuracies(multi, eval_x, eval_y)
    whole = TflmRunner(full, tflite_model.read(full), 1 << 20).run(x_q)
    cuts = exits.cuts(multi) + [None]
    entries = []
    for index, part in enumerate(parts, start=1):
        progress(f"stage {index}: C engine, TFLM arrays and arena")
        (out / f"stage{index}.tflite").write_bytes(part)
        info = tflite_model.read(part)
        generated = engine.write(part, out, board.arena_ram_budget, name=f"stage{index}")
        c_arrays.write(part, info, out, arena.recommended(_tflm_arena(part)), f"g_stage{index}_data",
                       f"stage{index}_data")
        int8_acc = float((whole[stages.output_name(SCORES, index)].argmax(axis=1) == eval_y).mean())
        entries.append(_entry(index, part, generated, cuts[index - 1], temps[index - 1], float_acc[names[index - 1]],
                              int8_acc))
    flash = engine.measure_flash(out, board.arch, tuple(f"stage{i}_infer" for i in range(1, len(parts) + 1)))
    problems = _fit_problems(entries, board)
    table = StageTable(board.name, supervisor, classes, entries, not problems, problems,
                       {"calibration": len(calib_x), "evaluation": len(eval_x),
                        "evaluation_set": str(eval_path or calib_path)}, flash["flash_bytes"])
    (out / "stages.json").write_text(dumps(table))
    return table
