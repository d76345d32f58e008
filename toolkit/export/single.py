"""``bisup export``: Keras model + supervisor -> int8 TFLite -> C arrays -> board report.

Split in two so that a model is converted and measured once and then judged against any number
of boards: ``convert`` does the board-independent work (conversion, checks, arena, fidelity) and
``write`` renders one board's artefacts and report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bisup import datasets
from bisup.converters import (
    arena,
    c_arrays,
    caveats,
    coverage,
    engine,
    fidelity,
    graph,
    latency,
    quantize,
    supervisors,
    temperature,
    tflite_model,
)
from bisup.converters.artefacts import BoardProfile, ExportReport, dumps
from bisup.converters.errors import ConversionError
from bisup.converters.runners import LiteRTRunner
from bisup.converters.runners import quantize as quantize_input
from bisup.converters.signature import CONFIDENCE, SCORES
from bisup.export import fit

if TYPE_CHECKING:
    import keras

Progress = Callable[[str], None]

ARENA_MARGIN = "max(1 KiB, 10%) over the measured minimum, rounded up to 16 B"


class DoesNotFit(ConversionError):
    """The model was exported, but it exceeds the board's flash or RAM budget."""


@dataclass
class Converted:
    """Everything about an export that does not depend on the board."""

    model: bytes
    info: tflite_model.ModelInfo
    supervisor: str
    arena_bytes: int
    arena_recommended_bytes: int
    metrics: dict
    temperature: float = 1.0
    samples: dict = field(default_factory=dict)
    flash_ahead: dict = field(default_factory=dict)  # see _flash_ahead


def _quiet(message: str) -> None:
    """The default progress sink for library use: say nothing."""


