"""Load and validate the ``.npz`` sets users pass: calibration, evaluation, validation.

Every problem becomes one line that names the file, what is wrong and what to do, because a
shape or dtype slip here would otherwise surface as an obscure converter error minutes later.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from converters.errors import BisupError

MIN_CALIBRATION_SAMPLES = 100  # full-int8 calibration wants 100-500 representative inputs


class DataError(BisupError, ValueError):
    """A data file that is missing, unreadable or does not match the model."""


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` (float, cast to float32) and optional ``y`` (int labels) from an ``.npz`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"data file {path} is not a readable .npz archive ({exc})") from exc
    if "x" not in arrays:
        found = sorted(arrays) or "none"
        raise DataError(f"{path} has no array 'x' (found {found}); save it with np.savez(path, x=..., y=...)")
    x = arrays["x"]
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: x is {x.dtype}, expected float32 inputs scaled as the model expects")
    y = arrays.get("y")
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise DataError(f"{path}: y must be a 1-D array of integer labels, got {y.dtype} with shape {y.shape}")
        if len(y) != len(x):
            raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)} labels")
    return x.astype(np.float32), (y.astype(np.int64) if y is not None else None)


def check_matches(x: np.ndarray, y: np.ndarray | None, input_shape: tuple[int, ...], num_classes: int, path) -> None:
    """Sample shape equal to the model's input shape; labels within the model's classes."""
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"{path}: samples have shape {tuple(x.shape[1:])} but the model takes {tuple(input_shape)} "
            "(x must hold the model's input shape without the batch dimension)"
        )
    if y is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path}: labels span {y.min()}..{y.max()} but the model has {num_classes} classes")


def check_calibration_size(x: np.ndarray, path) -> None:
    if len(x) < MIN_CALIBRATION_SAMPLES:
        raise DataError(
            f"{path} has {len(x)} samples; full-int8 calibration needs at least "
            f"{MIN_CALIBRATION_SAMPLES} representative inputs (100-500 is the usual advice)"
        )
