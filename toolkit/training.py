"""Keras training helpers the library shares (``bisup exits``, ``bisup retrain``) and the examples use:
reproducible seeding and per-epoch progress lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

Progress = Callable[[str], None]


def epoch_reporter(total: int, label: str, progress: Progress):
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            acc = (logs or {}).get("accuracy", float("nan"))
            progress(f"{label}: epoch {epoch + 1}/{total}, train accuracy {acc:.3f}")

    return EpochProgress()


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and TF and make TF ops deterministic, before any model is built."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train(model: keras.Model, x: np.ndarray, y: np.ndarray, epochs: int, label: str, progress: Progress):
    """Fit with Adam on logits (call ``seed_everything`` first for a reproducible result)."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[epoch_reporter(epochs, label, progress)])
    return model
