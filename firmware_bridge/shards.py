"""The collect shard: how ``bisup bridge --collect`` writes one, and how a shard is checked and read back.

A shard is an uncompressed ``.npz`` (format 1) of the records one flush wrote: one row per relayed
input in ``x`` (int8), ``remote_label``, ``accepted``, ``probabilities``, ``local_label``,
``local_confidence``, ``device`` (32 characters wide: the protocol's longest id), ``time`` and
``digest`` (16-byte BLAKE2b of the input), and the scalars ``format``, ``model_hash``, ``scale``,
``zero_point`` and ``shape``. Every column has a fixed width, so what one record adds to a shard is
known before it is buffered (``record_bytes``): that is what lets the collector hold the cap.

``check_shard`` is the one place that decides whether a file is a usable shard. The bridge (which
skips a bad shard) and ``bisup retrain`` (which stops) name the same problem in one line: empty,
truncated, not an .npz, damaged, Python objects, missing arrays, another format, wrong dtypes,
columns of different lengths, inputs of another width than the shard's shape. Shards of another
model (hash, input quantization, classes) are whole, so they are named by the caller that knows what
it expected. Nothing is unpickled (``allow_pickle=False``): unpickling a file runs its code.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bisup.converters.errors import BisupError
from bisup.firmware_bridge.protocol import MAX_ID
from bisup.firmware_bridge.relay import InputQuantization

SHARD_FORMAT = 1
SHARD_GLOB = "shard-*.npz"
TMP_PREFIX = ".tmp-"
DIGEST_BYTES = 16
SHARD_OVERHEAD = 4096  # zip and .npy headers of one shard's 14 arrays: 3,544 B measured, plus 4 B per hash character
_ZIP_MAGIC = b"PK\x03\x04"
# The record columns as written: fixed widths, so a record's size is known before it is buffered.
COLUMNS = {"x": np.int8, "remote_label": np.int64, "accepted": np.bool_, "probabilities": np.float32,
           "local_label": np.int64, "local_confidence": np.int64, "device": f"<U{MAX_ID}", "time": np.float64,
           "digest": np.uint8}
_ROW_BYTES = sum(np.dtype(t).itemsize for k, t in COLUMNS.items() if k not in ("x", "probabilities", "digest"))
_KINDS: dict[str, Callable[[np.dtype], bool]] = {
    "int8": lambda d: d == np.int8, "uint8": lambda d: d == np.uint8, "an integer": lambda d: d.kind in "iu",
    "a float": lambda d: d.kind == "f", "bool": lambda d: d.kind == "b", "text": lambda d: d.kind == "U"}
# What retrain reads (local_confidence is written but not needed): kind and dimensions of each array.
_ARRAYS = {"format": ("an integer", 0), "model_hash": ("text", 0), "scale": ("a float", 0),
           "zero_point": ("an integer", 0), "shape": ("an integer", 1), "x": ("int8", 2),
           "remote_label": ("an integer", 1), "accepted": ("bool", 1), "probabilities": ("a float", 2),
           "local_label": ("an integer", 1), "device": ("text", 1), "time": ("a float", 1), "digest": ("uint8", 2)}
_ROWS = ("x", "remote_label", "accepted", "probabilities", "local_label", "device", "time", "digest")
_LOAD_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)


class CollectError(BisupError, OSError):
    """A collect folder that cannot be used, or a shard that cannot be read; the message names it."""


class ShardError(CollectError):
    """One file that is not a usable shard; ``reason`` says why in a few words."""

    def __init__(self, shard: Path, reason: str):
        super().__init__(f"shard {shard} is corrupt ({reason})")
        self.shard, self.reason = shard, reason


def record_bytes(elements: int, classes: int) -> int:
    """What one record adds to a shard: its input, its probabilities and the fixed-width columns."""
    return elements + 4 * classes + _ROW_BYTES + DIGEST_BYTES


def shard_overhead(model_hash: str) -> int:
    """What a shard costs beyond its records (an upper bound)."""
    return SHARD_OVERHEAD + 4 * len(model_hash)


@dataclass(frozen=True)
class Meta:
    """What a shard's records belong to; records of different ``Meta`` cannot be trained on together."""

    model_hash: str
    quantization: InputQuantization
    classes: int | None = None  # the remote's; None: not known (a bridge before its first answer)

    @classmethod
    def of(cls, model_hash: str, quantization: InputQuantization) -> Meta:
        """A bridge's own, in the plain types a shard reads back as (so that equal means equal)."""
        q = quantization
        return cls(model_hash, InputQuantization(float(q.scale), int(q.zero_point), tuple(int(d) for d in q.shape)))

    def differs(self, other: Meta) -> tuple[str, str] | None:
        """The first thing that differs, described for ``self`` and for ``other``; None when nothing does."""
        if self.model_hash != other.model_hash:
            return f"relays of model {self.model_hash[:16]}…", f"relays of model {other.model_hash[:16]}…"
        if self.quantization != other.quantization:
            return _inputs(self.quantization), _inputs(other.quantization)
        if None not in (self.classes, other.classes) and self.classes != other.classes:
            return f"answers over {self.classes} classes", f"answers over {other.classes} classes"
        return None


