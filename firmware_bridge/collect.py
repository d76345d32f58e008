"""The data flywheel's first half: keep every relayed input with the remote's answer (``bisup bridge --collect``).

Each relayed raw input (stage 0; a SPLIT's activation is not an input the local model can learn
from) is kept once, by the digest of its int8 bytes, with the remote's label and probabilities,
whether the remote supervisor accepted that answer, the device's own label and confidence, the
device id and the time. Records are buffered and written as ``.npz`` shards (``shards``: at 1,024
records, every ``flush_s`` and at close): each is written to a temporary file, synced and renamed
into place, so a crash leaves whole shards or none, never a torn one. A failed write (a full disk)
keeps the buffer for the next try and says so.

The folder is capped in bytes (``max_bytes``), and the cap is shared fairly, because one device
can relay far more than the others (a faulty sensor, or junk sent on purpose):

- **Per-device share.** A device may hold at most ``(max_bytes - headers) / max(devices, min_shares)``
  record bytes, where ``headers`` are the shard files' bytes that are not records (plus a bound for
  the next shard's), ``devices`` counts every device seen (in this run or in the folder's shards)
  and ``min_shares`` is 4. A device at its share is not collected further (said once per device);
  the others go on. So with one device flooding, it gets at most a quarter of the cap and up to three
  others a quarter each, and with more devices each gets 1/N. The floor of 4 is the price: a device
  alone fills a quarter of the cap, not all of it. A share shrinks as devices join and as shards add
  headers; what a device already holds is kept, so an early device may keep a little more than the
  final share, never more than the share it had.
- **Total.** Past the cap nothing more is collected, and that is said once. What a record adds is
  counted when it is buffered (``shards.record_bytes``, exact for the fixed-width columns, plus a
  shard's header bound), so no shard or folder passes the cap by more than one record.
- **Device ids** are 1..32 characters in the protocol, but an MQTT topic can carry any: a longer one
  is shortened to its first 23 characters, "~" and 8 hex digits of its BLAKE2b (so distinct ids stay
  distinct), said once. The device column is 32 characters wide in every shard.

When a collector starts on a folder it removes the temporary files a killed flush left (a complete
one becomes a shard), and names in one line each shard it skips: corrupt ones (``shards.check_shard``)
and whole ones of another model.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bisup.firmware_bridge import shards
from bisup.firmware_bridge.events import Events
from bisup.firmware_bridge.protocol import MAX_ID
from bisup.firmware_bridge.relay import Answer, InferRequest, InputQuantization
from bisup.firmware_bridge.shards import SHARD_FORMAT, SHARD_GLOB, Collected, CollectError, Meta, read_collected

__all__ = ["SHARD_FORMAT", "SHARD_GLOB", "CollectError", "Collected", "Collector", "digest", "read_collected"]

MAX_BUFFER_SHARDS = 4  # shards' worth of records kept in memory while writes fail
MIN_SHARES = 4  # a device's share of the cap is at most 1/4, however few devices there are
NAMED_AT_SHARE = 8  # devices named when they reach their share; more would let many ids flood the log
_write_shard = shards.write_shard  # a module name, so a test can make writes fail (a full disk)


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=shards.DIGEST_BYTES).digest()


def bounded_id(device: str) -> str:
    """``device`` if it fits the protocol's 32 characters, else its first 23, "~" and 8 hex digits of its hash."""
    if len(device) <= MAX_ID:
        return device
    tail = hashlib.blake2b(device.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{device[:MAX_ID - len(tail) - 1]}~{tail}"


class Collector(Events):
    """Appends relayed inputs to shards in ``folder``; ``close`` writes what is buffered."""

    def __init__(self, folder: Path, quantization: InputQuantization, model_hash: str, log: Callable[[str], None],
                 shard_records: int = 1024, max_bytes: int = 1 << 30, flush_s: float = 10.0,
                 min_shares: int = MIN_SHARES):
        self.folder, self.quantization, self.model_hash, self.log = Path(folder), quantization, model_hash, log
        self.shard_records, self.max_bytes, self.flush_s = shard_records, max_bytes, flush_s
        self.min_shares = min_shares
        self._elements = int(np.prod(quantization.shape))
        _check_writable(self.folder)
        _clean_leftovers(self.folder, log)
        self._digests, self._held, self._files = _scan(self.folder, Meta.of(model_hash, quantization), log)
        self._records = sum(self._held.values())  # record bytes in the shard files; the rest are headers
        self._buffer: list[dict] = []
        self._buffered = 0  # record bytes in the buffer
        self._lock = threading.Lock()
        self._said_full = self._said_paused = self._said_long = self._said_misfit = False
        self._said_share: set[str] = set()
        self.collected = self.duplicates = self.refused = self.written_shards = 0
        self._closed = threading.Event()
        self._flusher = threading.Thread(target=self._flush_every, name="collect flusher", daemon=True)
        self._flusher.start()

    def relayed(self, device: str, request: InferRequest, answer: Answer) -> None:
        if request.stage or answer.probabilities is None:
            return
        data = np.asarray(request.input_int8, dtype=np.int8).reshape(-1)
        probabilities = np.asarray(answer.probabilities, np.float32).reshape(-1)
        key = digest(data.tobytes())
        with self._lock:
            device = self._bounded(device)
            if key in self._digests:
                self.duplicates += 1
                return
            self._held.setdefault(device, 0)  # active from its first relay: it takes a share
            size = shards.record_bytes(data.size, probabilities.size)
            if not (self._fits(data, probabilities) and self._room(device, size)):
                return
            self._add(key, size, {
                "x": data, "remote_label": answer.remote_label, "accepted": not answer.rejected,
                "probabilities": probabilities, "local_label": request.local_label,
                "local_confidence": request.local_confidence_int8, "device": device, "time": time.time(),
                "digest": np.frombuffer(key, np.uint8)})

    def held_bytes(self) -> dict[str, int]:
        """The record bytes each device holds in the folder, written and buffered."""
        with self._lock:
            return dict(self._held)

    def share(self) -> float:
        """The most record bytes one device may hold now: the cap less the shards' headers (those written and a
        bound for the next), split evenly, so that when every device holds its share the cap is just reached."""
        headers = self._files - self._records + shards.shard_overhead(self.model_hash)
        return (self.max_bytes - headers) / max(len(self._held), self.min_shares)

    def _used(self) -> int:
        """Bytes the folder holds, with the buffer as it will be written (lock held)."""
        return self._files + self._buffered + (shards.shard_overhead(self.model_hash) if self._buffer else 0)

    def _bounded(self, device: str) -> str:
        """The id as the device column keeps it; the first id that had to be shortened is said (lock held)."""
        bounded = bounded_id(device)
        if bounded != device and not self._said_long:
            self._said_long = True
            self.log(f"collect: a device id of {len(device):,} characters is longer than the protocol's {MAX_ID}; "
                     f"collected as {bounded!r} (every longer id is shortened so; said once)")
        return bounded

    def _fits(self, data: np.ndarray, probabilities: np.ndarray) -> bool:
        """A record must fit the shard's columns: the bundle's input size, the buffered records' classes."""
        classes = len(self._buffer[0]["probabilities"]) if self._buffer else probabilities.size
        if data.size == self._elements and probabilities.size == classes:
            return True
        self.refused += 1
        if not self._said_misfit:
            self._said_misfit = True
            self.log(f"collect: a relay of {data.size} values and {probabilities.size} classes does not fit the "
                     f"shards ({self._elements} values, {classes} classes); not collected (said once)")
        return False

    def _add(self, key: bytes, size: int, record: dict) -> None:
        """Buffer one record and count its bytes for its device and the folder (lock held)."""
        self._buffer.append(record)
        self._digests.add(key)
        self._held[record["device"]] += size
        self._buffered += size
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

    def _room(self, device: str, size: int) -> bool:
        """Whether the device's record may be buffered; says once why not (lock held)."""
        used = self._used()
        if used >= self.max_bytes:
            if not self._said_full:
                self._said_full = True
                self.log(f"collect: {self.folder} holds {used:,} B, its cap of {self.max_bytes:,} B; later "
                         "relays are not collected (retrain on these and move them away, or raise --collect-max-mb)")
            return False
        held, share = self._held[device], self.share()
        if held and held + size > share:  # a device's first record always fits: a tiny cap still collects
            self._say_share(device, held, share)
            return False
        if len(self._buffer) >= MAX_BUFFER_SHARDS * self.shard_records:
            if not self._said_paused:
                self._said_paused = True
                self.log(f"collect: paused, {len(self._buffer)} records wait for {self.folder} to take writes")
            return False
        return True

    def _say_share(self, device: str, held: int, share: float) -> None:
        """Name a device that reached its share, once; the first few only (lock held)."""
        if device in self._said_share or len(self._said_share) > NAMED_AT_SHARE:
            return
        self._said_share.add(device)
        if len(self._said_share) > NAMED_AT_SHARE:
            self.log(f"collect: more than {NAMED_AT_SHARE} devices reached their share; the others are not named")
            return
        self.log(f"collect: device {device!r} holds {held:,} B, its share of the {self.max_bytes:,} B cap (less "
                 f"shard headers, over max(devices, {self.min_shares}) = {max(len(self._held), self.min_shares)}); "
                 "its later relays are not collected, other devices' are (raise --collect-max-mb for more)")

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
        self._files, self._records, self._buffered = self._files + size, self._records + self._buffered, 0
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


def _clean_leftovers(folder: Path, log: Callable[[str], None]) -> None:
    """A flush killed before its rename leaves its temporary file: a complete one becomes a shard (its records
    are whole), the rest are removed, so they neither pile up nor count against the cap. (A bridge still
    writing to the same folder loses nothing: its rename fails and it writes the records again.)"""
    recovered = removed = 0
    for tmp in sorted([*folder.glob(f"{shards.TMP_PREFIX}*"), *folder.glob(".probe-*")]):
        try:
            shards.check_shard(tmp)
            complete = True
        except CollectError:
            complete = False
        try:
            if complete:
                os.replace(tmp, folder / shards.shard_name())
            else:
                tmp.unlink()
        except OSError as exc:
            log(f"collect: cannot clear the leftover {tmp} ({exc.strerror or exc}); remove it by hand")
            continue
        recovered, removed = recovered + complete, removed + (not complete)
    if recovered or removed:
        shards.sync_dir(folder)
        log(f"collect: removed {removed} temporary file(s) a killed flush left in {folder}; recovered {recovered} "
            "complete one(s) as shards")


def _scan(folder: Path, own: Meta, log: Callable[[str], None]) -> tuple[set[bytes], dict[str, int], int]:
    """Digests, each device's bytes and the total bytes of the shards already there, so a restarted bridge
    neither collects twice nor resets the shares; a shard it cannot use is named and skipped."""
    digests: set[bytes] = set()
    held: Counter[str] = Counter()
    total = 0
    for shard in sorted(folder.glob(SHARD_GLOB)):
        size = shard.stat().st_size
        total += size
        try:
            arrays, meta = shards.check_shard(shard)
        except CollectError as exc:
            log(f"collect: {exc}; skipped, its inputs may be collected again; move it aside before `bisup retrain`")
            continue
        differs = meta.differs(own)
        if differs:
            log(f"collect: shard {shard} holds {differs[0]} but this bridge collects {differs[1]}; skipped; move "
                "it aside before `bisup retrain` (each model's relays belong in their own folder)")
            continue
        digests.update(bytes(row) for row in arrays["digest"])
        each = shards.record_bytes(arrays["x"].shape[1], meta.classes)
        devices, counts = np.unique(arrays["device"], return_counts=True)
        for device, n in zip(devices, counts, strict=True):
            held[str(device)] += int(n) * each
    return digests, dict(held), total
