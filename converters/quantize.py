"""Full-int8 conversion through a SavedModel, with TFLite builtin int8 ops only.

Keras 3 models convert through a SavedModel + ``from_saved_model``: concrete functions over Keras 3
resource variables fail during calibration (READ_VARIABLE). The endpoint returns a dict,
so the TFLite signature carries the output *names*; the converter reorders outputs, so callers
map them by name (see ``tflite_model``), never by position. SELECT_TF_OPS (Flex) is never enabled:
it cannot run on a board.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import keras
import numpy as np

from bisup.converters.errors import ConversionError
from bisup.converters.graph import INPUT
from bisup.converters.quiet import capture_fd

MAX_CALIBRATION_SAMPLES = 500


def _representative(calib_x: np.ndarray) -> Iterator[list[np.ndarray]]:
    for row in calib_x[:MAX_CALIBRATION_SAMPLES]:
        yield [row[None].astype(np.float32)]


def _unsupported_ops(log: str) -> list[str]:
    ops = set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", log))
    for line in re.findall(r"TF Select ops: ([\w, ]+)", log):
        ops.update(op.strip() for op in line.split(","))
    return sorted(ops)


def _export_saved_model(model: keras.Model, directory: str) -> None:
    """A SavedModel holding only the serving function and the variables it reads.

    Keras's ``ExportArchive`` saves the tracked model's whole object graph, tracing every layer again:
    half the conversion's CPU time for MobileNet (6.1 s of it against 3.1 s here). The converter reads
    only the signature, and the int8 flatbuffer is byte-identical (checked on the MLPerf Tiny models and
    the digits CNN)."""
    import tensorflow as tf

    spec = tf.TensorSpec((1, *model.inputs[0].shape[1:]), tf.float32, name=INPUT)
    serve = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    concrete = serve.get_concrete_function()
    module = tf.Module()
    module.serve = serve
    module.captured = list(concrete.variables)
    with capture_fd(2):
        tf.saved_model.save(module, directory, signatures={"serving_default": concrete})


@contextmanager
def _one_savedmodel_load() -> Iterator[None]:
    """TensorFlow's converter loads the SavedModel twice: ``from_saved_model`` for its signatures, ``convert`` again
    only for its graph debug info. Within the block the second load returns the first's object (loaded from the same
    files, and only read), which saves a second load: about 0.7 s of MobileNet's conversion. The flatbuffer is
    byte-identical (checked on the MLPerf Tiny models and the digits CNN). A TensorFlow without the private
    ``lite._load`` converts as before."""
    from tensorflow.lite.python import lite

    original = getattr(lite, "_load", None)
    if original is None:
        yield
        return
    loaded: dict[tuple, object] = {}

    def load_once(export_dir: str, tags: object = None, *args: object, **kwargs: object) -> object:
        key = (str(export_dir), repr(sorted(tags)) if isinstance(tags, (set, list, tuple)) else repr(tags), args,
               tuple(sorted(kwargs.items())))
        if key not in loaded:
            loaded[key] = original(export_dir, tags, *args, **kwargs)
        return loaded[key]

    lite._load = load_once
    try:
        yield
    finally:
        lite._load = original


def _layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model``, nested models and the layers a wrapper (e.g. Bidirectional) holds included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        for inner in ("layer", "forward_layer", "backward_layer"):
            if isinstance(getattr(layer, inner, None), keras.layers.Layer):
                yield getattr(layer, inner)


def check_convertible(model: keras.Model) -> None:
    """Refuse, by layer name, what is known to kill the int8 converter in native code.

    A recurrent layer that is not unrolled (LSTM, GRU, SimpleRNN) makes TensorFlow 2.21's converter
    die with SIGSEGV while it calibrates, with no Python error. Unrolled over a fixed sequence length
    it converts to builtin int8 ops (UNPACK, FULLY_CONNECTED, SPLIT, LOGISTIC, TANH, MUL, ADD) that
    TFLM runs; bisup's C engine has no UNPACK, so such a model is exported for TFLM only."""
    for layer in _layers(model):
        if isinstance(layer, keras.layers.RNN) and not layer.unroll:
            raise ConversionError(
                f"layer {layer.name!r} ({type(layer).__name__}) is recurrent and not unrolled, which crashes the "
                f"int8 converter; rebuild it with {type(layer).__name__}(..., unroll=True) over a fixed sequence "
                "length (TFLM runs the result; the C engine does not, so use model_data.cc)")


def to_int8_tflite(model: keras.Model, calib_x: np.ndarray) -> bytes:
    """Convert ``model`` to a full-int8 flatbuffer: int8 input and outputs, builtin int8 ops only."""
    import tensorflow as tf

    check_convertible(model)
    with tempfile.TemporaryDirectory(prefix="bisup-savedmodel-") as directory, _one_savedmodel_load():
        _export_saved_model(model, directory)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory, signature_keys=["serving_default"])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _representative(calib_x)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        try:
            with capture_fd(2) as log:
                return converter.convert()
        except Exception as exc:
            text = f"{log.text}\n{exc}"
            ops = _unsupported_ops(text)
            if ops:
                raise ConversionError(
                    f"the model uses ops with no int8 TFLite builtin: {', '.join(ops)}; "
                    "TFLM cannot run them and Flex (SELECT_TF_OPS) is never allowed"
                ) from exc
            last = [line for line in str(exc).splitlines() if line.strip()]
            raise ConversionError(f"int8 conversion failed: {last[-1] if last else type(exc).__name__}") from exc
