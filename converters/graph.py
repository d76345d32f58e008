"""Load a user's model and attach a supervisor, giving one graph with two named outputs.

The exported graph computes ``scores`` (softmax probabilities) and ``confidence`` (the supervisor)
side by side, so the board gets both from a single ``Invoke()``. When the model ends in a softmax
we cut it back to its logits and apply the softmax ourselves: the int8 SOFTMAX then has the
quantization TFLM demands (scale 1/256, zero point -128), and entropy can use LOG_SOFTMAX.
"""

from __future__ import annotations

import inspect
import zipfile
from pathlib import Path
from weakref import WeakKeyDictionary

import keras
import numpy as np

from bisup.converters.errors import ConversionError
from bisup.converters.scores import looks_like_probabilities
from bisup.converters.signature import CONFIDENCE, SCORES
from bisup.converters.supervisors import Supervisor

INPUT = "input"


def load_model(path: str | Path) -> keras.Model:
    """A ``.keras`` file, or a SavedModel directory wrapped as a Keras model."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"model {path} does not exist")
    if path.is_dir():
        return _load_saved_model(path)
    if path.suffix not in (".keras", ".h5"):
        raise ConversionError(f"model {path} must be a .keras file or a SavedModel directory")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ConversionError(f"model file {path} is corrupt: a .keras file is a zip archive and this is not one")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged archive
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"model file {path} is corrupt or not a Keras model ({reason})") from exc


def _load_saved_model(path: Path) -> keras.Model:
    if not (path / "saved_model.pb").is_file():
        raise ConversionError(f"{path} is a directory but not a SavedModel (no saved_model.pb)")
    import tensorflow as tf

    try:
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    except (KeyError, OSError, ValueError) as exc:
        raise ConversionError(f"SavedModel {path} has no usable serving_default signature: {exc}") from exc
    specs = list(signature.structured_input_signature[1].values())
    if len(specs) != 1:
        raise ConversionError(f"SavedModel {path} has {len(specs)} inputs; bisup exports single-input models")
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    inputs = keras.Input(shape=tuple(specs[0].shape[1:]), name=INPUT)
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ConversionError(f"SavedModel {path} has outputs {sorted(outputs)}; expected one")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs, name=path.name)


def _is_softmax(activation: object) -> bool:
    return getattr(activation, "__name__", "") == "softmax"


def logits_model(model: keras.Model) -> keras.Model | None:
    """The model cut back to its logits, or None when its last layer is not a softmax we can undo."""
    last = model.layers[-1] if model.layers else None
    if last is None:
        return None
    if isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and _is_softmax(last.activation)
    ):
        return keras.Model(model.inputs, last.input)
    if _is_softmax(getattr(last, "activation", None)):
        config = last.get_config() | {"activation": "linear", "name": f"{last.name}_logits"}
        twin = type(last).from_config(config)
        twin.build(last.input.shape)
        twin.set_weights(last.get_weights())
        return keras.Model(model.inputs, twin(last.input))
    return None


def input_shape(model: keras.Model) -> tuple[int, ...]:
    """The model's per-sample input shape; TFLM needs every dimension fixed."""
    if len(model.inputs) != 1:
        raise ConversionError(f"the model has {len(model.inputs)} inputs; bisup exports single-input models")
    shape = tuple(model.inputs[0].shape[1:])
    if any(dim is None for dim in shape):
        raise ConversionError(f"the model's input shape {shape} has unknown dimensions; fix them for TFLM")
    return shape


def num_classes(model: keras.Model, path: str | Path) -> int:
    """The classes the model scores. A single output unit (a sigmoid binary classifier) is refused by name:
    every supervisor compares one score per class, so a one-unit model would otherwise surface as labels
    that do not fit its "1 classes"."""
    units = int(model.outputs[0].shape[-1])
    if units < 2:
        raise ConversionError(f"model {path} has a single-unit (sigmoid) output, which bisup does not support: the "
                              "supervisors need one score per class; give the model a Dense(2) output (softmax or "
                              "logits) trained on labels 0 and 1")
    return units


# Whether a model with no softmax to cut gives probabilities, by model: the export asks twice (the temperature,
# then the supervisor), and each answer cost a Keras predict (the first one a trace of the model).
_GIVES_PROBABILITIES: WeakKeyDictionary[keras.Model, bool] = WeakKeyDictionary()


def logits_source(model: keras.Model, sample: np.ndarray, outputs: np.ndarray | None = None) -> keras.Model | None:
    """A model giving logits: the model cut before its softmax, the model itself when it already
    gives logits, or None when it ends in probabilities we cannot undo. ``outputs``, the model's
    predictions on ``sample`` when the caller has them, spares predicting them here."""
    cut = logits_model(model)
    if cut is not None:
        return cut
    if model not in _GIVES_PROBABILITIES:
        raw = np.asarray(model.predict(sample, verbose=0)) if outputs is None else outputs
        _GIVES_PROBABILITIES[model] = looks_like_probabilities(raw)
    return None if _GIVES_PROBABILITIES[model] else model


def attach_supervisor(
    model: keras.Model, supervisor: keras.layers.Layer, sample: np.ndarray, temperature: float = 1.0
) -> keras.Model:
    """One model with outputs ``{"scores": probabilities, "confidence": (batch, 1)}``.

    ``temperature`` divides the logits on the confidence path only (see ``temperature``).
    """
    shape = input_shape(model)
    inputs = keras.Input(shape=shape, name=INPUT)
    source = logits_source(model, sample)
    logits = source(inputs) if source is not None else None
    probs = keras.ops.softmax(logits, axis=-1) if logits is not None else model(inputs)
    if logits is None and (getattr(supervisor, "needs_logits", False) or temperature != 1.0):
        raise ConversionError(
            f"the {type(supervisor).__name__} supervisor needs logits (entropy or a temperature), but the model "
            "ends in probabilities bisup cannot undo; export a model whose last layer gives logits"
        )
    confidence = supervise(supervisor, probs, logits, temperature)
    return keras.Model(inputs, {SCORES: probs, CONFIDENCE: confidence}, name="bisup_supervised")


def supervise(supervisor: keras.layers.Layer, probs: keras.KerasTensor, logits: keras.KerasTensor | None,
              temperature: float = 1.0) -> keras.KerasTensor:
    """The supervisor's ``(batch, 1)`` confidence for one head: shared by the single-exit export and every
    exit of a multi-exit one. ``logits`` may be None (a model ending in probabilities)."""
    if temperature != 1.0:
        logits = logits * np.float32(1.0 / temperature)
        sup_probs = keras.ops.softmax(logits, axis=-1)
    else:
        sup_probs = probs
    takes_logits = isinstance(supervisor, Supervisor) or "logits" in inspect.signature(supervisor.call).parameters
    confidence = supervisor(sup_probs, logits=logits) if takes_logits else supervisor(sup_probs)
    per_row = tuple(confidence.shape[1:])
    if int(np.prod([d if d is not None else 2 for d in per_row])) != 1:
        raise ConversionError(
            f"the {type(supervisor).__name__} supervisor returns shape {tuple(confidence.shape)}, {per_row} per "
            "input; a supervisor returns one confidence per input, shape (batch,) or (batch, 1): reduce over the "
            "classes (e.g. keras.ops.max(probs, axis=-1))"
        )
    confidence = keras.ops.reshape(confidence, (-1, 1))
    return confidence
