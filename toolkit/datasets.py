"""Load and validate the ``.npz`` sets users pass: calibration, evaluation, validation.

Every problem becomes one line that names the file, what is wrong and what to do, because a
shape or dtype slip here would otherwise surface as an obscure converter error minutes later.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from bisup.converters.errors import BisupError

MIN_CALIBRATION_SAMPLES = 100  # full-int8 calibration wants 100-500 representative inputs


class DataError(BisupError, ValueError):
    """A data file that is missing, unreadable or does not match the model."""


NPZ_FIX = "save one with np.savez(path, x=..., y=...)"


def _not_npz(path: Path) -> str:
    """Why ``path`` is not an .npz archive, in the user's terms; never numpy's advice to unpickle it."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"\x93NUMPY"):
        what = " (it is a single .npy array)"
    elif head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        what = " (it is text, e.g. CSV)"
    else:
        what = ""
    return f"data file {path} is not an .npz archive with arrays x (and y){what}; {NPZ_FIX}"


def check_npz(path: str | Path) -> Path:
    """Cheap checks a command makes before it imports TensorFlow or loads a model: ``path`` is a readable
    .npz archive with an array ``x``. Reads the archive's directory only, not the arrays."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"data file {path} is a directory; give an .npz file with arrays x (and y)")
    try:
        is_zip = zipfile.is_zipfile(path)
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                names = [name.removesuffix(".npy") for name in archive.namelist()]
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"data file {path} cannot be read ({getattr(exc, 'strerror', None) or exc})") from exc
    if not is_zip:
        raise DataError(_not_npz(path))
    if "x" not in names:
        raise DataError(f"{path} has no array 'x' (found {sorted(names) or 'none'}); {NPZ_FIX}")
    return path


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` (float, cast to float32) and optional ``y`` (int labels) from an ``.npz`` file."""
    path = check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if "pickle" in str(exc):  # object arrays; numpy suggests allow_pickle, which would run the file's code
            raise DataError(f"data file {path} holds Python objects, not numeric arrays; x and y must be numbers "
                            f"(float inputs, integer labels): {NPZ_FIX}") from exc
        raise DataError(f"data file {path} is not a readable .npz archive ({exc}); {NPZ_FIX}") from exc
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


def check_matches(x: np.ndarray, y: np.ndarray | None, input_shape: tuple[int, ...], num_classes: int,
                  path: str | Path) -> None:
    """Sample shape equal to the model's input shape; labels within the model's classes."""
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"{path}: samples have shape {tuple(x.shape[1:])} but the model takes {tuple(input_shape)} "
            "(x must hold the model's input shape without the batch dimension)"
        )
    if y is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path}: labels span {y.min()}..{y.max()} but the model has {num_classes} classes")


def check_calibration_size(x: np.ndarray, path: str | Path) -> None:
    if len(x) < MIN_CALIBRATION_SAMPLES:
        raise DataError(
            f"{path} has {len(x)} samples; full-int8 calibration needs at least "
            f"{MIN_CALIBRATION_SAMPLES} representative inputs (100-500 is the usual advice)"
        )
