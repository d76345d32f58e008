"""A device bundle as the bridge and the virtual device read it.

Either a build folder with ``model.tflite`` and ``thresholds.json`` (what ``bisup export`` and
``bisup calibrate`` write), or a ``.bisup`` archive made by ``bisup bundle``: a zip whose
``manifest.json`` records the format version, the toolkit version and the SHA-256 and size of
every member. An archive is verified on every load; a tampered, truncated or padded one is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bisup.converters import tflite_model
from bisup.converters.artefacts import BundleManifest, ExportReport, Thresholds
from bisup.converters.errors import BisupError
from bisup.converters.signature import SCORES
from bisup.firmware_bridge.device_model import LocalModel
from bisup.firmware_bridge.relay import InputQuantization, RemoteSupervisor

if TYPE_CHECKING:  # cryptography loads only where a key is used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey



class BundleError(BisupError, ValueError):
    """A bundle that lacks a file, holds a malformed one, or fails verification."""


def sha256_hex(data: bytes) -> str:
    """How the manifest names a member's content."""
    return hashlib.sha256(data).hexdigest()


# What an archive may hold, and how much: a bundle comes from someone else, so its names, sizes and count are
# checked on the central directory before anything is decompressed, and every member is decompressed with a bound.
MEMBER_NAME = re.compile(r"(manifest|thresholds|labels|input|report|stages|policy)\.json|model\.tflite"
                         r"|stage[1-9][0-9]?\.tflite|manifest\.sig")
SIGNATURE = "manifest.sig"  # Ed25519 over manifest.json's bytes; the manifest covers every other member
MAX_MEMBERS = 64  # a 99-stage export and its JSON files
MAX_MANIFEST_BYTES = 1 << 20
MAX_MEMBER_BYTES = 32 << 20  # microcontroller models are kilobytes to a few megabytes
MAX_TOTAL_BYTES = 96 << 20
_S_IFMT, _S_IFREG = 0o170000, 0o100000


def check_member_name(name: str, where: str) -> None:
    """Refuse a member name that is not one of the plain names a bundle holds (no folder, ``..``, absolute path)."""
    if not MEMBER_NAME.fullmatch(name):
        raise BundleError(f"{where}: member {name[:80]!r} is not a bisup bundle member (plain names only: "
                          "model.tflite, stageN.tflite and the JSON files `bisup bundle` writes); refused")


def _entries(archive: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name, each a plain allowed name, a regular file, once, within the size caps."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise BundleError(f"bundle {path} has {len(infos):,} members (a bundle has at most {MAX_MEMBERS}); refused")
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        check_member_name(info.filename, f"bundle {path}")
        kind = (info.external_attr >> 16) & _S_IFMT
        if kind not in (0, _S_IFREG):  # 0: written without Unix modes
            raise BundleError(f"bundle {path}: member {info.filename} is not a regular file (a link?); refused")
        if info.filename in entries:
            raise BundleError(f"bundle {path} holds {info.filename} twice; refused (which copy counts is up to the "
                              "reader)")
        if info.file_size > MAX_MEMBER_BYTES:
            raise BundleError(f"bundle {path}: member {info.filename} declares {info.file_size:,} B, over the "
                              f"{MAX_MEMBER_BYTES:,} B a bundle member may have; refused")
        entries[info.filename] = info
    return entries


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, path: Path) -> bytes:
    """A member's bytes, decompressed no further than ``size`` + 1 (a zip bomb stops there)."""
    try:
        with archive.open(info) as stream:
            data = stream.read(size + 1)
    except (zlib.error, zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
        raise BundleError(f"bundle {path}: member {info.filename} is corrupt ({exc}); the bundle was modified "
                          "after it was built: rebuild it with `bisup bundle`") from exc
    if len(data) > size:
        raise BundleError(f"bundle {path}: member {info.filename} holds more than the {size:,} B its manifest "
                          "says; the bundle was modified after it was built")
    return data


_TRUSTED: ContextVar[tuple[Ed25519PublicKey, ...]] = ContextVar("bisup_trusted_keys", default=())


@contextlib.contextmanager
def trusting(keys: Sequence[Ed25519PublicKey]) -> Iterator[None]:
    """Within this block every bundle read must be an archive signed by one of ``keys`` (none: no check).

    A context rather than a parameter, so that every reader under a command (bridge, device, hil, flash,
    single or multi-exit) checks without each layer passing the keys on."""
    token = _TRUSTED.set(tuple(keys))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (``bisup keygen`` writes NAME.pub)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(f"trusted key {path} cannot be read as a PEM public key ({exc}); give the NAME.pub that "
                          "`bisup keygen` wrote") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"trusted key {path} is not an Ed25519 key; make one with `bisup keygen`")
    return key


