"""The one table of remote kinds: URL schemes and file kinds, each with the factory that opens it.

``open_remote`` and ``check_remote`` consult nothing else, so a backend is a factory plus one row here,
and others add rows without editing bisup: an installed distribution through the ``bisup.remotes``
entry point group, or embedding code through ``register_remote``. A factory is called as
``factory(spec, timeout_s)`` and returns a ``RemoteModel``.

Rows may name their factory as ``"module:attr"`` (the entry point form), imported when a spec of that
kind is first opened: checking a spec imports no backend, so never TensorFlow. Entry points are read
only when a spec needs a scheme or suffix the table lacks, so a bridge on a built-in kind never scans
the installed distributions.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Literal

from bisup.firmware_bridge.net_remotes import OipRemote, TFServingRemote
from bisup.firmware_bridge.remote_base import RemoteError, RemoteModel

__all__ = ["GROUP", "Factory", "RemoteKind", "RemoteSpecError", "examples", "find_kind", "open_kind",
           "register_remote", "registered"]

GROUP = "bisup.remotes"
Factory = Callable[[str, float], RemoteModel]
Kind = Literal["scheme", "suffix", "directory"]
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")  # RFC 3986; urlsplit lowercases what it parses
_SUFFIX = re.compile(r"(\.[A-Za-z0-9_-]+)+")


class RemoteSpecError(RemoteError):
    """No backend opens this spec, or its plug-in is broken: unlike a server that is down, retrying won't help."""


@dataclass(frozen=True)
class RemoteKind:
    """One row of the table: what a spec looks like and which factory opens it."""

    kind: Kind
    key: str  # a scheme ("oip+http"), a suffix (".keras") or the name of a directory kind ("SavedModel directory")
    factory: Factory | str  # the factory, or "module:attr" imported on first use
    origin: str = "built-in"  # or "register_remote", or the distribution and entry point it came from
    example: str = ""  # what a spec of this kind looks like, for error messages
    matches: Callable[[Path], bool] | None = None  # directory kinds: which folders they open

    @property
    def label(self) -> str:
        """How error messages list the row: built-ins by key, others with where they came from."""
        return self.key if self.origin == "built-in" else f"{self.key} ({self.origin})"


def _is_saved_model(path: Path) -> bool:
    return (path / "saved_model.pb").is_file()


_BUILT_IN = [
    RemoteKind("scheme", "oip+http", OipRemote, example=OipRemote.example),
    RemoteKind("scheme", "oip+https", OipRemote),
    RemoteKind("scheme", "tfserving+http", TFServingRemote, example=TFServingRemote.example),
    RemoteKind("scheme", "tfserving+https", TFServingRemote),
    RemoteKind("suffix", ".keras", "bisup.firmware_bridge.remotes:open_keras"),
    RemoteKind("suffix", ".h5", "bisup.firmware_bridge.remotes:open_keras"),
    RemoteKind("suffix", ".tflite", "bisup.firmware_bridge.remotes:open_tflite"),
    RemoteKind("directory", "SavedModel directory", "bisup.firmware_bridge.remotes:open_keras",
               matches=_is_saved_model),
]
_TABLE: dict[tuple[Kind, str], RemoteKind] = {(row.kind, row.key): row for row in _BUILT_IN}
_LOCK = threading.Lock()


def register_remote(key: str, factory: Factory | str, *, directory: Callable[[Path], bool] | None = None,
                    example: str = "", replace: bool = False) -> None:
    """Add a backend from code that embeds bisup: a URL scheme (``"triton+grpc"``), a file suffix
    (``".onnx"``), or, with ``directory=`` a predicate on folders, a directory kind named ``key``.
    ``factory`` is a callable or ``"module:attr"``. Taking a kind that is already registered is refused
    unless ``replace`` is true, so a plug-in cannot silently shadow another."""
    kind: Kind = "directory" if directory is not None else "suffix" if key.startswith(".") else "scheme"
    key = key.lower() if kind == "scheme" else key
    if kind == "scheme" and not _SCHEME.fullmatch(key):
        raise ValueError(f"remote scheme {key!r} is not a URL scheme (a letter, then letters, digits, + - .)")
    if kind == "suffix" and not _SUFFIX.fullmatch(key):
        raise ValueError(f"remote suffix {key!r} is not a file suffix like '.onnx'")
    if not (callable(factory) or isinstance(factory, str)):
        raise TypeError(f"remote factory for {key!r} must be a callable or 'module:attr', not {type(factory)}")
    with _LOCK:
        taken = _TABLE.get((kind, key))
        if taken is not None and not replace:
            raise ValueError(f"remote {kind} {key!r} is already registered ({taken.origin}); pass replace=True "
                             "to override it")
        _TABLE[(kind, key)] = RemoteKind(kind, key, factory, "register_remote", example, directory)


