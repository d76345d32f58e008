"""Remote-model backends behind one small interface, chosen by what the spec names.

A remote takes float inputs ``(N, ...)`` and returns class probabilities ``(N, K)``. In-process
backends load a Keras file, a SavedModel directory or a float TFLite model. Network backends
(Open Inference Protocol, TF Serving) plug in here by URL scheme.
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np

from firmware_bridge.net_remotes import open_url
from firmware_bridge.remote_base import RemoteError, RemoteModel, as_probabilities

__all__ = ["ACCEPTED", "DeferredRemote", "KerasRemote", "RemoteError", "RemoteModel", "TFLiteRemote", "check_remote",
           "open_remote"]


class KerasRemote:
    """A ``.keras`` file or a SavedModel directory, run in this process."""

    def __init__(self, path: Path):
        from converters.quiet import capture_fd

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


def _single_output(outputs):
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


ACCEPTED = "--remote takes a .keras file, a SavedModel directory, a float .tflite file or a model server URL"


def check_remote(spec: str | Path) -> None:
    """Cheap checks of a single-model remote before anything heavy is imported: it exists and is a kind
    ``open_remote`` opens. URLs are checked when they are opened."""
    if "://" in str(spec):
        return
    path = Path(spec)
    if not path.exists():
        raise RemoteError(f"remote model {path} does not exist; {ACCEPTED}")
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        tails = sorted(p.name for p in path.glob("tail*.keras"))
        if tails:
            raise RemoteError(f"remote model {path} is a folder of exit tails ({', '.join(tails[:3])}"
                              f"{' ...' if len(tails) > 3 else ''}), which serves a multi-exit bundle only; for "
                              f"this bundle {ACCEPTED}")
        raise RemoteError(f"remote model {path} is a directory but not a SavedModel (no saved_model.pb); {ACCEPTED}")
    if path.is_file() and path.suffix not in (".keras", ".h5", ".tflite"):
        raise RemoteError(f"remote model {path}: {ACCEPTED}")


def open_remote(spec: str | Path) -> RemoteModel:
    """A remote from a path (``.keras``, a SavedModel directory, a float ``.tflite``) or a model server URL.

    URLs (``oip+http://``, ``tfserving+http://``, see ``net_remotes``) are told apart by their ``://``,
    which no path the bridge is given contains.
    """
    check_remote(spec)
    if "://" in str(spec):
        return open_url(str(spec))
    path = Path(spec)
    if path.is_dir() or path.suffix in (".keras", ".h5"):
        return KerasRemote(path)
    return TFLiteRemote(path)
