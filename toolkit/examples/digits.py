"""The embedded example: scikit-learn's digits (shipped with the package, no download).

It gives every command something real to run on a fresh machine: a small CNN that fits all the
board profiles, with splits written as the ``.npz`` files the CLI takes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bisup.training import Progress, seed_everything, train


def splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified train/val/test splits (60/20/20) of digits as float32 ``(N, 8, 8, 1)`` in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def shifted(x: np.ndarray, seed: int, max_degrees: float = 20.0, noise: float = 0.15) -> np.ndarray:
    """A deployment stream unlike training (the flywheel's and the drift alarm's): each digit rotated by
    up to ``max_degrees`` either way, with Gaussian noise, clipped to [0, 1]. Deterministic in ``seed``."""
    from scipy.ndimage import rotate

    rng = np.random.default_rng(seed)
    turned = np.stack([rotate(image, rng.uniform(-max_degrees, max_degrees), reshape=False, order=1) for image in x])
    return np.clip(turned + rng.normal(0, noise, x.shape), 0, 1).astype(np.float32)


def local_cnn(num_classes: int = 10):
    """A board-sized CNN (about 9 KB int8): two small convolutions and a dense layer with logits."""
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes),
        ],
        name="digits_local_cnn",
    )


def remote_cnn(num_classes: int = 10):
    """The 'big' remote model: about 30x the local CNN's parameters, with dropout."""
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu", padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(num_classes),
        ],
        name="digits_remote_cnn",
    )








def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_example(out_dir: Path, epochs: int = 40, seed: int = 0, progress: Progress = _stderr,
                  remote_epochs: int | None = 40) -> dict[str, Path]:
    """Train the local CNN and write ``digits.keras`` and the splits as ``.npz``; with ``remote_epochs``
    (None: skip) also the larger remote CNN as ``remote.keras``, which calibrate, bridge and hil take.

    ``calib`` is the training split, ``val`` and ``test`` the held-out halves, and ``holdout`` their
    union: the export's figures use it because AUROC over a few dozen errors needs every sample.
    ``drifted_{calib,val,test}`` are the same splits rotated and noised (``shifted``): a deployment
    that drifted, for trying the drift alarm and ``bisup retrain``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = splits(seed)
    seed_everything(seed)
    model = train(local_cnn(), *parts["train"], epochs=epochs, label="local CNN", progress=progress)
    paths = {"model": out_dir / "digits.keras"}
    model.save(paths["model"])
    if remote_epochs:
        seed_everything(seed)
        remote = train(remote_cnn(), *parts["train"], epochs=remote_epochs, label="remote CNN", progress=progress)
        paths["remote"] = out_dir / "remote.keras"
        remote.save(paths["remote"])
    for name, file in (("train", "calib"), ("val", "val"), ("test", "test")):
        paths[file] = out_dir / f"{file}.npz"
        x, y = parts[name]
        np.savez(paths[file], x=x, y=y)
    paths["holdout"] = out_dir / "holdout.npz"
    np.savez(paths["holdout"], **{k: np.concatenate([parts["val"][i], parts["test"][i]]) for i, k in enumerate("xy")})
    drifted = (("train", "drifted_calib"), ("val", "drifted_val"), ("test", "drifted_test"))
    for offset, (name, file) in enumerate(drifted):
        paths[file] = out_dir / f"{file}.npz"
        x, y = parts[name]
        np.savez(paths[file], x=shifted(x, 10 * seed + offset + 1), y=y)
    return paths