def _litert(model: bytes, x_q: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """LiteRT's outputs with its default (XNNPACK) and its reference kernels, compared with TFLM's afterwards."""
    return {"xnnpack": LiteRTRunner(model).run(x_q), "reference": LiteRTRunner(model, reference_kernels=True).run(x_q)}


def _measure(supervised: keras.Model, model: bytes, info: tflite_model.ModelInfo, x: np.ndarray, y: np.ndarray | None,
             progress: Progress, early: arena.Prober | None = None) -> tuple[int, dict]:
    """TFLM's minimum arena and the evaluation's metrics, measured side by side.

    The arena search and then the TFLM oracle run (with the recommended arena: its outputs do not depend on it,
    but it must work) go to a worker process (``early``, when started during the conversion), which a thread
    waits for while Keras and LiteRT compute their outputs here: on two cores the oracle no longer waits for them.
    LiteRT stays in this thread: beside TFLM, whose calls hold the GIL, it only waited its turn."""
    progress("measuring the minimum tensor arena with TFLM (binary search, probes in a worker process)")
    progress(f"evaluating {len(x)} samples alongside: float (Keras), int8 (TFLM oracle, in the worker), int8 (LiteRT)")
    x_q = quantize_input(x, info.inputs[0])
    positions = info.output_positions
    with ThreadPoolExecutor(max_workers=1) as pool:
        oracle = pool.submit(arena.minimum_arena_and_outputs, model, x_q, max(positions.values()) + 1, early)
        float_out = {k: np.asarray(v) for k, v in supervised.predict(x, verbose=0, batch_size=256).items()}
        litert = _litert(model, x_q)
        minimum, rows = oracle.result()
    tflm = {name: rows[position] for name, position in positions.items()}
    metrics = fidelity.compare(float_out, tflm, y)
    metrics["tflm_vs_litert_bitexact"] = {kernels: fidelity.bitexact_fraction(tflm, outputs)
                                          for kernels, outputs in litert.items()}
    return minimum, metrics


def convert(
    model_path: str | Path,
    calib_path: str | Path,
    supervisor: str = "max-softmax",
    eval_path: str | Path | None = None,
    progress: Progress = _quiet,
    temperature_value: float | None = None,
    flash_for: BoardProfile | None = None,
) -> Converted:
    """Convert and measure; raise ConversionError or DataError with a one-line reason.

    ``temperature_value`` None picks the supervisor temperature from the calibration set
    (see ``bisup.converters.temperature``); a number forces it. ``flash_for`` names the board ``write`` will
    get, so that its C engine is compiled while the evaluation runs (see ``_flash_ahead``).
    """
    progress(f"loading {model_path}")
    model = graph.load_model(model_path)
    shape = graph.input_shape(model)
    calib_x, calib_y = datasets.load_npz(calib_path)
    num_classes = graph.num_classes(model, model_path)
    datasets.check_matches(calib_x, calib_y, shape, num_classes, calib_path)
    datasets.check_calibration_size(calib_x, calib_path)
    eval_x, eval_y = (calib_x, calib_y) if eval_path is None else datasets.load_npz(eval_path)
    datasets.check_matches(eval_x, eval_y, shape, num_classes, eval_path or calib_path)

    layer = supervisors.resolve(supervisor)
    chosen = temperature_value
    if chosen is None:
        progress(f"choosing the supervisor temperature on {len(calib_x)} calibration samples (Keras)")
        chosen = _temperature(model, calib_x, supervisors.kind_of(layer))
    if chosen <= 0:
        raise ConversionError(f"temperature must be positive, got {chosen}")
    progress(f"supervisor {supervisors.kind_of(layer)} at temperature {chosen:g}")
    supervised = graph.attach_supervisor(model, layer, calib_x[:32], chosen)
    progress(f"converting to full int8 with {min(len(calib_x), quantize.MAX_CALIBRATION_SAMPLES)} calibration samples")
    with arena.Prober().start() as early:  # the TFLM worker starts up on the core the conversion leaves idle
        flatbuffer = quantize.to_int8_tflite(supervised, calib_x)
        info = tflite_model.read(flatbuffer)
        coverage.check_graph(info)
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(_flash_ahead, flatbuffer, flash_for) if flash_for is not None else None
            minimum, metrics = _measure(supervised, flatbuffer, info, eval_x, eval_y, progress, early)
            flash_ahead = ahead.result() if ahead is not None else {}
    samples = {"calibration": len(calib_x), "evaluation": len(eval_x), "evaluation_set": str(eval_path or calib_path),
               "on_calibration": eval_path is None}
    return Converted(flatbuffer, info, supervisors.kind_of(layer), minimum, arena.recommended(minimum), metrics,
                     chosen, samples, flash_ahead)


def _flash_ahead(model: bytes, board: BoardProfile) -> dict:
    """``engine.measure_flash`` of the C engine generated for ``board``, keyed by (arch, source, header).

    gcc runs in subprocesses, so on two cores it compiles while Keras, LiteRT and the TFLM worker evaluate,
    instead of after them; ``_engine`` takes the figures when it generates the same source for the same arch.
    Any failure leaves it empty, and ``_engine`` compiles (and reports the failure) as before."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="bisup-engine-") as work:
            generated = engine.write(model, work, board.arena_ram_budget)
            return {(board.arch, generated.source, generated.header): engine.measure_flash(work, board.arch)}
    except Exception:  # noqa: BLE001 - only an early start: the sequential path reports it
        return {}


def _temperature(model: keras.Model, calib_x: np.ndarray, kind: str) -> float:
    """The temperature from the logits on the calibration set. A model with no softmax to cut is predicted once:
    the first 32 rows of that prediction tell logits from probabilities (``graph.logits_source``), where a
    separate prediction of those rows cost a second trace of the model."""
    cut = graph.logits_model(model)
    if cut is not None:
        return temperature.choose(np.asarray(cut.predict(calib_x, verbose=0, batch_size=256)), kind)
    logits = np.asarray(model.predict(calib_x, verbose=0, batch_size=256))
    if graph.logits_source(model, calib_x[:32], logits[:32]) is None:
        return 1.0
    return temperature.choose(logits, kind)


def _quant(tensor: tflite_model.Tensor, position: int | None = None) -> dict:
    entry = {"shape": list(tensor.shape), "scale": tensor.scale, "zero_point": tensor.zero_point}
    return entry if position is None else entry | {"output_index": position}


def report(converted: Converted, board: BoardProfile, engine_figures: dict | None = None,
           requested: str | None = None) -> ExportReport:
    """The board-specific report (``report.json``), its verdict by the engine that will run the model: ``requested``
    (``c`` or ``tflm``), or by default the C engine wherever ``engine_figures`` show it can run the model."""
    info, metrics, engine_figures = converted.info, converted.metrics, engine_figures or {}
    chosen = fit.choose(requested, engine_figures)
    problems = fit.problems(chosen, engine_figures, board, len(converted.model), converted.arena_recommended_bytes)
    return ExportReport(
        board=board.name,
        board_title=board.title,
        arch=board.arch,
        cpu_mhz=board.cpu_mhz,
        kernels=board.kernels,
        supervisor=converted.supervisor,
        supervisor_temperature=converted.temperature,
        ops=list(info.ops),
        flash_bytes=len(converted.model),
        flash_budget_bytes=board.model_flash_budget,
        arena_bytes=converted.arena_bytes,
        arena_recommended_bytes=converted.arena_recommended_bytes,
        arena_budget_bytes=board.arena_ram_budget,
        arena_margin=ARENA_MARGIN,
        float_accuracy=metrics["float_accuracy"],
        int8_accuracy=metrics["int8_accuracy"],
        int8_float_top1_agreement=metrics["int8_float_top1_agreement"],
        tflm_vs_litert_bitexact=metrics["tflm_vs_litert_bitexact"],
        supervisor_auroc={"float": metrics["auroc_float"], "int8": metrics["auroc_int8"]},
        fits=not problems,
        fit_problems=problems,
        caveats=caveats.findings(info, board.caveats),
        quantization={
            "input": _quant(info.inputs[0]),
            SCORES: _quant(info.output(SCORES), info.output_positions[SCORES]),
            CONFIDENCE: _quant(info.output(CONFIDENCE), info.output_positions[CONFIDENCE]),
        },
        samples=converted.samples,
        oracle="int8 figures come from the tflite-micro host interpreter; LiteRT is compared, not the device",
        engine=engine_figures,
        fit_engine=chosen,
    )


def write(converted: Converted, board: BoardProfile, out_dir: str | Path, symbol: str = "g_model_data",
          progress: Progress = _quiet, engine_choice: str | None = None) -> ExportReport:
    """Write ``model.tflite``, ``model_data.h/.cc``, ``model_infer.c/.h`` and ``report.json``; return the report,
    judged by ``engine_choice`` (``c``, ``tflm``; None: see ``report``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress(f"writing model.tflite and the TFLM C arrays (model_data.h/.cc) to {out}")
    (out / "model.tflite").write_bytes(converted.model)
    c_arrays.write(converted.model, converted.info, out, converted.arena_recommended_bytes, symbol)
    result = report(converted, board, _engine(converted, board, out, progress), engine_choice)
    (out / "report.json").write_text(dumps(result))
    return result


def _engine(converted: Converted, board: BoardProfile, out: Path, progress: Progress = _quiet) -> dict:
    """model_infer.c/.h (the interpreter-free engine) when it can run the model exactly; otherwise the
    reason, and the TFLM export above is the way to deploy it."""
    progress("generating the C engine (model_infer.c/.h) and planning its arena")
    try:
        generated = engine.write(converted.model, out, board.arena_ram_budget)
    except engine.EngineError as exc:
        for stale in ("model_infer.c", "model_infer.h"):
            (out / stale).unlink(missing_ok=True)
        return ({"generated": False, "reason": str(exc)} | engine.tflm_flash(len(converted.model))
                | _figures_beyond_budget(converted.model, board))
    progress(f"compiling model_infer.c and the kernels with arm-none-eabi-gcc -Os to measure flash ({board.arch})")
    figures = engine.summary(generated, converted.arena_bytes, len(converted.model))
    flash = converted.flash_ahead.get((board.arch, generated.source, generated.header))
    return (figures | _latency(figures["macs"], board) | (flash or engine.measure_flash(out, board.arch))
            | engine.kernel_set(board.arch))


def _latency(macs: int, board: BoardProfile) -> dict:
    """The C engine's latency estimate at the board's clock (see ``bisup.converters.latency`` for its source)."""
    return {"latency": latency.estimate(macs, board.arch, board.cpu_mhz)}


def _figures_beyond_budget(model: bytes, board: BoardProfile) -> dict:
    """MACs and layers of an engine whose arena exceeds the board's RAM: they show which layer to shrink.
    Empty when the engine cannot run the model at all (an op or a quantization it does not implement)."""
    try:
        generated = engine.generate(model)
    except engine.EngineError:
        return {}
    macs = engine.total_macs(generated)
    planned = {"arena_bytes": generated.plan.arena_bytes, "macs": macs, "layers": engine.layers(generated),
               "arena_peak": engine.peak(generated)}
    return planned | _latency(macs, board)


def export(
    model_path: str | Path,
    calib_path: str | Path,
    board: BoardProfile,
    out_dir: str | Path,
    supervisor: str = "max-softmax",
    eval_path: str | Path | None = None,
    symbol: str = "g_model_data",
    progress: Progress = _quiet,
    temperature_value: float | None = None,
    engine_choice: str | None = None,
) -> ExportReport:
    """Convert, write the artefacts for ``board``, and return the report (see ``write``)."""
    converted = convert(model_path, calib_path, supervisor, eval_path, progress, temperature_value, board)
    return write(converted, board, out_dir, symbol, progress, engine_choice)


def stderr_progress(message: str) -> None:
    """Progress lines for the CLI: on stderr, so ``--json`` stdout stays clean."""
    print(f"bisup: {message}", file=sys.stderr, flush=True)
