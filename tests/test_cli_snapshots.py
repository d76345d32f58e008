"""The main commands print the same ``--json`` as before a restructuring, on the same inputs.

The recorded outputs in ``tests/snapshots/`` were made by the code before the layout change of
issue 20 and are compared key by key. The inputs are built without training (a least-squares linear
classifier on scikit-learn's digits, its weights rounded to multiples of 1/256), so they are the
same on every machine. Values that differ from run to run (paths, times, versions, creation
stamps) are masked; floats are compared to 1e-4 relative. Re-record on purpose, reviewing the diff,
with ``BISUP_RECORD_SNAPSHOTS=1 pytest tests/test_cli_snapshots.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

SNAPSHOTS = Path(__file__).parent / "snapshots"
RECORD = os.environ.get("BISUP_RECORD_SNAPSHOTS") == "1"
# Run-dependent values; hashes too, since the JSON members they cover hold times and paths, and the emulated
# board's latency in host time (its instruction counts are kept).
_VOLATILE = re.compile(r"(seconds|_s$|time|created|version|elapsed|wall|path|dir$|file$|sha256|hash|device_latency)",
                       re.IGNORECASE)
# The emulated board's timer ticks every 40 instructions, so its counts move by a tick between runs.
_MEASURED = re.compile(r"(instructions|cycles|latency_us)")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def linear_example(tmp_path_factory) -> dict[str, Path]:
    """A deterministic model and data: no training, no random initialisation, no threads to reorder sums."""
    from sklearn.datasets import load_digits

    out = tmp_path_factory.mktemp("linear")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    for name, step in (("model", 2), ("remote", 1)):  # the device model sees every other pixel
        _linear(x, y, step).save(out / f"{name}.keras")
    order = np.arange(len(x))
    for name, part in {"calib": order[0::3], "val": order[1::3], "test": order[2::3]}.items():
        np.savez(out / f"{name}.npz", x=x[part], y=y[part])
    files = {n: out / f"{n}.npz" for n in ("calib", "val", "test")}
    return {"model": out / "model.keras", "remote": out / "remote.keras", **files, "dir": out}


def _linear(x: np.ndarray, y: np.ndarray, step: int):
    """A ridge least-squares linear classifier on every ``step``-th pixel, weights rounded to 1/256."""
    import keras

    design = np.hstack([x.reshape(len(x), -1), np.ones((len(x), 1), np.float32)]).astype(np.float64)
    design[:, :64][:, np.arange(64) % step != 0] = 0.0
    targets = np.eye(10)[y] * 8.0 - 4.0  # the logits of a confident classifier
    weights = np.round(np.linalg.solve(design.T @ design + np.eye(65), design.T @ targets) * 256) / 256
    # names given, so the flatbuffer (and its size) does not depend on how many Keras models the session made
    model = keras.Sequential([keras.Input((8, 8, 1), name="pixels"), keras.layers.Flatten(name="flatten"),
                              keras.layers.Dense(10, name="logits")], name=f"linear_step{step}")
    model.layers[-1].set_weights([weights[:64].astype(np.float32), weights[64].astype(np.float32)])
    return model


def _masked(value, root: str):
    """``value`` with run-dependent entries replaced by a marker, so that equal runs compare equal."""
    if isinstance(value, dict):
        return {k: "<volatile>" if _VOLATILE.search(k) else _masked(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<tmp>")
    return value


def _same(recorded, now, where: str = "$") -> list[str]:
    """Every difference between two JSON values, by path; floats within 1e-4 relative are equal (5% for the
    emulated board's instruction counts)."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        problems = [f"{where}: keys {sorted(set(recorded) ^ set(now))} differ"] if set(recorded) != set(now) else []
        return problems + [p for k in recorded.keys() & now.keys() for p in _same(recorded[k], now[k], f"{where}.{k}")]
    if isinstance(recorded, list) and isinstance(now, list):
        if len(recorded) != len(now):
            return [f"{where}: {len(recorded)} items recorded, {len(now)} now"]
        return [p for i, (a, b) in enumerate(zip(recorded, now, strict=True)) for p in _same(a, b, f"{where}[{i}]")]
    if isinstance(recorded, float) or isinstance(now, float):
        if isinstance(recorded, int | float) and isinstance(now, int | float) \
                and math.isclose(recorded, now, rel_tol=0.05 if _MEASURED.search(where) else 1e-4, abs_tol=1e-9):
            return []
    elif recorded == now:
        return []
    return [f"{where}: recorded {recorded!r}, now {now!r}"]


def _check(name: str, output: str, root: Path) -> None:
    now = _masked(json.loads(output), str(root))
    path = SNAPSHOTS / f"{name}.json"
    if RECORD:
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")
        return
    problems = _same(json.loads(path.read_text()), now)
    assert not problems, f"`bisup {name}` prints other JSON than before:\n" + "\n".join(problems[:20])


def _run(args: list[str]) -> str:
    from bisup.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def exported(linear_example) -> Path:
    out = linear_example["dir"] / "export"
    output = _run(["export", str(linear_example["model"]), "--calib", str(linear_example["calib"]),
                   "--board", "mps2-an386", "--out", str(out), "--json"])
    _check("export", output, linear_example["dir"])
    output = _run(["calibrate", "--local", str(out / "model.tflite"), "--remote", str(linear_example["remote"]),
                   "--data", str(linear_example["val"]), "--max-remote-fraction", "0.2", "--out", str(out), "--json"])
    _check("calibrate", output, linear_example["dir"])
    return out


def test_export_and_calibrate(exported):
    """Recorded by the fixture: report.json and thresholds.json as printed."""
    assert (exported / "thresholds.json").exists()


def test_boards():
    _check("boards", _run(["boards", "--json"]), Path("/nonexistent"))


def test_bundle_and_flash(exported, linear_example, tmp_path):
    archive = tmp_path / "linear.bisup"
    _check("bundle", _run(["bundle", str(exported), "--out", str(archive), "--json"]), tmp_path)
    _check("bundle-verify", _run(["bundle", "--verify", str(archive), "--json"]), tmp_path)
    _check("flash", _run(["flash", str(archive), "--board", "nrf52840", "--dry-run", "--json"]), tmp_path)


@pytest.mark.toolchain
def test_hil_emulated(exported, linear_example, tmp_path):
    data = tmp_path / "hil.npz"
    with np.load(linear_example["test"]) as test:
        np.savez(data, x=test["x"][:40], y=test["y"][:40])
    output = _run(["hil", "--emulate", "mps2-an386", "--bundle", str(exported), "--data", str(data),
                   "--remote", str(linear_example["remote"]), "--json"])
    _check("hil", output, tmp_path)
