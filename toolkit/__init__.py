"""bisup: a small int8 model on a microcontroller that asks a big remote model only when its in-graph
supervisor is unsure.

The public Python API is the names in ``__all__`` (the README's "Python API" lists them with examples);
everything else may move between releases:

- ``export_model(model, calib, board, out_dir)``: Keras + supervisor -> int8 TFLite, TFLM arrays, the C engine.
- ``calibrate(local, remote, data, Mode("budget", 0.3))``: the local and remote supervisor thresholds.
- ``open_deployment(path)``: an export folder or ``.bisup`` as a ``Deployment`` (single model or stages).
- ``open_remote(spec)``: a remote model from a file, a folder or a model-server URL.
- ``load_board(name)``: a board profile, shipped or your own ``.toml``.

The package is laid out by job: ``bisup.cli`` (the command line), ``bisup.export``, ``bisup.calibration``,
``bisup.hil``, ``bisup.flashing``, ``bisup.service`` (bridge, device, broker), ``bisup.flywheel`` and
``bisup.examples``; it uses ``bisup.converters``, ``bisup.firmware_bridge`` and ``bisup.boards``, and none of
those imports it. Names load on first use, so ``import bisup`` costs no TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BoardProfile", "Deployment", "Mode", "calibrate", "export_model", "load_board", "open_deployment",
           "open_remote"]

# name -> (module, attribute); ``export_model`` because ``bisup.export`` is the export room (a subpackage)
_HOMES = {
    "export_model": ("bisup.export.single", "export"),
    "calibrate": ("bisup.calibration.single", "calibrate"),
    "Mode": ("bisup.calibration.single", "Mode"),
    "open_deployment": ("bisup.deployment", "open_deployment"),
    "Deployment": ("bisup.deployment", "Deployment"),
    "open_remote": ("bisup.firmware_bridge.remotes", "open_remote"),
    "load_board": ("bisup.boards", "load_board"),
    "BoardProfile": ("bisup.boards", "BoardProfile"),
}


def __getattr__(name: str) -> Any:
    """The public names, imported from their homes when first used (PEP 562)."""
    if name in _HOMES:
        module, attribute = _HOMES[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'bisup' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
