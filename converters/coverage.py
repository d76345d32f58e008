"""Op coverage and the int8 graph rules a board enforces, checked before anything is flashed.

Static checks read the flatbuffer; the dynamic check (loading in the ``tflite-micro`` interpreter)
happens in ``arena``, whose first probe fails loudly if TFLM refuses the model.
"""

from __future__ import annotations

import math

from bisup.converters.errors import ConversionError
from bisup.converters.signature import CONFIDENCE, SCORES
from bisup.converters.tflite_model import ModelInfo
from bisup.converters.tflm_ops import RESOLVER_METHODS

# TFLM's int8 kernels reject other output quantizations (softmax_common.cc, log_softmax.cc).
FIXED_OUTPUT_QUANT = {"SOFTMAX": (1 / 256, -128), "LOG_SOFTMAX": (16 / 256, 127)}


def unsupported_ops(info: ModelInfo) -> list[str]:
    """Ops in the model that no ``MicroMutableOpResolver`` method can register."""
    return [op for op in info.ops if op not in RESOLVER_METHODS]


def check_ops(info: ModelInfo) -> None:
    missing = unsupported_ops(info)
    if missing:
        raise ConversionError(
            f"TFLite Micro cannot run op(s) {', '.join(missing)}; rewrite that part of the model "
            "(or the supervisor) with supported ops, e.g. REDUCE_MAX instead of TOPK_V2"
        )


def check_int8_io(info: ModelInfo) -> None:
    """Full int8: int8 input and outputs, and both named outputs present."""
    for tensor in (*info.inputs, *info.outputs):
        if tensor.dtype != "int8":
            raise ConversionError(f"tensor {tensor.name!r} is {tensor.dtype}, not int8; the export must be full int8")
    for name in (SCORES, CONFIDENCE):
        if name not in info.output_positions:
            raise ConversionError(f"the converted model has no output named {name!r} in its signature")


def check_fixed_quantization(info: ModelInfo) -> None:
    """SOFTMAX must output scale 1/256, zero point -128 (LOG_SOFTMAX 16/256, 127) for TFLM."""
    for op in info.operators:
        if op.op not in FIXED_OUTPUT_QUANT:
            continue
        scale, zero_point = FIXED_OUTPUT_QUANT[op.op]
        out = info.tensors[op.outputs[0]]
        if out.dtype == "int8" and not (math.isclose(out.scale, scale, rel_tol=1e-6) and out.zero_point == zero_point):
            raise ConversionError(
                f"{op.op} output {out.name!r} is quantized with scale {out.scale:g}, zero point "
                f"{out.zero_point}; TFLM requires {scale:g} and {zero_point}"
            )


def check_graph(info: ModelInfo) -> None:
    """Every static rule: int8 I/O, named outputs, TFLM op coverage, fixed softmax quantization."""
    check_int8_io(info)
    check_ops(info)
    check_fixed_quantization(info)
