"""The fit verdict is the engine's that will run the model: the C engine by default, TFLM on request.

A budget between the C engine's arena and TFLM's must pass with one and fail with the other; the table's
flash and arena rows are the chosen engine's; a failure names the layer where memory peaks and the fix.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cli_errors import error_line
from click.testing import CliRunner

from bisup.boards import load_board
from bisup.cli import main
from bisup.converters.artefacts import ExportReport

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "export.json"


def _board(tmp_path: Path, arena_budget: int, flash_budget: int = 1 << 20):
    """A Cortex-M4 profile leaving ``arena_budget`` bytes of RAM and ``flash_budget`` of flash for the model."""
    profile = tmp_path / "between.toml"
    profile.write_text(f'name = "between"\ntitle = "Between"\narch = "cortex-m4"\ncpu_mhz = 80\n'
                       f'flash_bytes = {flash_budget}\nram_bytes = {arena_budget}\nflash_method = "pyocd"\n')
    return load_board(profile)


ENGINE = {"generated": True, "arena_bytes": 16_000, "flash_bytes": 35_879, "macs": 2_656_768,
          "arena_peak": {"layer": 1, "op": "DEPTHWISE_CONV_2D", "live_bytes": 16_000}}


def test_a_budget_between_the_arenas_passes_with_c_and_fails_with_tflm(tmp_path):
    from bisup.export import fit

    board = _board(tmp_path, 20_480)
    assert fit.choose(None, ENGINE) == "c"
    assert fit.problems("c", ENGINE, board, 50_960, 27_328) == []
    [problem] = fit.problems("tflm", ENGINE, board, 50_960, 27_328)
    assert problem.startswith("TFLM's tensor arena (measured minimum + margin) needs 27,328 B of RAM but between "
                              "leaves 20,480 B")
    assert "memory peaks at layer 1 (DEPTHWISE_CONV_2D) with 16,000 B of activations live" in problem
    assert problem.endswith("the C engine needs 16,000 B (--engine c)")


def test_the_c_engine_over_budget_names_its_peak_and_its_flash(tmp_path):
    from bisup.export import fit

    board = _board(tmp_path, 12_000, flash_budget=30_000)
    arena, flash = fit.problems("c", ENGINE, board, 20_000, 27_328)[::-1]
    assert "the C engine's arena needs 16,000 B of RAM but between leaves 12,000 B" in arena
    assert "shrink that layer" in arena and "--engine c" not in arena
    assert "model needs 35,879 B flash for the C engine's code + weights but between leaves 30,000 B" in flash


def test_without_the_c_engine_the_default_is_tflm_and_asking_for_c_says_why(tmp_path):
    from bisup.export import fit

    unsupported = {"generated": False, "reason": "op 3 (UNPACK) is not supported"}
    assert fit.choose(None, unsupported) == "tflm"
    [problem] = fit.problems("c", unsupported, _board(tmp_path, 1 << 20), 50_960, 27_328)
    assert problem == ("the C engine cannot run this model (op 3 (UNPACK) is not supported); export with "
                       "--engine tflm to deploy model_data.cc")


@pytest.mark.parametrize("chosen", ["c", "tflm"])
def test_the_table_shows_the_chosen_engines_flash_and_arena(chosen):
    from bisup.cli.tables import export_table

    report = dataclasses.replace(ExportReport.from_json(SNAPSHOT.read_text()), fit_engine=chosen)
    rows = {line[:25].strip(): line[25:].strip() for line in export_table(report, layers=False).splitlines()
            if line.startswith("  ") and len(line) > 25}
    if chosen == "c":
        assert rows["arena (C engine)"] == f"{report.engine['arena_bytes']:,} B of {report.arena_budget_bytes:,} B " \
                                           "budget (exact)"
        assert rows["flash (C engine)"].startswith(f"{report.engine['flash_bytes']:,} B of")
        assert "arena (recommended)" not in rows
    else:
        assert rows["arena (recommended)"].startswith(f"{report.arena_recommended_bytes:,} B of")
        assert rows["flash (model)"].startswith(f"{report.flash_bytes:,} B of")
        assert "arena (C engine)" not in rows
    verdict = {"c": "C engine (verdict)", "tflm": "TFLM (verdict)"}[chosen]
    assert any(line.startswith(f"  {verdict} ") for line in export_table(report).splitlines())


def test_an_unknown_engine_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(main, ["export", "m.keras", "--calib", "c.npz", "--board", "esp32", "--out",
                                       str(tmp_path), "--engine", "cmsis"])
    line = error_line(result)
    assert "'--engine'" in line and "'cmsis' is not one of 'c', 'tflm'" in line


@pytest.mark.slow
def test_the_command_line_verdict_follows_the_engine(digits_example, tmp_path):
    """The digits model: the C engine's arena is 640 B, TFLM's about 3.9 KB; a 2,048 B budget lies between."""
    profile = _board(tmp_path, 2_048)
    args = ["export", str(digits_example["model"]), "--calib", str(digits_example["calib"]), "--board",
            str(tmp_path / "between.toml"), "--no-layers"]
    by_c = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "c")])
    assert by_c.exit_code == 0, by_c.stderr
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["fits"] is True and report["fit_engine"] == "c"
    assert f"{report['engine']['arena_bytes']:,} B of {profile.arena_ram_budget:,} B budget (exact)" in by_c.stdout
    by_tflm = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "t"), "--engine", "tflm"])
    line = error_line(by_tflm)
    assert line.startswith("Error: model does not fit between: TFLM's tensor arena")
    assert "memory peaks at layer" in line and line.endswith(f"the C engine needs {report['engine']['arena_bytes']:,} "
                                                             "B (--engine c)")


def test_a_multi_exit_model_is_not_judged_by_tflm_on_request(tmp_path):
    """Its stages share one C engine arena; asking for a TFLM verdict would be silently ignored, so it is refused."""
    import keras
    import numpy as np

    from bisup.converters import exits

    inputs = keras.Input((8, 8, 1))
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(stem)
    exits.attach(keras.Model(inputs, keras.layers.Dense(3)(pooled)), ["stem"]).save(tmp_path / "multi.keras")
    np.savez(tmp_path / "calib.npz", x=np.zeros((120, 8, 8, 1), np.float32))
    result = CliRunner().invoke(main, ["export", str(tmp_path / "multi.keras"), "--calib", str(tmp_path / "calib.npz"),
                                       "--board", "esp32", "--out", str(tmp_path / "o"), "--engine", "tflm"])
    assert "stages are judged by the C engine's shared arena" in error_line(result)
