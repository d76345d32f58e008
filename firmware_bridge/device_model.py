"""The exported int8 model as a device runs it: TFLM inference and the int8 confidence.

Shared by calibration (which chooses thresholds on exactly these outputs) and the virtual device
(which acts on them), so both see what a board computes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from bisup.converters import arena, tflite_model
from bisup.converters.errors import ConversionError
from bisup.converters.runners import TflmRunner, dequantize, quantize
from bisup.converters.signature import CONFIDENCE, SCORES
from bisup.firmware_bridge.relay import InputQuantization


class LocalModel:
    """The exported int8 model, run by TFLM exactly as the board would run it."""

    def __init__(self, path: str | Path, arena_bytes: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConversionError(f"local model {self.path} does not exist")
        self.model = self.path.read_bytes()
        try:
            self.info = tflite_model.read(self.model)
        except ConversionError as exc:
            raise ConversionError(f"local model {self.path}: {exc}; give the int8 model.tflite that `bisup export "
                                  "--out DIR` writes (DIR/model.tflite), not a .keras file") from exc
        missing = {SCORES, CONFIDENCE} - set(self.info.output_positions)
        if missing:
            names = " or ".join(sorted(missing))
            raise ConversionError(f"{self.path} has no {names} output; export it with bisup export")
        size = arena_bytes or arena.recommended(arena.minimum_arena(self.path))
        self.runner = TflmRunner(self.model, self.info, size)
        self.confidence = self.info.output(CONFIDENCE)
        self.num_classes = int(np.prod(self.info.output(SCORES).shape))
        inp = self.info.inputs[0]
        self.quantization = InputQuantization(inp.scale, inp.zero_point, tuple(inp.shape[1:]))

    @property
    def model_hash(self) -> bytes:
        """SHA-256 of the flatbuffer, as a device reports it in HELLO."""
        return hashlib.sha256(self.model).digest()

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """int8 inputs, predicted labels and int8 confidences for float inputs ``x``."""
        x_q = quantize(x, self.info.inputs[0])
        out = self.runner.run(x_q)
        return x_q, out[SCORES].argmax(axis=1), out[CONFIDENCE][:, 0].astype(np.int32)

    def threshold_float(self, threshold_int8: int) -> float:
        """The int8 threshold in the dequantized units of the confidence output."""
        return float(dequantize(np.array([threshold_int8]), self.confidence)[0])