def sign_manifest(manifest: bytes, key_path: str | Path) -> bytes:
    """The Ed25519 signature of ``manifest`` with the PEM private key at ``key_path``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"signing key {key_path} cannot be read as an unencrypted PEM private key ({exc}); make "
                          "one with `bisup keygen`") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"signing key {key_path} is not an Ed25519 key; make one with `bisup keygen`")
    return key.sign(manifest)


def _check_signature(raw: bytes, signature: bytes | None, path: Path) -> None:
    """Refuse an unsigned or wrongly signed archive when keys are trusted (see ``trusting``)."""
    keys = _TRUSTED.get()
    if not keys:
        return
    from cryptography.exceptions import InvalidSignature
    if signature is None:
        raise BundleError(f"bundle {path} is not signed, and --trust requires a signed bundle; sign it with "
                          "`bisup bundle BUILD_DIR --out B.bisup --sign KEY`")
    for key in keys:
        try:
            key.verify(signature, raw)
            return
        except InvalidSignature:
            continue
    raise BundleError(f"bundle {path} is signed by none of the trusted keys (or was modified after signing); "
                      "refused")


def _manifest(archive: zipfile.ZipFile, entries: dict[str, zipfile.ZipInfo], path: Path) -> BundleManifest:
    """The manifest, checked against the central directory: the same members, each of its declared size."""
    if "manifest.json" not in entries:
        raise BundleError(f"bundle {path} has no manifest.json; build bundles with `bisup bundle`")
    raw = _read_bounded(archive, entries["manifest.json"], MAX_MANIFEST_BYTES, path)
    signature = _read_bounded(archive, entries[SIGNATURE], 64, path) if SIGNATURE in entries else None
    _check_signature(raw, signature, path)
    manifest = BundleManifest.from_json(raw, f"bundle {path}: manifest.json")
    listed = set(entries) - {"manifest.json", SIGNATURE}
    if listed != set(manifest.members):
        extra, missing = sorted(listed - set(manifest.members)), sorted(set(manifest.members) - listed)
        raise BundleError(f"bundle {path} does not match its manifest (extra {extra}, missing {missing}); "
                          "it was modified after it was built")
    if sum(entry.size for entry in manifest.members.values()) > MAX_TOTAL_BYTES:
        raise BundleError(f"bundle {path}: its members add up to more than {MAX_TOTAL_BYTES:,} B; refused")
    for name, entry in manifest.members.items():
        if entries[name].file_size != entry.size:
            raise BundleError(f"bundle {path}: {name} is {entries[name].file_size:,} B in the archive but "
                              f"{entry.size:,} B in the manifest; the bundle was modified after it was built")
    return manifest


def read_archive(path: Path) -> tuple[dict[str, bytes], BundleManifest]:
    """The verified members of a ``.bisup`` archive and its manifest; raise BundleError naming what is wrong.

    Names, kinds, count and sizes are checked before anything is decompressed, and each member is
    decompressed no further than its manifest size, so no archive costs more memory than the caps."""
    _check_no_trailing_bytes(path)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = _entries(archive, path)
            manifest = _manifest(archive, entries, path)
            files = {name: _read_bounded(archive, entries[name], entry.size, path)
                     for name, entry in manifest.members.items()}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BundleError(f"bundle {path} is truncated or not a bisup archive ({exc})") from exc
    except zipfile.LargeZipFile as exc:
        raise BundleError(f"bundle {path} is too large to be a bisup bundle") from exc
    for name, entry in manifest.members.items():
        digest = sha256_hex(files[name])
        if digest != entry.sha256:
            raise BundleError(f"bundle {path}: {name} has SHA-256 {digest[:16]}... but the manifest says "
                              f"{entry.sha256[:16]}...; the bundle was modified after it was built")
    return files, manifest


def _is_tflite(path: Path) -> bool:
    """A .tflite file: by its name or its flatbuffer identifier (bytes 4-8 are TFL3)."""
    with open(path, "rb") as handle:
        return path.suffix == ".tflite" or handle.read(8)[4:] == b"TFL3"


END_OF_ARCHIVE = b"PK\x05\x06"  # the zip end-of-central-directory record; bisup writes no archive comment
END_RECORD_BYTES = 22
TAIL_SCAN_BYTES = 65_536 + END_RECORD_BYTES  # how far back a reader looks for the end record


def _check_no_trailing_bytes(path: Path) -> None:
    """A bisup archive ends with its 22-byte end record (no comment); zipfile would accept bytes appended
    after it, and the manifest cannot see them."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - TAIL_SCAN_BYTES))
            tail = handle.read()
    except OSError as exc:
        raise BundleError(f"bundle {path} cannot be read: {exc.strerror}") from exc
    at = tail.rfind(END_OF_ARCHIVE)
    if at < 0:
        raise BundleError(f"bundle {path} is truncated or not a bisup archive (no zip end record)")
    extra = len(tail) - at - END_RECORD_BYTES
    if extra != 0 or tail[-2:] != b"\x00\x00":
        raise BundleError(f"bundle {path} has {max(extra, 0)} bytes after the end of the archive; it was modified "
                          "after it was built: rebuild it with `bisup bundle`")


