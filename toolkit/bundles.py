"""``bisup bundle``: pack a build folder into a versioned, hash-checked ``.bisup`` archive.

The archive holds what a device and the bridge need and nothing they must guess: the model, the
thresholds (int8 local, remote), the labels, the input quantization and the export report (board,
measured arena), plus a
``manifest.json`` with the SHA-256 and size of every member and the toolkit version. Reading and
verification live in ``firmware_bridge.bundle`` so the bridge needs no toolkit.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from converters import tflite_model
from converters.artefacts import BundleManifest, ExportReport, Member, Thresholds, dumps
from firmware_bridge.bundle import Bundle, BundleError, read_archive, sha256_hex


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


def build(build_dir: str | Path, out: str | Path, labels_path: str | Path | None = None) -> BundleManifest:
    """Write the archive atomically and return its manifest."""
    files = members(Path(build_dir), Path(labels_path) if labels_path else None)
    manifest = BundleManifest(_toolkit_version(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              sha256_hex(files["model.tflite"]),
                              {name: Member(sha256_hex(data), len(data)) for name, data in files.items()})
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(handle)
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", dumps(manifest))
        for name, data in files.items():
            archive.writestr(name, data)
    Path(partial).replace(target)
    return manifest


def verify(path: str | Path) -> BundleManifest:
    """The manifest of a bundle whose every member matches it and whose artefacts this bisup reads."""
    Bundle.load(path)  # parses thresholds.json and report.json too: a bundle that verifies also loads
    return read_archive(Path(path))[1]
