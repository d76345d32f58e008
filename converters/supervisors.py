"""Supervisors: confidence scores computed inside the model graph, from TFLM-supported ops only.

Every supervisor maps class probabilities ``(batch, K)`` to a confidence ``(batch, 1)`` where
*higher means more trustworthy*, so the firmware's decision is always ``confidence >= threshold``.
Uncertainty scores (entropy, DeepGini) are therefore flipped into confidences in ``[0, 1]``.

TFLM has no TOPK_V2, so the margin's runner-up is found without sorting: the second largest
probability is the smallest of the K leave-one-out maxima (MUL + REDUCE_MAX + REDUCE_MIN). That is
exact, ties included, which matters in int8 where ties at 1/256 resolution are common.

Each built-in has a numpy reference (``bisup.converters.scores``) used by the tests and the host.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from bisup.converters import scores
from bisup.converters.errors import ConversionError

if TYPE_CHECKING:
    import tensorflow as tf


class Supervisor(keras.layers.Layer):
    """Base class: ``call(probs, logits=None) -> (batch, 1)`` confidence, higher is surer."""

    kind = "custom"
    needs_logits = False

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, int]:
        return (input_shape[0], 1)


@keras.saving.register_keras_serializable(package="bisup")
class MaxSoftmax(Supervisor):
    """Largest class probability (Hendrycks & Gimpel's baseline)."""

    kind = "max-softmax"

    def call(self, probs: tf.Tensor, logits: tf.Tensor | None = None) -> tf.Tensor:
        return keras.ops.max(probs, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="bisup")
class Margin(Supervisor):
    """Top-1 minus top-2 probability, without TOPK_V2 (see the module docstring)."""

    kind = "margin"

    def call(self, probs: tf.Tensor, logits: tf.Tensor | None = None) -> tf.Tensor:
        k = probs.shape[-1]
        keep = keras.ops.convert_to_tensor((1.0 - np.eye(k)).astype("float32"))
        leave_one_out = keras.ops.max(keras.ops.expand_dims(probs, 1) * keep, axis=-1)
        second = keras.ops.min(leave_one_out, axis=-1, keepdims=True)
        return keras.ops.max(probs, axis=-1, keepdims=True) - second


@keras.saving.register_keras_serializable(package="bisup")
class Entropy(Supervisor):
    """``1 - H(p) / log K``; log-probabilities come from LOG_SOFTMAX, which TFLM runs in int8."""

    kind = "entropy"
    needs_logits = True

    def call(self, probs: tf.Tensor, logits: tf.Tensor | None = None) -> tf.Tensor:
        if logits is None:
            raise ConversionError("the entropy supervisor needs the model's logits")
        k = probs.shape[-1]
        log_probs = keras.ops.log_softmax(logits, axis=-1)
        neg_entropy = keras.ops.sum(probs * log_probs, axis=-1, keepdims=True)
        return 1.0 + neg_entropy * np.float32(1.0 / np.log(k))


@keras.saving.register_keras_serializable(package="bisup")
class DeepGini(Supervisor):
    """``sum p^2``, i.e. one minus the DeepGini impurity (Feng et al. 2020)."""

    kind = "deepgini"

    def call(self, probs: tf.Tensor, logits: tf.Tensor | None = None) -> tf.Tensor:
        return keras.ops.sum(probs * probs, axis=-1, keepdims=True)


BUILTIN: dict[str, type[Supervisor]] = {
    cls.kind: cls for cls in (MaxSoftmax, Margin, Entropy, DeepGini)
}


def reference(kind: str, probs: np.ndarray) -> np.ndarray:
    """Numpy reference of a built-in supervisor, in float64, shape ``(batch,)``."""
    try:
        return scores.score(kind, probs)
    except ValueError as exc:
        raise ConversionError(str(exc)) from exc


def _import_object(spec: str):
    """Import ``module:attr`` or ``path/to/file.py:attr``."""
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConversionError(f"supervisor file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConversionError(f"cannot import supervisor module {target!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConversionError(f"{target} has no supervisor {attr!r}") from exc


def resolve(spec: str | keras.layers.Layer) -> keras.layers.Layer:
    """A built-in name, a Keras layer instance, or ``module:Class`` / ``file.py:Class``."""
    if isinstance(spec, keras.layers.Layer):
        return spec
    if spec in BUILTIN:
        return BUILTIN[spec]()
    if ":" not in spec:
        raise ConversionError(
            f"unknown supervisor {spec!r}; choose one of {', '.join(BUILTIN)} "
            "or give your own Keras layer as module:Class or file.py:Class"
        )
    obj = _import_object(spec)
    layer = obj() if isinstance(obj, type) else obj
    if not isinstance(layer, keras.layers.Layer):
        raise ConversionError(f"supervisor {spec!r} is not a Keras layer (got {type(layer).__name__})")
    return layer


def kind_of(layer: keras.layers.Layer) -> str:
    """The report's name for a supervisor: the built-in kind, or the custom layer's class name."""
    return layer.kind if type(layer) in BUILTIN.values() else type(layer).__name__
