"""``bisup bundle``: pack a build folder into a versioned, hash-checked ``.bisup`` archive.

The archive holds what a device and the bridge need and nothing they must guess: the model, the
thresholds (int8 local, remote), the labels, the input quantization and the export report (board,
measured arena), plus a
``manifest.json`` with the SHA-256 and size of every member and the toolkit version. Reading and
verification live in ``bisup.firmware_bridge.bundle`` so the bridge needs no toolkit.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bisup.converters import tflite_model
from bisup.converters.artefacts import BundleManifest, ExportReport, Member, Policy, Thresholds, dumps
from bisup.firmware_bridge.bundle import SIGNATURE, BundleError, read_archive, sha256_hex, sign_manifest
from bisup.firmware_bridge.exits_model import StagedModel


def _toolkit_version() -> str:
    try:
        return version("bisup")
    except PackageNotFoundError:
        return "unknown"


def _labels(path: Path | None, count: int) -> list[str]:
    if path is None:
        return [str(i) for i in range(count)]
    labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(labels) != count:
        raise BundleError(f"{path} has {len(labels)} labels but the model has {count} classes")
    return labels


def members(build_dir: Path, labels_path: Path | None = None) -> dict[str, bytes]:
    """The archive members from a folder holding model.tflite, thresholds.json and report.json."""
    for name, made_by in (("model.tflite", "bisup export"), ("thresholds.json", "bisup calibrate"),
                          ("report.json", "bisup export")):
        if not (build_dir / name).is_file():
            raise BundleError(f"{build_dir} has no {name}; run `{made_by} --out {build_dir}` first")
    model = (build_dir / "model.tflite").read_bytes()
    info = tflite_model.read(model)
    report = ExportReport.read(build_dir / "report.json")
    thresholds = Thresholds.read(build_dir / "thresholds.json")  # checked here, not first on a board
    inp = info.inputs[0]
    encode = lambda value: (json.dumps(value, indent=2) + "\n").encode()  # noqa: E731
    return {
        "model.tflite": model,
        "thresholds.json": dumps(thresholds).encode(),
        "labels.json": encode(_labels(labels_path, report.num_classes)),
        "input.json": encode({"dtype": "int8", "shape": list(inp.shape), "scale": inp.scale,
                              "zero_point": inp.zero_point}),
        "report.json": dumps(report).encode(),
    }


def staged_members(build_dir: Path, labels_path: Path | None = None) -> tuple[dict[str, bytes], str]:
    """A multi-exit bundle's members (stages.json, policy.json, every stage, labels) and its model hash."""
    for name, made_by in (("stages.json", "bisup export"), ("policy.json", "bisup calibrate --local")):
        if not (build_dir / name).is_file():
            raise BundleError(f"{build_dir} has no {name}; run `{made_by} ... --out {build_dir}` first")
    staged = StagedModel(build_dir)  # checks every stage against stages.json
    policy = Policy.read(build_dir / "policy.json")
    files = {"stages.json": dumps(staged.table).encode(), "policy.json": policy.dumps().encode(),
             "labels.json": (json.dumps(_labels(labels_path, staged.table.classes), indent=2) + "\n").encode()}
    files |= {entry.file: model for entry, model in zip(staged.table.stages, staged.models, strict=True)}
    return files, staged.model_hash.hex()


def build(build_dir: str | Path, out: str | Path, labels_path: str | Path | None = None,
          sign_key: str | Path | None = None) -> BundleManifest:
    """Write the archive atomically and return its manifest (a multi-exit export gives a multi-exit bundle);
    with ``sign_key`` (an Ed25519 PEM private key) also ``manifest.sig``, which ``--trust`` readers require."""
    from bisup.deployment import open_deployment

    files, model_hash = open_deployment(build_dir).members(Path(labels_path) if labels_path else None)
    manifest = BundleManifest(_toolkit_version(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), model_hash,
                              {name: Member(sha256_hex(data), len(data)) for name, data in files.items()})
    raw = dumps(manifest).encode()
    signature = sign_manifest(raw, sign_key) if sign_key is not None else None
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(handle)
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", raw)
        if signature is not None:
            archive.writestr(SIGNATURE, signature)
        for name, data in files.items():
            archive.writestr(name, data)
    Path(partial).replace(target)
    return manifest


def verify(path: str | Path) -> BundleManifest:
    """The manifest of a bundle whose every member matches it and whose artefacts this bisup reads."""
    from bisup.deployment import open_deployment

    open_deployment(path).verify()  # reads every artefact: a bundle that verifies also loads
    return read_archive(Path(path))[1]


def keygen(name: str | Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair: ``NAME.key`` (private, PEM, created mode 0600, never overwritten) for
    ``bisup bundle --sign`` and ``NAME.pub`` for ``--trust``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public = Path(f"{name}.key"), Path(f"{name}.pub")
    for path in (private, public):
        if path.exists():
            raise BundleError(f"{path} exists; keys are never overwritten: choose another name or move it aside")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    handle = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "wb") as out:
        out.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
