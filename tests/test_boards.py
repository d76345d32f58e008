"""Board profiles as the one place a board is described: emulated boards (QEMU machine and memory map),
firmware folders, flash methods, and the package data that ships them."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest
from cli_errors import error_line
from click.testing import CliRunner

from bisup.boards import BOARDS_PATH_ENV, PROFILE_DIR, BoardError, all_boards, board_names, firmware_dir, load_board
from bisup.cli import main
from bisup.flashing import flash
from bisup.hil import target

ROOT = Path(__file__).resolve().parents[1]

# The memory maps of QEMU's hw/arm/mps2.c and mps2-tz.c (as toolkit/hil.py had them, and mps3-an547's): the
# profiles hold them, and a typo there would build firmware that never says HELLO.
MB = 1024 * 1024
KNOWN_MACHINES = {
    "mps2-an386": ("mps2-an386", "cortex-m4", 25_000_000, 0x0, 4 * MB, 0x20000000, 4 * MB, 0x40004000),
    "mps2-an500": ("mps2-an500", "cortex-m7", 25_000_000, 0x0, 4 * MB, 0x20000000, 4 * MB, 0x40004000),
    "mps2-an505": ("mps2-an505", "cortex-m33", 20_000_000, 0x10000000, 4 * MB, 0x38000000, 2 * MB, 0x50200000),
    # SSE-300: the FPGA's 2 MB SRAM, DTCM (512 KB, `info mtree`) and the FPGA's UART0, at their secure aliases
    "mps3-an547": ("mps3-an547", "cortex-m55", 32_000_000, 0x11000000, 2 * MB, 0x30000000, MB // 2, 0x59303000),
}


def test_emulated_boards_are_the_profiles_with_an_emulation_table():
    emulated = [board.name for board in all_boards() if board.emulation is not None]
    assert target.machines() == emulated and set(KNOWN_MACHINES) <= set(emulated)
    for name, values in KNOWN_MACHINES.items():
        board = target.emulated(name)
        assert (board.machine, board.cpu, board.cpu_hz, board.flash_origin, board.flash_bytes, board.ram_origin,
                board.ram_bytes, board.uart0) == values
        assert load_board(name).firmware == "mps2" and firmware_dir(name) == PROFILE_DIR / "mps2"
    # the an547 boots from ITCM (its vector table) but runs from the FPGA SRAM, which fits VWW's code and image
    assert [target.emulated(name).vectors_origin for name in KNOWN_MACHINES] == [None, None, None, 0x10000000]


def _extra_board(folder: Path, name: str = "my-m4", edit=lambda text: text) -> Path:
    """A copy of the mps2-an386 profile under another name: what a user adds for a new emulated board."""
    text = (PROFILE_DIR / "mps2-an386.toml").read_text().replace('name = "mps2-an386"', f'name = "{name}"')
    path = folder / f"{name}.toml"
    path.write_text(edit(text))
    return path


def test_a_new_emulated_board_is_one_toml_file(tmp_path, monkeypatch):
    """One file in a BISUP_BOARDS_PATH folder, nothing else changed: listed, offered by --emulate (CLI and
    pytest plugin), with its memory map and the shipped firmware it names."""
    _extra_board(tmp_path)
    assert "my-m4" not in target.machines()
    monkeypatch.setenv(BOARDS_PATH_ENV, str(tmp_path))
    assert "my-m4" in board_names() and "my-m4" in target.machines()
    assert target.emulated("my-m4") == target.emulated("mps2-an386") and firmware_dir("my-m4") == PROFILE_DIR / "mps2"
    assert "my-m4" in CliRunner().invoke(main, ["boards"]).stdout
    assert "my-m4" in CliRunner().invoke(main, ["hil", "--help"]).stdout
    chosen = CliRunner().invoke(main, ["hil", "--emulate", "my-m4", "--bundle", str(tmp_path / "none.bisup"),
                                       "--data", "d.npz", "--remote", "r"])
    assert "none.bisup does not exist" in error_line(chosen)  # past the choice: the board was accepted

    from bisup.hil import pytest_plugin

    class Group:
        def addoption(self, name, **kwargs):
            options[name] = kwargs

    options: dict = {}
    pytest_plugin.pytest_addoption(type("Parser", (), {"getgroup": lambda self, *a: Group()})())
    assert "my-m4" in options["--bisup-emulate"]["choices"]


def test_a_board_with_a_shipped_name_is_refused_by_name(tmp_path, monkeypatch):
    _extra_board(tmp_path, "mps2-an386")
    monkeypatch.setenv(BOARDS_PATH_ENV, str(tmp_path))
    with pytest.raises(BoardError, match="board 'mps2-an386' has two profiles, .*mps2-an386.toml and .*; rename"):
        load_board("mps2-an386")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("uart0 = ", "uart1 = "), "emulation.uart1 is not a key of [emulation]"),
    (lambda t: t.replace("cpu_hz = 25_000_000", ""), "[emulation] lacks emulation.cpu_hz"),
    (lambda t: t.replace("cpu_hz = 25_000_000", 'cpu_hz = "25 MHz"'), "emulation.cpu_hz must be a positive 32-bit"),
    (lambda t: t.replace("cpu_hz = 25_000_000", "cpu_hz = 25_500_000"), "emulation.cpu_hz must be a whole number"),
    (lambda t: t.replace('cpu = "cortex-m4"', "cpu = 4"), "emulation.cpu must be a non-empty string"),
    (lambda t: t.replace("ram_bytes = 0x400000", "ram_bytes = 0"), "emulation.ram_bytes must be a positive"),
    (lambda t: t.replace('firmware = "mps2"', 'firmware = "mps9"'), "firmware 'mps9' is not a folder in"),
    (lambda t: t.replace('firmware = "mps2"', ""), "an emulated board needs firmware"),
    (lambda t: t.replace('firmware = "mps2"', 'firmware = "esp32s3"'), "firmware 'esp32s3' (*) lacks link.ld.in"),
])
def test_a_malformed_profile_is_named_with_its_file_and_key(tmp_path, edit, message):
    path = _extra_board(tmp_path, edit=edit)
    with pytest.raises(BoardError) as caught:
        load_board(str(path))
    assert str(caught.value).startswith(f"board profile {path}")
    assert fnmatch.fnmatch(str(caught.value), f"*{message.replace('[', '[[]')}*"), str(caught.value)


def test_each_profile_names_its_firmware_folder():
    named = {board.name: board.firmware for board in all_boards() if board.firmware}
    assert named["esp32s3"] == "esp32s3" and named["nrf52840"] == "nrf52840"
    assert all(named[name] == "mps2" for name in target.machines())
    assert all(firmware_dir(name).is_dir() for name in named)


@pytest.mark.parametrize("method, message", [
    ("qemu", "board x is flashed with 'qemu'; `bisup flash` knows esptool and pyocd boards (use `bisup hil "
             "--emulate x` for QEMU boards)"),
    ("jlink", "board x is flashed with 'jlink', which bisup does not know; `bisup flash` knows esptool and pyocd "
              "boards (flash_method is one of esptool, pyocd, qemu)"),
])
def test_flash_methods_are_one_table(method, message):
    board = load_board("nrf52840").__class__(name="x", title="x", arch="cortex-m4", cpu_mhz=1, flash_bytes=1,
                                             ram_bytes=1, flash_method=method)
    with pytest.raises(flash.FlashError) as caught:
        flash.method(board)
    assert str(caught.value) == message
    assert {name for name, entry in flash.METHODS.items() if not entry.refusal} == {"esptool", "pyocd"}
    for profile in all_boards():  # every shipped profile names a method the table has
        assert profile.flash_method in flash.METHODS, profile.name


def _package_data_globs() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["bisup.boards"]


def test_every_file_under_boards_is_package_data():
    """pyproject's package-data globs for boards/ (setuptools' rules: relative to the package, ** recursive)
    match every file there, firmware folders included, so a new template ships without editing pyproject."""
    globs = _package_data_globs()
    shipped = {path for pattern in globs for path in PROFILE_DIR.glob(pattern) if path.is_file()}
    files = {path for path in PROFILE_DIR.rglob("*")
             if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".py"}
    assert files - shipped == set()
    for board in all_boards():
        if board.firmware:
            assert {p for p in firmware_dir(board.name).rglob("*") if p.is_file()} <= shipped, board.name