def _inputs(q: InputQuantization) -> str:
    return f"inputs of shape {q.shape} (scale {q.scale:.6g}, zero point {q.zero_point})"


def shard_name() -> str:
    return f"shard-{time.time_ns()}-{os.getpid()}-{threading.get_ident() % 10_000}.npz"


def write_shard(folder: Path, records: list[dict], quantization: InputQuantization, model_hash: str) -> int:
    """Write ``records`` as one shard, atomically (temporary file, fsync, rename); its size in bytes."""
    columns = {key: np.array([r[key] for r in records], dtype) for key, dtype in COLUMNS.items()}
    name = shard_name()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, format=SHARD_FORMAT, model_hash=model_hash, scale=quantization.scale,
                     zero_point=quantization.zero_point, shape=np.array(quantization.shape), **columns)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_dir(folder)
    return (folder / name).stat().st_size


def sync_dir(folder: Path) -> None:
    """Make a rename or removal durable (a crash right after it must not undo it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_shard(shard: Path) -> tuple[dict[str, np.ndarray], Meta]:
    """The arrays of a usable shard and what they belong to; a ``ShardError`` naming what is wrong otherwise."""
    arrays = _load(shard)
    reason = _other_format(arrays) or _missing(arrays) or _wrong_kind(arrays) or _uneven(arrays)
    if reason:
        raise ShardError(shard, reason)
    quantization = InputQuantization(float(arrays["scale"]), int(arrays["zero_point"]),
                                     tuple(int(d) for d in arrays["shape"]))
    return arrays, Meta(str(arrays["model_hash"]), quantization, arrays["probabilities"].shape[1])


def _load(shard: Path) -> dict[str, np.ndarray]:
    """Every member of the archive; truncated, foreign or damaged files are told apart."""
    try:
        with shard.open("rb") as f:
            head = f.read(len(_ZIP_MAGIC))
        if not zipfile.is_zipfile(shard):
            raise ShardError(shard, _not_a_zip(shard, head))
        with np.load(shard, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except _LOAD_ERRORS as exc:
        if isinstance(exc, ShardError):
            raise
        raise ShardError(shard, _unreadable(exc)) from exc


def _not_a_zip(shard: Path, head: bytes) -> str:
    size = shard.stat().st_size
    if not size:
        return "empty: 0 bytes, a write cut short"
    if head == _ZIP_MAGIC or _ZIP_MAGIC.startswith(head):
        return f"truncated: {size:,} bytes of a zip archive without its directory at the end; a copy or write cut short"
    return "not an .npz archive"


def _unreadable(exc: Exception) -> str:
    """Why a zip's members cannot be read; numpy's advice to load with allow_pickle is never passed on."""
    if "pickle" in str(exc):
        return "it holds Python objects, not arrays"
    return f"damaged: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def _other_format(arrays: dict[str, np.ndarray]) -> str | None:
    """Another format is named first: its arrays may differ for a reason."""
    found = arrays.get("format")
    if _is(found, "an integer", 0) and int(found) != SHARD_FORMAT:
        return f"format {int(found)}; this bisup reads format {SHARD_FORMAT}"
    return None


def _missing(arrays: dict[str, np.ndarray]) -> str | None:
    missing = [name for name in _ARRAYS if name not in arrays]
    if missing:
        return f"no {', '.join(repr(m) for m in missing)}: not a bisup collect shard of format {SHARD_FORMAT}"
    return None


def _is(value: object, kind: str, ndim: int) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == ndim and _KINDS[kind](value.dtype)


def _wrong_kind(arrays: dict[str, np.ndarray]) -> str | None:
    for name, (kind, ndim) in _ARRAYS.items():
        value = arrays[name]
        if not _is(value, kind, ndim):
            got = f"{value.dtype} of {value.ndim} dimensions" if isinstance(value, np.ndarray) else "not an array"
            return f"'{name}' is {got}, not {kind} of {ndim}"
    if arrays["digest"].shape[1] != DIGEST_BYTES:
        return f"digests of {arrays['digest'].shape[1]} bytes, not {DIGEST_BYTES}"
    return None


def _uneven(arrays: dict[str, np.ndarray]) -> str | None:
    rows = {name: len(arrays[name]) for name in _ROWS}
    if len(set(rows.values())) > 1:
        return "columns of different lengths: " + ", ".join(f"{name} {n}" for name, n in rows.items())
    width, shape = arrays["x"].shape[1], tuple(int(d) for d in arrays["shape"])
    if width != int(np.prod(shape)):
        return f"inputs of {width} values where its shape {shape} has {int(np.prod(shape))}"
    return None


@dataclass
class Collected:
    """Relayed inputs and the remote's answers, as ``bisup retrain`` takes them."""

    x_int8: np.ndarray  # (N, elements)
    remote_label: np.ndarray
    accepted: np.ndarray  # the remote supervisor accepted the remote's answer
    probabilities: np.ndarray  # (N, classes), the remote's
    local_label: np.ndarray
    device: np.ndarray
    time: np.ndarray
    quantization: InputQuantization
    model_hash: str

    def __len__(self) -> int:
        return len(self.remote_label)

    def inputs(self) -> np.ndarray:
        """The float inputs, dequantized as the bridge gave them to the remote."""
        return np.stack([self.quantization.dequantize(row) for row in self.x_int8]) if len(self) else \
            np.zeros((0, *self.quantization.shape), np.float32)


def read_collected(folder: Path) -> Collected:
    """Every shard in ``folder``, deduplicated by input digest; one error naming a shard that cannot be used."""
    folder = Path(folder)
    shards = sorted(folder.glob(SHARD_GLOB))
    if not shards:
        raise CollectError(f"no collected shards in {folder}; run `bisup bridge --collect {folder}` first")
    parts, first = [], None
    for shard in shards:
        try:
            arrays, meta = check_shard(shard)
        except ShardError as exc:
            raise CollectError(f"{exc}; move it aside to retrain on the others") from None
        differs = None if first is None else meta.differs(first[1])
        if differs:
            raise CollectError(f"shard {shard} holds {differs[0]} but shard {first[0]} holds {differs[1]}; move one "
                               "aside (each model's relays belong in their own folder)")
        first = first or (shard, meta)
        parts.append(arrays)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in _ROWS}
    _, index = np.unique(merged["digest"], axis=0, return_index=True)
    keep = np.sort(index)
    meta = first[1]
    return Collected(merged["x"][keep], merged["remote_label"][keep], merged["accepted"][keep],
                     merged["probabilities"][keep], merged["local_label"][keep], merged["device"][keep],
                     merged["time"][keep], meta.quantization, meta.model_hash)
