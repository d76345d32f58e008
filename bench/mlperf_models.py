"""The three MLPerf Tiny classification models, written from their published architecture descriptions.

    python bench/mlperf_models.py [--copy-to /tmp/mlperf]

- ``kws``: DS-CNN on a 49x10x1 MFCC, 12 classes (about 2.66 M MACs);
- ``vww``: MobileNetV1 alpha=0.25 on 96x96x3, 2 classes (about 7.49 M MACs);
- ``ic``: ResNet-8 on 32x32x3, 10 classes (about 12.5 M MACs).

Layer sizes were checked against ``mlcommons/tiny`` ``benchmark/training``; the code is ours. The heads give
logits, not softmax: ``bisup export`` adds its own softmax on the supervisor path.

The datasets (Speech Commands, COCO person, CIFAR-10) are not downloaded: each model is trained for a few
epochs on generated data with class structure (a low-resolution random template per class, shifted, scaled and
noised per sample), so that activations and hence the int8 quantization ranges look like those of a trained
network rather than of random weights. Speed figures do not depend on the weights' values, but the arena,
the requantization multipliers and byte-exactness are checked on realistic ranges this way.

Trained models and their calibration sets are cached under ``<bisup cache>/mlperf/<VERSION>/`` and reused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

VERSION = "mlperf-tiny-v1"  # bump when a definition, the data or the training changes: the cache is keyed by it
CALIB_SAMPLES = 256
SEED = 0


def _conv_bn_relu(x, filters: int, kernel: int | tuple[int, int], strides: int = 1):
    import keras

    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)  # 0.9: moving statistics settle within a short fit
    return keras.layers.ReLU()(x)


def _depthwise_bn_relu(x, strides: int = 1):
    import keras

    x = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    return keras.layers.ReLU()(x)


def kws_ds_cnn() -> keras.Model:
    """DS-CNN: conv 64 10x4 stride 2, four depthwise-separable blocks of 64, average pool, dense 12."""
    import keras

    inputs = keras.Input((49, 10, 1))
    x = _conv_bn_relu(inputs, 64, (10, 4), strides=2)  # 25x5x64
    for _ in range(4):
        x = _depthwise_bn_relu(x)
        x = _conv_bn_relu(x, 64, 1)
    x = keras.layers.AveragePooling2D(pool_size=(25, 5))(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(12)(x), name="kws_ds_cnn")


def vww_mobilenet_v1() -> keras.Model:
    """MobileNetV1 with width multiplier 0.25: conv 8 stride 2, thirteen depthwise-separable blocks."""
    import keras

    # (pointwise filters, depthwise stride) of MobileNetV1's blocks at alpha = 0.25
    blocks = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2)] + [(128, 1)] * 5 + [(256, 2), (256, 1)]
    inputs = keras.Input((96, 96, 3))
    x = _conv_bn_relu(inputs, 8, 3, strides=2)  # 48x48x8
    for filters, strides in blocks:
        x = _depthwise_bn_relu(x, strides)
        x = _conv_bn_relu(x, filters, 1)
    x = keras.layers.AveragePooling2D(pool_size=(3, 3))(x)  # 3x3x256 -> 1x1x256
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="vww_mobilenet_v1")


def ic_resnet8() -> keras.Model:
    """ResNet-8 (v1): conv 16, three residual stacks of 16/32/64 filters (1x1 stride-2 shortcuts), pool, dense."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = _conv_bn_relu(inputs, 16, 3)
    for filters, strides in ((16, 1), (32, 2), (64, 2)):
        y = _conv_bn_relu(x, filters, 3, strides)
        y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        y = keras.layers.BatchNormalization(momentum=0.9)(y)
        if strides != 1:  # the identity path changes shape with the stack
            x = keras.layers.Conv2D(filters, 1, strides=strides, padding="same")(x)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.AveragePooling2D(pool_size=8)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="ic_resnet8")


@dataclass(frozen=True)
class Spec:
    build: Callable[[], keras.Model]
    classes: int
    train_samples: int
    epochs: int
    scale: float  # input amplitude: MFCC features span a few units, images [0, 1]
    published_macs: float  # the MLPerf Tiny figure the definition is checked against


MODELS: dict[str, Spec] = {
    "kws": Spec(kws_ds_cnn, 12, 1200, 4, 4.0, 2.66e6),
    "vww": Spec(vww_mobilenet_v1, 2, 600, 4, 1.0, 7.49e6),
    "ic": Spec(ic_resnet8, 10, 1200, 4, 1.0, 12.5e6),
}