def refuse_folder_when_trusting(location: Path) -> None:
    """A build folder carries no signature: with trusted keys only a signed archive is accepted."""
    if _TRUSTED.get():
        raise BundleError(f"{location} is a build folder, which cannot be signed; with --trust give the signed "
                          "archive (`bisup bundle ... --sign KEY`)")


@dataclass
class Bundle:
    path: Path
    model: bytes
    thresholds: Thresholds
    report: ExportReport | None = None  # None for a build folder whose model was exported elsewhere
    manifest: BundleManifest | None = None  # archives only

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """A build folder or a verified ``.bisup`` archive."""
        location = Path(path)
        if location.is_file() and _is_tflite(location):
            raise BundleError(f"{location} is a TFLite model, not a bundle: run `bisup bundle BUILD_DIR --out "
                              "NAME.bisup` first and give NAME.bisup (BUILD_DIR: the folder with model.tflite and "
                              "thresholds.json that `bisup export` and `bisup calibrate` wrote)")
        if location.is_file():
            files, manifest = read_archive(location)
            if "stages.json" in files:
                raise BundleError(f"{location} is a multi-exit bundle (stages.json): a single-exit device or "
                                  "bridge cannot run it; `bisup bridge`, `bisup device` and `bisup bundle --verify` "
                                  "take it as it is, or export the model without exits for a single-exit device")
            return cls(location, files["model.tflite"],
                       Thresholds.from_json(files["thresholds.json"], f"bundle {location}: thresholds.json"),
                       ExportReport.from_json(files["report.json"], f"bundle {location}: report.json"), manifest)
        if not location.is_dir():
            raise BundleError(f"bundle {location} does not exist")
        refuse_folder_when_trusting(location)
        if (location / "stages.json").is_file() and not (location / "model.tflite").is_file():
            raise BundleError(f"{location} is a multi-exit export (stages.json): a single-exit device or bridge "
                              "cannot run it; run its stages with the multi-exit device (`bisup demo --exits` shows "
                              "one), or export the model without exits for a single-exit device")
        model_file, thresholds_file = location / "model.tflite", location / "thresholds.json"
        for required, made_by in ((model_file, "bisup export"), (thresholds_file, "bisup calibrate")):
            if not required.is_file():
                raise BundleError(f"bundle {location} has no {required.name}; create it with "
                                  f"`{made_by} --out {location}`")
        report = location / "report.json"
        return cls(location, model_file.read_bytes(), Thresholds.read(thresholds_file),
                   ExportReport.read(report) if report.is_file() else None)

    def local_model(self) -> LocalModel:
        """The bundle's model in TFLM, with the arena export measured (searched only when no report says)."""
        arena = self.report.arena_recommended_bytes if self.report else None
        if self.path.is_dir():
            return LocalModel(self.path / "model.tflite", arena)
        with tempfile.TemporaryDirectory(prefix="bisup-bundle-") as folder:
            model = Path(folder) / "model.tflite"
            model.write_bytes(self.model)
            return LocalModel(model, arena)

    @cached_property
    def info(self) -> tflite_model.ModelInfo:
        return tflite_model.read(self.model)

    @property
    def model_hash(self) -> bytes:
        """SHA-256 of the model: what a device reports in HELLO."""
        return hashlib.sha256(self.model).digest()

    @property
    def input_elements(self) -> int:
        return int(np.prod(self.info.inputs[0].shape))

    @property
    def num_classes(self) -> int:
        return int(np.prod(self.info.output(SCORES).shape))

    @property
    def quantization(self) -> InputQuantization:
        inp = self.info.inputs[0]
        return InputQuantization(inp.scale, inp.zero_point, tuple(inp.shape[1:]))

    @property
    def threshold_int8(self) -> int:
        return self.thresholds.local.threshold_int8

    @property
    def remote_supervisor(self) -> RemoteSupervisor:
        return RemoteSupervisor(self.thresholds.remote.supervisor, float(self.thresholds.remote.threshold))
