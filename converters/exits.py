"""Multi-exit models (SPINN, EENet): exit heads after chosen layers of the user's own Keras model.

An exit is a small head (average pooling down to about 2x2, flatten, dense logits) on the output of
a *cut*: a layer whose output alone determines everything after it. Only there can the network be
cut into stages that pass one activation from the device to the next stage or to the cloud. A
layer that a skip connection jumps over is not a cut, and saying so by name beats exporting stages
that cannot be chained.

The multi-exit model is a Keras model with a dict of logits: ``exit1`` .. ``exitN`` in depth order,
then ``final`` (the original model's logits). The cut each head reads is recovered from the graph,
so the ``.keras`` file is the whole description: no sidecar to fall out of step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np

from bisup.converters import graph
from bisup.converters.errors import ConversionError

FINAL = "final"
HEAD = "bisup_exit{index}_{part}"
Progress = Callable[[str], None]


class ExitError(ConversionError):
    """A layer that cannot carry an exit, or a model that is not a multi-exit model."""


def exit_name(index: int) -> str:
    return f"exit{index}"


def functional(model: keras.Model) -> keras.Model:
    """The model as a functional graph. A Sequential is rebuilt from fresh copies of its layers (weights
    copied): calling its own layers again would give each a second node, and ``layer.output`` would
    still name the first one, outside the new graph."""
    if not isinstance(model, keras.Sequential):
        return model
    inputs = keras.Input(graph.input_shape(model), name=graph.INPUT)
    x = inputs
    for layer in model.layers:
        twin = type(layer).from_config(layer.get_config())
        x = twin(x)
        twin.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name=model.name)


def logits_model(model: keras.Model) -> keras.Model:
    """The model giving logits: exits are trained and supervised on logits, like the final exit."""
    model = functional(model)
    cut = graph.logits_model(model)
    return functional(cut) if cut is not None else model


def _layer(model: keras.Model, name: str) -> keras.layers.Layer:
    try:
        return model.get_layer(name)
    except ValueError:
        names = [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        raise ExitError(f"the model has no layer {name!r}; its layers are {', '.join(names)}") from None


def cut_tensor(model: keras.Model, name: str):
    """The output of layer ``name`` if the rest of the network depends on nothing else; ExitError if a
    branch crosses it."""
    layer = _layer(model, name)
    if layer is model.layers[-1]:
        raise ExitError(f"layer {name!r} is the model's last layer, which is the final exit already; "
                        "put exits on earlier layers")
    tensor = layer.output
    if len(tensor.shape) not in (2, 4):
        raise ExitError(f"layer {name!r} gives shape {tuple(tensor.shape)}; an exit needs (batch, H, W, C) "
                        "or (batch, features)")
    try:
        keras.Model(tensor, model.outputs[0])
    except ValueError:
        raise ExitError(f"layer {name!r} cannot be a cut: a branch (e.g. a skip connection) crosses it, so "
                        "the layers after it also need tensors from before it; choose a layer where all paths "
                        "meet (e.g. the Add that closes a residual block)") from None
    return tensor


def _head(tensor: keras.KerasTensor, classes: int, index: int) -> keras.KerasTensor:
    x = tensor
    if len(tensor.shape) == 4:
        h, w = int(tensor.shape[1]), int(tensor.shape[2])
        pool = (math.ceil(h / 2), math.ceil(w / 2))
        if pool != (1, 1):
            x = keras.layers.AveragePooling2D(pool, name=HEAD.format(index=index, part="pool"))(x)
        x = keras.layers.Flatten(name=HEAD.format(index=index, part="flatten"))(x)
    return keras.layers.Dense(classes, name=HEAD.format(index=index, part="dense"))(x)


def attach(model: keras.Model, at: list[str]) -> keras.Model:
    """A multi-exit model: one head per layer in ``at`` (in any order; exits go in depth order)."""
    if not at:
        raise ExitError("name at least one layer to put an exit after (--at LAYER[,LAYER...])")
    if len(model.outputs) != 1:
        raise ExitError(f"model {model.name!r} has {len(model.outputs)} outputs; give the original single-output "
                        "model (a multi-exit model from `bisup exits` already has its exits)")
    base = logits_model(model)
    if len(set(at)) != len(at):
        raise ExitError(f"layers {at} name one layer twice")
    order = {layer.name: position for position, layer in enumerate(base.layers)}
    tensors = {name: cut_tensor(base, name) for name in at}
    classes = int(base.outputs[0].shape[-1])
    outputs = {}
    for index, name in enumerate(sorted(at, key=order.__getitem__), start=1):
        outputs[exit_name(index)] = _head(tensors[name], classes, index)
    outputs[FINAL] = base.outputs[0]
    return keras.Model(base.inputs, outputs, name=f"{model.name}_exits")


def are_exit_names(names: list[str]) -> bool:
    """Whether a model's output names are those of a multi-exit model: ``exit1`` .. ``exitN`` and ``final``."""
    return FINAL in names and sorted(names) == sorted([exit_name(i) for i in range(1, len(names))] + [FINAL])


