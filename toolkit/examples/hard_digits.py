"""A harder multi-exit task made from scikit-learn's digits, so that exit policies can be told apart.

On the plain digits every exit of the demo's network is nearly always right and 360 test inputs separate
no two policies. Here each original digit is redrawn many times (rotated, shifted, rescaled in contrast,
noised, part of it occluded): early exits are right far less often than the last, and validation and
test hold thousands of inputs. Train, validation and test are drawn from *disjoint* originals (the
stratified 60/20/20 split of ``digits.splits``), so no test digit was seen in training in another pose.
Copies of one original are not independent; ``groups`` names each input's original so that intervals
resample originals (a cluster bootstrap), not copies.

Deterministic in the seed; generating about 22,000 inputs takes a few seconds.
"""

from __future__ import annotations

import numpy as np

from bisup.examples import digits

COPIES = {"train": 10, "val": 15, "test": 15}  # redrawn copies per original digit
MAX_DEGREES = 15.0
MAX_SHIFT = 1.0  # pixels, either way on each axis
NOISE = 0.1
OCCLUDE = 0.3  # probability that a 3x3 patch is blanked


def redraw(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random redrawing of each ``(8, 8)`` image in [0, 1] (see the module docstring)."""
    from scipy.ndimage import rotate, shift

    out = np.empty_like(images)
    for i, image in enumerate(images):
        turned = rotate(image, rng.uniform(-MAX_DEGREES, MAX_DEGREES), reshape=False, order=1)
        out[i] = shift(turned, rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2), order=1) * rng.uniform(0.6, 1.2)
        if rng.random() < OCCLUDE:
            r, c = rng.integers(0, 6, 2)
            out[i, r:r + 3, c:c + 3] = 0.0
    return np.clip(out + rng.normal(0, NOISE, out.shape), 0, 1)


def splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train/val/test as float32 ``(N, 8, 8, 1)`` in [0, 1] with labels; ``COPIES`` redrawings per original."""
    return {name: (x, y) for name, (x, y, _) in grouped_splits(seed).items()}


def grouped_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``splits`` with, per input, the index of its original within the split (for cluster intervals)."""
    rng = np.random.default_rng(seed)
    parts = {}
    for name, (x, y) in digits.splits(seed).items():
        copies = COPIES[name]
        images = np.repeat(x[..., 0], copies, axis=0)
        parts[name] = (redraw(images, rng).astype(np.float32)[..., None], np.repeat(y, copies),
                       np.repeat(np.arange(len(y)), copies))
    return parts
