"""The data flywheel's first half: keep every relayed input with the remote's answer (``bisup bridge --collect``).

Each relayed raw input (stage 0; a SPLIT's activation is not an input the local model can learn
from) is kept once, by the digest of its int8 bytes, with the remote's label and probabilities,
whether the remote supervisor accepted that answer, the device's own label and confidence, the
device id and the time. Records are buffered and written as ``.npz`` shards (at 1,024 records,
every ``flush_s`` and at close): each is written to a temporary file, synced and renamed into
place, so a crash leaves whole shards or none, never a torn one. A failed write (a full disk)
keeps the buffer for the next try and says so; the folder is capped in bytes, past which nothing
more is collected and that is said once. ``read_collected`` (for ``bisup retrain``) reads them
back, deduplicated again across bridges.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bisup.converters.errors import BisupError
from bisup.firmware_bridge.events import Events
from bisup.firmware_bridge.relay import Answer, InferRequest, InputQuantization

SHARD_FORMAT = 1
SHARD_GLOB = "shard-*.npz"
MAX_BUFFER_SHARDS = 4  # shards' worth of records kept in memory while writes fail


class CollectError(BisupError, OSError):
    """A collect folder that cannot be used, or a shard that cannot be read; the message names it."""


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


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


class Collector(Events):
    """Appends relayed inputs to shards in ``folder``; ``close`` writes what is buffered."""

    def __init__(self, folder: Path, quantization: InputQuantization, model_hash: str, log: Callable[[str], None],
                 shard_records: int = 1024, max_bytes: int = 1 << 30, flush_s: float = 10.0):
        self.folder, self.quantization, self.model_hash, self.log = Path(folder), quantization, model_hash, log
        self.shard_records, self.max_bytes, self.flush_s = shard_records, max_bytes, flush_s
        _check_writable(self.folder)
        self._digests, self._bytes = _scan(self.folder, log)
        self._buffer: list[dict] = []
        self._lock = threading.Lock()
        self._said_full = self._said_paused = False
        self.collected = self.duplicates = self.written_shards = 0
        self._closed = threading.Event()
        self._flusher = threading.Thread(target=self._flush_every, name="collect flusher", daemon=True)
        self._flusher.start()

    def relayed(self, device: str, request: InferRequest, answer: Answer) -> None:
        if request.stage or answer.probabilities is None:
            return
        data = np.asarray(request.input_int8, dtype=np.int8)
        key = digest(data.tobytes())
        with self._lock:
            if key in self._digests:
                self.duplicates += 1
                return
            if not self._room():
                return
            self._digests.add(key)
            self._buffer.append({"x": data, "remote_label": answer.remote_label, "accepted": not answer.rejected,
                                 "probabilities": np.asarray(answer.probabilities, np.float32),
                                 "local_label": request.local_label, "local_confidence": request.local_confidence_int8,
                                 "device": device, "time": time.time(), "digest": np.frombuffer(key, np.uint8)})
            self.collected += 1
            if len(self._buffer) >= self.shard_records:
                self._flush()

    def _flush_every(self) -> None:
        """Writes what waits at least every ``flush_s``, also when no relay comes to trigger it."""
        while not self._closed.wait(self.flush_s):
            with self._lock:
                self._flush()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._flush()
            if self._buffer:
                self.log(f"collect: {len(self._buffer)} relayed inputs could not be written to {self.folder} "
                         "and are lost with this process; free space there before the next run")

    def _room(self) -> bool:
        """Whether another record may be buffered; says once why not (lock held)."""
        if self._bytes >= self.max_bytes:
            if not self._said_full:
                self._said_full = True
                self.log(f"collect: {self.folder} holds {self._bytes:,} B, its cap of {self.max_bytes:,} B; later "
                         "relays are not collected (retrain on these and move them away, or raise --collect-max-mb)")
            return False
        if len(self._buffer) >= MAX_BUFFER_SHARDS * self.shard_records:
            if not self._said_paused:
                self._said_paused = True
                self.log(f"collect: paused, {len(self._buffer)} records wait for {self.folder} to take writes")
            return False
        return True

    def _flush(self) -> None:
        """Write the buffer as one shard, atomically (lock held); on failure keep it and say why."""
        if not self._buffer:
            return
        try:
            size = _write_shard(self.folder, self._buffer, self.quantization, self.model_hash)
        except OSError as exc:
            self.log(f"collect: cannot write a shard to {self.folder} ({exc.strerror or exc}); keeping "
                     f"{len(self._buffer)} records in memory and trying again")
            return
        self._bytes += size
        self.written_shards += 1
        self._buffer, self._said_paused = [], False


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as exc:
        raise CollectError(f"collect folder {folder} is not writable ({exc.strerror or exc}); give --collect a "
                           "folder this user can write") from exc


def _scan(folder: Path, log: Callable[[str], None]) -> tuple[set[bytes], int]:
    """Digests and bytes of the shards already there, so a restarted bridge does not collect twice."""
    digests, size = set(), 0
    for shard in sorted(folder.glob(SHARD_GLOB)):
        size += shard.stat().st_size
        try:
            with np.load(shard) as data:
                digests.update(bytes(row) for row in data["digest"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log(f"collect: shard {shard} cannot be read ({_unreadable(shard, exc)}); leaving it as it is, its "
                "inputs may be collected again")
    return digests, size


def _unreadable(shard: Path, exc: Exception) -> str:
    """Why a shard cannot be read; numpy's advice to load a non-zip file with allow_pickle is never passed on
    (unpickling a file runs its code)."""
    if "pickle" in str(exc):
        return "not an .npz archive" if not zipfile.is_zipfile(shard) else "it holds Python objects, not arrays"
    return str(exc)


def _write_shard(folder: Path, records: list[dict], quantization: InputQuantization, model_hash: str) -> int:
    columns = {key: np.stack([r[key] for r in records]) if key in ("x", "probabilities", "digest")
               else np.array([r[key] for r in records]) for key in records[0]}
    name = f"shard-{time.time_ns()}-{os.getpid()}-{threading.get_ident() % 10_000}.npz"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
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
    _sync_dir(folder)
    return (folder / name).stat().st_size


def _sync_dir(folder: Path) -> None:
    """Make the rename durable (a crash right after it must not lose the shard's directory entry)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_collected(folder: Path) -> Collected:
    """Every shard in ``folder``, deduplicated by input digest; one error naming a shard that cannot be read."""
    folder = Path(folder)
    shards = sorted(folder.glob(SHARD_GLOB))
    if not shards:
        raise CollectError(f"no collected shards in {folder}; run `bisup bridge --collect {folder}` first")
    parts, meta = [], None
    for shard in shards:
        try:
            with np.load(shard) as data:
                part = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise CollectError(f"shard {shard} is corrupt ({_unreadable(shard, exc)}); move it aside to retrain on "
                               "the others") from exc
        this = (str(part.get("model_hash")), float(part.get("scale", 0)), int(part.get("zero_point", 0)),
                tuple(int(d) for d in part.get("shape", ())))
        if int(part.get("format", -1)) != SHARD_FORMAT or "x" not in part:
            raise CollectError(f"shard {shard} is not a bisup collect shard of format {SHARD_FORMAT}")
        if meta is not None and this[1:] != meta[1:]:
            raise CollectError(f"shard {shard} holds inputs quantized as {this[1:]}, others as {meta[1:]}; "
                               "collect each model's relays in its own folder")
        meta = this
        parts.append(part)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in ("x", "remote_label", "accepted", "probabilities",
                                                                   "local_label", "device", "time", "digest")}
    _, first = np.unique(merged["digest"], axis=0, return_index=True)
    keep = np.sort(first)
    return Collected(merged["x"][keep], merged["remote_label"][keep], merged["accepted"][keep],
                     merged["probabilities"][keep], merged["local_label"][keep], merged["device"][keep],
                     merged["time"][keep], InputQuantization(meta[1], meta[2], meta[3]), meta[0])
