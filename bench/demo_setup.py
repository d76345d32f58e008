"""What the transport benchmarks share: the cached demo bundle, its remote models, and one test input."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class DemoSetup:
    bundle: object  # bisup.firmware_bridge.bundle.Bundle
    cache: Path  # the demo's model cache (local.keras, remote.keras)
    x_q: np.ndarray  # one int8 test input, as a device would send it
    label: int
    confidence: int

    def float_remote(self) -> Path:
        """The remote CNN as a float TFLite model, so model time does not hide the transport."""
        path = self.cache / "remote-float.tflite"
        if not path.is_file():
            import keras
            import tensorflow as tf

            keras.models.load_model(self.cache / "remote.keras").export(self.cache / "remote-savedmodel",
                                                                         verbose=False)
            path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(self.cache / "remote-savedmodel")).convert())
        return path


def demo_setup() -> DemoSetup:
    """Run `bisup demo` once if its artefacts are not cached, then load them."""
    from bisup.converters.errors import BisupError
    from bisup.examples import demo, digits
    from bisup.firmware_bridge.bundle import Bundle
    from bisup.firmware_bridge.device_model import LocalModel

    out = demo.cache_root() / "demo"
    try:
        Bundle.load(out)
    except BisupError:  # not run yet, or written by an older bisup
        demo.run(progress=lambda m: print(f"setup: {m}", file=sys.stderr))
    x_q, labels, conf = LocalModel(out / "model.tflite").run(digits.splits(0)["test"][0][:1])
    return DemoSetup(Bundle.load(out), demo.cache_root() / f"{demo.MODEL_VERSION}-seed0", x_q[0], int(labels[0]),
                     int(conf[0]))
