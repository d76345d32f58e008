"""What every remote backend shares: the interface the relay calls, its error, and the probabilities rule.

Apart from ``remotes`` (in-process backends and ``open_remote``) and ``net_remotes`` (model servers) so
that each backend module imports this one and neither imports the other's.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from bisup.converters.errors import BisupError
from bisup.converters.scores import looks_like_probabilities, softmax

DEFAULT_TIMEOUT_S = 10.0  # how long a network remote waits for its server; every factory is given one


class RemoteError(BisupError, RuntimeError):
    """A remote that cannot be loaded or that fails to answer; the message names which and why."""


class RemoteModel(Protocol):
    """What the relay needs from a remote model."""

    name: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` for float inputs ``(N, ...)``."""


def as_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Softmax unless the rows already are probabilities (a model may end in logits or softmax)."""
    out = np.asarray(outputs, dtype=np.float64)
    return out if looks_like_probabilities(out) else softmax(out)