def exit_names(multi: keras.Model) -> list[str]:
    """``exit1`` .. ``exitN``, then ``final``; ExitError when ``multi`` is not a multi-exit model."""
    try:
        output = multi.output
    except AttributeError:  # a Sequential that was never called: certainly not ours
        output = None
    names = list(output.keys()) if isinstance(output, dict) else []
    exits = [exit_name(i) for i in range(1, len(names))]
    if not are_exit_names(names):
        raise ExitError(f"model {multi.name!r} is not a multi-exit model made by `bisup exits` "
                        f"(outputs {names or 'not a dict'})")
    return exits + [FINAL]


def cuts(multi: keras.Model) -> list[str]:
    """The layer each exit reads (its cut), in depth order: the layer whose output tensor is the exit head's
    input (found through the public ``layer.output``, not Keras's private tensor history)."""
    producers = {id(layer.output): layer.name for layer in multi.layers}
    names = []
    for index in range(1, len(exit_names(multi))):
        first = next(layer for layer in multi.layers if layer.name.startswith(f"bisup_exit{index}_"))
        names.append(producers[id(first.input)])
    return names


def cut_outputs(multi: keras.Model) -> list:
    """The cut tensors, in depth order."""
    return [multi.get_layer(name).output for name in cuts(multi)]


def tail(multi: keras.Model, stage: int) -> keras.Model:
    """The rest of the network after cut ``stage`` (1-based): activation in, final logits out. This is
    what the cloud runs when the device relays that activation."""
    tensors = cut_outputs(multi)
    if not 1 <= stage <= len(tensors):
        raise ExitError(f"stage {stage} has no cut; this model's cuts are stages 1..{len(tensors)}")
    return keras.Model(tensors[stage - 1], multi.output[FINAL], name=f"tail{stage}")


def _freeze_backbone(multi: keras.Model, trainable: bool) -> None:
    for layer in multi.layers:
        if not layer.name.startswith("bisup_exit"):
            layer.trainable = trainable


def train(multi: keras.Model, x: np.ndarray, y: np.ndarray, epochs: int = 30, joint: bool = False,
          progress: Progress = lambda message: None, distill: float = 0.5, temperature: float = 2.0,
          batch_size: int = 32, learning_rate: float = 3e-3) -> keras.Model:
    """Train the exit heads with the backbone frozen, or everything with ``joint``.

    Joint training uses EENet's recipe: an exit-weighted loss (deeper exits weigh more, weights
    ``i / N``) where each early exit mixes cross-entropy with distillation (KL at ``temperature``)
    from the final exit's softened output, which is not back-propagated through.
    """
    import tensorflow as tf

    names = exit_names(multi)
    _freeze_backbone(multi, joint)
    weights = [i / len(names) for i in range(1, len(names) + 1)]
    optimizer = keras.optimizers.Adam(learning_rate)
    variables = multi.trainable_variables
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            out = multi(xb, training=True)
            teacher = tf.nn.softmax(tf.stop_gradient(out[FINAL]) / temperature)
            loss = 0.0
            for name, weight in zip(names, weights, strict=True):
                if name == FINAL and not joint:
                    continue
                term = ce(yb, out[name])
                if name != FINAL and joint and distill > 0:
                    student = tf.nn.log_softmax(out[name] / temperature)
                    kl = tf.reduce_mean(tf.reduce_sum(teacher * (tf.math.log(teacher + 1e-9) - student), axis=-1))
                    term = (1 - distill) * term + distill * temperature ** 2 * kl
                loss += weight * term
        tape_grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(tape_grads, variables, strict=True))
        return loss

    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            step(tf.constant(x[batch], tf.float32), tf.constant(y[batch], tf.int64))
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            accuracy = accuracies(multi, x, y)
            progress(f"exits: epoch {epoch + 1}/{epochs}, train accuracy "
                     + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    _freeze_backbone(multi, True)
    return multi


def accuracies(multi: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Float top-1 accuracy of every exit."""
    out = multi.predict(x, verbose=0, batch_size=256)
    return {name: float((np.asarray(out[name]).argmax(axis=1) == y).mean()) for name in exit_names(multi)}