def find_kind(spec: str) -> RemoteKind | None:
    """The row that opens ``spec`` (a URL, or a path that exists), looking at plug-ins only when the table
    has none (read, not imported). None when nothing does; ``registered`` then says what would."""
    if "://" in spec:
        scheme = urllib.parse.urlsplit(spec).scheme
        return _TABLE.get(("scheme", scheme)) or _from_entry_point("scheme", spec, lambda name: name.lower() == scheme)
    path = Path(spec)
    if path.is_dir():
        return next((row for row in _rows("directory") if row.matches(path)), None)
    suffixes = [row for row in _rows("suffix") if path.name.endswith(row.key)]
    if suffixes:
        return max(suffixes, key=lambda row: len(row.key))  # ".tar.gz" before ".gz"
    return _from_entry_point("suffix", spec, lambda name: path.name.endswith(name))


def open_kind(row: RemoteKind, spec: str, timeout_s: float) -> RemoteModel:
    """``row``'s remote for ``spec``. A plug-in that cannot be imported, raises something other than
    ``RemoteError`` or returns no ``RemoteModel`` is named in a one-line ``RemoteError``, as the bridge
    logs it next to the device's fallback answer."""
    factory = _resolve(row, spec)
    if row.origin == "built-in":
        return factory(spec, timeout_s)  # built-ins raise their own one-line RemoteError
    try:
        remote = factory(spec, timeout_s)
    except RemoteError:
        raise
    except Exception as exc:  # a plug-in's own failure: whatever it raises, the bridge needs a RemoteError
        raise RemoteError(f"remote {spec}: {row.origin} failed: {_reason(exc)}") from exc
    missing = [what for what, ok in (("predict()", callable(getattr(remote, "predict", None))),
                                     ("name", isinstance(getattr(remote, "name", None), str))) if not ok]
    if missing:
        raise RemoteSpecError(f"remote {spec}: {row.origin} returned a {type(remote).__name__}, which has no "
                              f"{' and no '.join(missing)}; a remote factory must return a RemoteModel "
                              "(bisup.firmware_bridge.remote_base)")
    return remote


def registered(kind: Kind, built_in: bool = True) -> list[str]:
    """The rows of one kind (built-ins too unless ``built_in`` is false), then the installed plug-ins not in
    the table yet (named, not imported): what an error message offers instead of a spec nothing opens."""
    rows = _rows(kind)
    labels = [row.label for row in rows if built_in or row.origin != "built-in"]
    keys = {row.key for row in rows}
    labels += [f"{ep.name} ({_origin(ep)})" for ep in _entry_points()
               if _kind_of(ep.name) == kind and _key(ep) not in keys]
    return labels


def examples(kind: Kind) -> list[str]:
    """What specs of one kind look like, for the messages that refuse one."""
    return [row.example for row in _rows(kind) if row.example]


def _rows(kind: Kind) -> list[RemoteKind]:
    with _LOCK:
        return [row for row in _TABLE.values() if row.kind == kind]


def _kind_of(name: str) -> Kind:
    return "suffix" if name.startswith(".") else "scheme"


def _entry_points() -> Iterable[EntryPoint]:
    return entry_points(group=GROUP)


def _key(ep: EntryPoint) -> str:
    """The table key an entry point fills: schemes lowercased, as ``urlsplit`` gives them."""
    return ep.name.lower() if _kind_of(ep.name) == "scheme" else ep.name


def _origin(ep: EntryPoint) -> str:
    dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unnamed distribution"
    return f"plug-in {dist}, entry point {ep.name} = {ep.value} in group {GROUP}"


def _from_entry_point(kind: Kind, spec: str, wanted: Callable[[str], bool]) -> RemoteKind | None:
    """The installed plug-in for a scheme or suffix the table lacks, added to the table on first use."""
    offers = [ep for ep in _entry_points() if _kind_of(ep.name) == kind and wanted(ep.name)]
    if not offers:
        return None
    longest = max(len(ep.name) for ep in offers)
    offers = sorted((ep for ep in offers if len(ep.name) == longest), key=_origin)  # sys.path order is arbitrary
    if len(offers) > 1:
        raise RemoteSpecError(f"remote {spec}: {kind} {offers[0].name} is offered by several plug-ins ("
                              f"{'; '.join(_origin(ep) for ep in offers)}); uninstall all but one")
    ep = offers[0]
    row = RemoteKind(kind, _key(ep), ep.value, _origin(ep))  # imported by open_kind, so checking stays cheap
    with _LOCK:
        return _TABLE.setdefault((kind, row.key), row)


def _resolve(row: RemoteKind, spec: str) -> Factory:
    """The row's factory, importing a ``module:attr`` the first time (the stdlib resolves it as an entry point)."""
    if not isinstance(row.factory, str):
        return row.factory
    try:
        factory = EntryPoint(row.key, row.factory, GROUP).load()
    except Exception as exc:  # ImportError, AttributeError, or whatever the plug-in's module raises on import
        raise RemoteSpecError(f"remote {spec}: {row.origin} cannot be imported: {_reason(exc)}") from exc
    if not callable(factory):
        raise RemoteSpecError(f"remote {spec}: {row.origin} names a {type(factory).__name__}, not a factory "
                              "(spec, timeout_s) -> RemoteModel")
    with _LOCK:
        if _TABLE.get((row.kind, row.key)) == row:
            _TABLE[(row.kind, row.key)] = dataclasses.replace(row, factory=factory)
    return factory


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__