def generated_data(shape: tuple[int, ...], classes: int, count: int, scale: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples with class structure: per class a low-resolution template (a coarse random grid blown up in 8x4
    blocks), per sample that template circularly shifted by up to 2 pixels, scaled by 0.7..1.3 and with Gaussian noise.

    Images are mapped into [0, 1] like normalised pixels; with ``scale`` != 1 the values are centred and
    spread like cepstral coefficients instead.
    """
    rng = np.random.default_rng(seed)
    height, width, channels = shape
    coarse = rng.normal(size=(classes, max(2, height // 8), max(2, width // 4), channels))
    templates = np.stack([np.stack([np.kron(c[..., k], np.ones((8, 4)))[:height, :width] for k in range(channels)],
                                   axis=-1) for c in coarse])
    # coarse grids can be a little short of the full size: repeat their last row/column
    templates = np.pad(templates, ((0, 0), (0, height - templates.shape[1]), (0, width - templates.shape[2]), (0, 0)),
                       mode="edge")
    y = rng.integers(0, classes, count)
    x = templates[y] * rng.uniform(0.7, 1.3, (count, 1, 1, 1))
    shifts = rng.integers(-2, 3, (count, 2))
    x = np.stack([np.roll(sample, tuple(s), axis=(0, 1)) for sample, s in zip(x, shifts, strict=True)])
    x = x + rng.normal(0, 0.5, x.shape)
    if scale == 1.0:
        x = 1 / (1 + np.exp(-x))
    else:
        x = x * scale
    return x.astype(np.float32), y.astype(np.int64)


def macs(model: keras.Model) -> int:
    """Multiply-accumulates of one inference over convolutions and dense layers (what MLPerf Tiny quotes)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = layer.kernel_size[0] * layer.kernel_size[1]
            total += int(np.prod(layer.output.shape[1:])) * kernel
        elif isinstance(layer, keras.layers.Conv2D):
            kernel = layer.kernel_size[0] * layer.kernel_size[1] * layer.input.shape[-1]
            total += int(np.prod(layer.output.shape[1:])) * kernel
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def cache_dir() -> Path:
    from bisup.examples.demo import cache_root

    return cache_root() / "mlperf" / VERSION


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure(name: str, progress: Callable[[str], None] = _stderr) -> tuple[Path, Path]:
    """``<name>.keras`` and ``<name>_calib.npz`` in the cache, trained on first use and reused afterwards."""
    from bisup.training import seed_everything, train

    folder = cache_dir()
    model_path, calib_path = folder / f"{name}.keras", folder / f"{name}_calib.npz"
    if model_path.is_file() and calib_path.is_file():
        progress(f"{name}: cached at {model_path}")
        return model_path, calib_path
    folder.mkdir(parents=True, exist_ok=True)
    spec = MODELS[name]
    seed_everything(SEED)
    model = spec.build()
    shape = tuple(model.input.shape[1:])
    x, y = generated_data(shape, spec.classes, spec.train_samples + CALIB_SAMPLES, spec.scale, SEED)
    progress(f"{name}: {macs(model) / 1e6:.3f} M MACs (MLPerf Tiny: {spec.published_macs / 1e6:.2f} M), "
             f"training {spec.epochs} epochs on {spec.train_samples} generated samples")
    train(model, x[:spec.train_samples], y[:spec.train_samples], spec.epochs, name, progress)
    partial = model_path.with_suffix(".partial.keras")
    model.save(partial)
    np.savez(calib_path, x=x[spec.train_samples:], y=y[spec.train_samples:])
    partial.replace(model_path)  # written last: a killed run never leaves a model without its calibration set
    return model_path, calib_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of kws,vww,ic")
    parser.add_argument("--copy-to", type=Path, help="also copy <name>.keras and <name>_calib.npz here")
    args = parser.parse_args()
    for name in args.models.split(","):
        model_path, calib_path = ensure(name)
        if args.copy_to:
            args.copy_to.mkdir(parents=True, exist_ok=True)
            shutil.copy(model_path, args.copy_to / model_path.name)
            shutil.copy(calib_path, args.copy_to / calib_path.name)
        print(f"{name}: {model_path} {calib_path}")


if __name__ == "__main__":
    main()
