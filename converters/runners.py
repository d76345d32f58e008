"""Run an int8 model sample by sample: TFLM (the board oracle) and LiteRT (the host interpreter).

All runners take and return raw int8 tensors, so their outputs can be compared bit for bit, and
all return outputs keyed by signature name. LiteRT's default (XNNPACK) kernels differ from TFLM on
some inputs; its reference kernels (``BUILTIN_REF``) are offered to show where the gap comes from.
Only the TFLM numbers may be presented as what the device computes.
"""

from __future__ import annotations

import numpy as np

from bisup.converters.quiet import capture_fd
from bisup.converters.tflite_model import ModelInfo, Tensor


def quantize(x: np.ndarray, tensor: Tensor) -> np.ndarray:
    """Float to int8 with the tensor's affine parameters, as the device's input stage does."""
    q = np.round(np.asarray(x, dtype=np.float64) / tensor.scale) + tensor.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize_affine(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8 to real values in float64: the one dequantizer, so that calibration hands the remote exactly
    the floats the bridge will (both cast this to float32)."""
    return (np.asarray(q, dtype=np.float64) - zero_point) * scale


def dequantize(q: np.ndarray, tensor: Tensor) -> np.ndarray:
    return dequantize_affine(q, tensor.scale, tensor.zero_point)


class TflmRunner:
    """The ``tflite-micro`` interpreter; give it an arena known to work (see ``arena``)."""

    name = "tflm"

    def __init__(self, model: bytes, info: ModelInfo, arena_bytes: int):
        from tflite_micro.python.tflite_micro import runtime

        self._info = info
        with capture_fd(1):
            self._interpreter = runtime.Interpreter.from_bytes(model, arena_size=arena_bytes)

    def run(self, x_int8: np.ndarray) -> dict[str, np.ndarray]:
        rows: dict[str, list[np.ndarray]] = {name: [] for name in self._info.output_positions}
        for sample in x_int8:
            self._interpreter.set_input(sample[None], 0)
            self._interpreter.invoke()
            for name, position in self._info.output_positions.items():
                rows[name].append(np.array(self._interpreter.get_output(position)).reshape(-1))
        return {name: np.stack(values) for name, values in rows.items()}


class LiteRTRunner:
    """``ai_edge_litert``'s interpreter through the signature runner (outputs by name)."""

    def __init__(self, model: bytes, reference_kernels: bool = False):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
        self.name = "litert-reference" if reference_kernels else "litert-xnnpack"
        with capture_fd(2):
            interpreter = Interpreter(model_content=model, experimental_op_resolver_type=resolver)
            self._runner = interpreter.get_signature_runner("serving_default")

    def run(self, x_int8: np.ndarray) -> dict[str, np.ndarray]:
        rows: dict[str, list[np.ndarray]] = {}
        with capture_fd(2):  # LiteRT announces its XNNPACK delegate on the first invoke
            for sample in x_int8:
                for name, value in self._runner(input=sample[None]).items():
                    rows.setdefault(name, []).append(np.asarray(value).reshape(-1))
        return {name: np.stack(values) for name, values in rows.items()}
