"""Remote-model backends behind one small interface, chosen by what the spec names.

A remote takes float inputs ``(N, ...)`` and returns class probabilities ``(N, K)``. In-process
backends here load a Keras file, a SavedModel directory or a float TFLite model; network backends
(Open Inference Protocol, TF Serving) are in ``net_remotes``. Which backend opens which spec is one
table, ``remote_registry``, which plug-ins extend by URL scheme or file suffix.
"""

from __future__ import annotations

import threading
import urllib.parse
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bisup.firmware_bridge.remote_base import DEFAULT_TIMEOUT_S, RemoteError, RemoteModel, as_probabilities
from bisup.firmware_bridge.remote_registry import (
    RemoteKind,
    RemoteSpecError,
    examples,
    find_kind,
    open_kind,
    register_remote,
    registered,
)

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["ACCEPTED", "DeferredRemote", "KerasRemote", "RemoteError", "RemoteModel", "RemoteSpecError",
           "TFLiteRemote", "check_remote", "open_remote", "register_remote"]


class KerasRemote:
    """A ``.keras`` file or a SavedModel directory, run in this process."""

    def __init__(self, path: Path):
        from bisup.converters.quiet import capture_fd

        with capture_fd(2):  # TensorFlow's C++ start-up chatter, not the user's business
            import keras

        self.name = str(path)
        if path.is_file() and path.suffix == ".keras" and not zipfile.is_zipfile(path):
            raise RemoteError(f"remote model {path} is not a .keras archive (truncated or corrupt); save it again "
                              "with model.save(path)")
        try:
            if path.is_dir():
                layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
                self._call = lambda x: _single_output(layer(x))
            else:
                model = keras.models.load_model(path, compile=False)
                self._call = lambda x: model(x, training=False)
        except Exception as exc:  # Keras raises many types for a damaged file
            raise RemoteError(f"remote model {path} cannot be loaded: {str(exc).splitlines()[0][:160]}") from exc

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        try:
            outputs = self._call(x)
        except Exception as exc:  # Keras and TF raise many types for shape and dtype problems
            raise _failed(self.name, x, exc) from exc
        return as_probabilities(np.asarray(outputs))


def _failed(name: str, x: np.ndarray, exc: Exception) -> RemoteError:
    reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return RemoteError(f"remote model {name} failed on inputs of shape {tuple(x.shape[1:])}: {reason}")


def _single_output(outputs: tf.Tensor | dict[str, tf.Tensor]) -> tf.Tensor:
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise RemoteError(f"remote SavedModel has outputs {sorted(outputs)}; expected one")
        return next(iter(outputs.values()))
    return outputs


class TFLiteRemote:
    """A float ``.tflite`` model run by LiteRT, one sample per invoke."""

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.name = str(path)
        try:
            self._interpreter = Interpreter(model_path=str(path))
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RemoteError(f"remote model {path} is not a loadable TFLite model: {exc}") from exc
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        if self._input["dtype"] != np.float32:
            raise RemoteError(f"remote TFLite model {path} takes {self._input['dtype'].__name__}; use a float model")

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        rows = []
        try:
            for sample in x:
                self._interpreter.set_tensor(self._input["index"], sample[None])
                self._interpreter.invoke()
                rows.append(self._interpreter.get_tensor(self._output["index"])[0])
        except (ValueError, RuntimeError) as exc:
            raise _failed(self.name, x, exc) from exc
        return as_probabilities(np.stack(rows))


class DeferredRemote:
    """A network remote that was down when the bridge started. Every call tries to open it again; until
    that works each call raises ``RemoteError``, which the bridge answers with ``fallback`` (the
    device keeps its own label), so a model server that starts late needs no bridge restart."""

    def __init__(self, spec: str):
        self.name, self._remote = spec, None
        self._lock = threading.Lock()

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._remote is None:
                self._remote = open_remote(self.name)
        return self._remote.predict(x)


def open_keras(spec: str, timeout_s: float) -> KerasRemote:
    """The registry's factory for ``.keras``, ``.h5`` and SavedModel directories (no timeout: in-process)."""
    return KerasRemote(Path(spec))


def open_tflite(spec: str, timeout_s: float) -> TFLiteRemote:
    """The registry's factory for float ``.tflite`` models (no timeout: in-process)."""
    return TFLiteRemote(Path(spec))


ACCEPTED = "--remote takes a .keras file, a SavedModel directory, a float .tflite file or a model server URL"


def check_remote(spec: str | Path) -> None:
    """Cheap checks of a single-model remote before anything heavy is imported: it exists and is a kind
    the registry opens (a plug-in is found by name, not imported). A URL's host and path are checked
    when it is opened."""
    _kind(spec)


def open_remote(spec: str | Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> RemoteModel:
    """A remote from a path or URL, opened by the backend the registry (``remote_registry``) has for it:
    built-in (``.keras``, a SavedModel directory, a float ``.tflite``, ``oip+http://``,
    ``tfserving+http://``), added by ``register_remote``, or an installed ``bisup.remotes`` plug-in.

    URLs are told apart by their ``://``, which no path the bridge is given contains.
    """
    return open_kind(_kind(spec), str(spec), timeout_s)


def _kind(spec: str | Path) -> RemoteKind:
    """The registry row for ``spec``, or the error that says what is wrong and what would work."""
    if "://" in str(spec):
        kind = find_kind(str(spec))
        if kind is None:
            scheme = urllib.parse.urlsplit(str(spec)).scheme
            raise RemoteSpecError(f"remote {spec}: unknown scheme {scheme!r}; registered: "
                                  f"{', '.join(registered('scheme'))} (like {' or '.join(examples('scheme'))})")
        return kind
    path = Path(spec)
    if not path.exists():
        raise RemoteError(f"remote model {path} does not exist; {_accepted()}")
    kind = find_kind(str(path))
    if kind is not None:
        return kind
    if path.is_dir():
        tails = sorted(p.name for p in path.glob("tail*.keras"))
        if tails:
            raise RemoteSpecError(f"remote model {path} is a folder of exit tails ({', '.join(tails[:3])}"
                                  f"{' ...' if len(tails) > 3 else ''}), which serves a multi-exit bundle only; "
                                  f"for this bundle {_accepted()}")
        raise RemoteSpecError(f"remote model {path} is a directory but not a SavedModel (no saved_model.pb); "
                              f"{_accepted()}")
    raise RemoteSpecError(f"remote model {path}: {_accepted()}; registered file kinds: "
                          f"{', '.join(registered('suffix') + registered('directory'))}")


def _accepted() -> str:
    """``ACCEPTED``, plus what plug-ins and ``register_remote`` added (named, not imported)."""
    added = [label for kind in ("suffix", "directory", "scheme") for label in registered(kind, built_in=False)]
    return f"{ACCEPTED}, or what plug-ins add: {', '.join(added)}" if added else ACCEPTED
