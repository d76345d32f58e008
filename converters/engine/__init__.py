"""Interpreter-free C for an exported int8 model: ``model_infer.h`` and ``model_infer.c``.

The generated code calls the int8 kernels in ``kernels/`` (C, one file per op) with parameters
computed exactly as TFLite Micro computes them when it prepares each op, so its outputs are byte-equal
to the tflite-micro interpreter's. Weights and biases are ``const`` arrays (flash); activations live in
one static arena whose offsets are planned from tensor lifetimes, with RESHAPE in place. No heap, no
interpreter, no flatbuffer at run time. An op, a quantization or a layout the kernels do not implement
is an ``EngineError`` naming the op, its position and the tensor: never generated code that compiles
but computes something else.

Modules, one job each, importing only the ones above them:
- ``arithmetic``: TFLM's parameter arithmetic (``tflm_round``, ``quantize_multiplier``, ``activation_range``,
  ``input_radius``, ``same_or_valid``).
- ``subgraph``: ``EngineError``, and the flatbuffer's one subgraph (``Graph``) as the lowering reads it.
- ``lowering``: each operator lowered to a kernel call (``Step``), checking everything the kernels assume;
  ``LOWERINGS`` is the one table of ops and their lowerings, ``SUPPORTED`` its keys.
- ``arena_plan``: the static arena's offsets from tensor lifetimes (``Plan``, ``plan_arena``).
- ``emit``: the header and source text (``Names``, ``Generated``, ``generate``) and the files (``write``).
- ``report``: the export report's figures (``summary``, ``layers``, ``total_macs``, ``peak``), flash measured with
  the kernels in ``KERNELS_DIR`` (``kernel_sources``, ``measure_flash``; ``compile_kernels_ahead`` starts the
  kernels' objects early) and TFLM's for comparison (``tflm_flash``).
"""

from __future__ import annotations

from bisup.converters.engine.arena_plan import ARENA_ALIGNMENT, Plan, plan_arena
from bisup.converters.engine.arithmetic import (
    INT8_MAX,
    INT8_MIN,
    activation_range,
    input_radius,
    quantize_multiplier,
    same_or_valid,
    tflm_round,
)
from bisup.converters.engine.emit import Generated, Names, generate, write
from bisup.converters.engine.lowering import SUPPORTED, Step
from bisup.converters.engine.report import (
    KERNELS_DIR,
    TFLM_RUNTIME_BYTES,
    TFLM_RUNTIME_SOURCE,
    compile_kernels_ahead,
    kernel_set,
    kernel_sources,
    layers,
    measure_flash,
    peak,
    summary,
    tflm_flash,
    total_macs,
)
from bisup.converters.engine.subgraph import EngineError, Graph

__all__ = [
    "ARENA_ALIGNMENT",
    "INT8_MAX",
    "INT8_MIN",
    "KERNELS_DIR",
    "SUPPORTED",
    "TFLM_RUNTIME_BYTES",
    "TFLM_RUNTIME_SOURCE",
    "EngineError",
    "Generated",
    "Graph",
    "Names",
    "Plan",
    "Step",
    "activation_range",
    "generate",
    "input_radius",
    "kernel_set",
    "compile_kernels_ahead",
    "kernel_sources",
    "layers",
    "measure_flash",
    "peak",
    "plan_arena",
    "quantize_multiplier",
    "same_or_valid",
    "summary",
    "tflm_flash",
    "tflm_round",
    "total_macs",
    "write",
]
