"""Board profiles: flash and RAM limits, architecture, flashing method, kernel caveats, firmware template
and, for a board QEMU emulates, its machine and memory map.

Profiles are plain TOML files in this folder so that adding a board is adding a file; a user can
also point at their own profile file by path wherever a board name is taken, or keep profiles in
folders named by ``BISUP_BOARDS_PATH`` (``os.pathsep``-separated), which count as shipped ones do,
``bisup hil --emulate`` included. A profile with an ``[emulation]`` table is an emulated board: the
table is the one place its QEMU machine, core, clock and memory map are written down.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import fields
from pathlib import Path

from bisup.converters.artefacts import BoardProfile, Caveat, Emulation
from bisup.converters.errors import BisupError

__all__ = ["BOARDS_PATH_ENV", "BoardError", "BoardProfile", "Caveat", "Emulation", "FIRMWARE_FILES", "PROFILE_DIR",
           "all_boards", "board_dirs", "board_names", "emulated_names", "firmware_dir", "load_board"]

PROFILE_DIR = Path(__file__).resolve().parent
BOARDS_PATH_ENV = "BISUP_BOARDS_PATH"
# What `bisup hil --emulate` builds from a firmware folder: the shared board part and its two programs.
FIRMWARE_FILES = ("link.ld.in", "startup.c", "board.c", "board.h", "main_model.c", "main_stages.c")
_CAVEATS_FILE = PROFILE_DIR / "caveats.toml"
_REQUIRED = ("name", "title", "arch", "cpu_mhz", "flash_bytes", "ram_bytes", "flash_method")
_EMULATION_TEXT = ("machine", "cpu")
_EMULATION_SIZES = ("cpu_hz", "flash_bytes", "ram_bytes")  # must be positive; origins and uart0 may be 0
_EMULATION_OPTIONAL = ("vectors_origin",)


class BoardError(BisupError, ValueError):
    """An unknown board or a malformed profile; the message names the fix."""


def board_dirs() -> list[Path]:
    """Where profiles are found: this folder, then each folder in ``BISUP_BOARDS_PATH``."""
    extra = [Path(folder) for folder in os.environ.get(BOARDS_PATH_ENV, "").split(os.pathsep) if folder]
    return [PROFILE_DIR, *extra]


def _profile_files() -> dict[str, list[Path]]:
    """Every profile file by board name (its file name), in search order."""
    found: dict[str, list[Path]] = {}
    for folder in board_dirs():
        for path in sorted(folder.glob("*.toml")):
            if path.name != _CAVEATS_FILE.name:
                found.setdefault(path.stem, []).append(path)
    return found


def _load_caveats() -> dict[str, Caveat]:
    data = tomllib.loads(_CAVEATS_FILE.read_text())
    return {cid: Caveat(id=cid, **entry) for cid, entry in data.items()}


def _find_firmware(profile: Path, folder: str) -> Path | None:
    """A firmware folder next to the profile, else in this folder (so a user's profile may reuse ``mps2``)."""
    for base in (profile.parent, PROFILE_DIR):
        if (base / folder).is_dir():
            return (base / folder).resolve()
    return None


def _check_firmware(path: Path, data: dict) -> None:
    folder = data.get("firmware", "")
    if not isinstance(folder, str):
        raise BoardError(f"board profile {path}: firmware must be a folder name (relative to the boards folder), "
                         f"not {folder!r}")
    found = _find_firmware(path, folder) if folder else None
    if folder and found is None:
        raise BoardError(f"board profile {path}: firmware {folder!r} is not a folder in {path.parent} or "
                         f"{PROFILE_DIR}")
    if "emulation" not in data:
        return
    if found is None:
        raise BoardError(f"board profile {path}: an emulated board needs firmware, the folder with "
                         f"{', '.join(FIRMWARE_FILES)} that `bisup hil --emulate` builds (e.g. firmware = \"mps2\")")
    missing = [name for name in FIRMWARE_FILES if not (found / name).is_file()]
    if missing:
        raise BoardError(f"board profile {path}: firmware {folder!r} ({found}) lacks {', '.join(missing)}, which "
                         "`bisup hil --emulate` builds")


def _emulation(path: Path, table: object) -> Emulation:
    """The ``[emulation]`` table, each key checked, so a typo is named with its file rather than found by QEMU."""
    keys = [f.name for f in fields(Emulation)]
    if not isinstance(table, dict):
        raise BoardError(f"board profile {path}: emulation must be a table ([emulation] with {', '.join(keys)})")
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise BoardError(f"board profile {path}: emulation.{unknown[0]} is not a key of [emulation]; it holds "
                         f"{', '.join(keys)}")
    missing = [key for key in keys if key not in table and key not in _EMULATION_OPTIONAL]
    if missing:
        raise BoardError(f"board profile {path}: [emulation] lacks {', '.join(f'emulation.{k}' for k in missing)}")
    for key in _EMULATION_TEXT:
        if not isinstance(table[key], str) or not table[key]:
            raise BoardError(f"board profile {path}: emulation.{key} must be a non-empty string, not {table[key]!r}")
    for key in (key for key in keys[len(_EMULATION_TEXT):] if key in table):
        value = table[key]
        if type(value) is not int or value < 0 or (value == 0 and key in _EMULATION_SIZES) or value >= 1 << 32:
            raise BoardError(f"board profile {path}: emulation.{key} must be a{' positive' * (key in _EMULATION_SIZES)}"
                             f" 32-bit integer, not {value!r}")
    if table["cpu_hz"] % 1_000_000:
        raise BoardError(f"board profile {path}: emulation.cpu_hz must be a whole number of MHz (the firmware counts "
                         f"microseconds as CPU_HZ / 1000000), not {table['cpu_hz']:,}")
    return Emulation(**table)


def _parse(path: Path) -> BoardProfile:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BoardError(f"board profile {path} cannot be read: {exc}") from exc
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise BoardError(f"board profile {path} lacks {', '.join(missing)}")
    known = _load_caveats()
    unknown = [cid for cid in data.get("caveats", []) if cid not in known]
    if unknown:
        raise BoardError(f"board profile {path} names unknown caveats {unknown}; known: {sorted(known)}")
    _check_firmware(path, data)
    if "emulation" in data:
        data["emulation"] = _emulation(path, data["emulation"])
    data["caveats"] = tuple(known[cid] for cid in data.get("caveats", []))
    data["notes"] = tuple(data.get("notes", []))
    try:
        return BoardProfile(**data)
    except TypeError as exc:
        raise BoardError(f"board profile {path} has an unexpected key: {exc}") from exc


def board_names() -> list[str]:
    """Names of the profiles found (this folder and ``BISUP_BOARDS_PATH``)."""
    return sorted(_profile_files())


def _locate(name_or_path: str) -> Path:
    """The profile file of a board name, or a `.toml` path as given."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise BoardError(f"board profile file {path} does not exist")
        return path
    paths = _profile_files().get(name_or_path)
    if not paths:
        raise BoardError(
            f"unknown board {name_or_path!r}; choose one of {', '.join(board_names())} "
            "or pass a profile file (see `bisup boards`)"
        )
    if len(paths) > 1:
        raise BoardError(f"board {name_or_path!r} has two profiles, {paths[0]} and {paths[1]}; rename one "
                         f"(the file name is the board's name)")
    return paths[0]


def load_board(name_or_path: str) -> BoardProfile:
    """Load a profile by name, or a user's own profile from a `.toml` path."""
    return _parse(_locate(name_or_path))


def firmware_dir(name_or_path: str) -> Path:
    """The board's firmware folder (its profile's ``firmware``), found next to the profile or in this folder."""
    path = _locate(name_or_path)
    profile = _parse(path)
    found = _find_firmware(path, profile.firmware) if profile.firmware else None
    if found is None:
        raise BoardError(f"board profile {path} names no firmware folder")
    return found


def emulated_names() -> list[str]:
    """Names of the profiles with an ``[emulation]`` table: the boards ``--emulate`` offers.

    Read with tomllib only and never raising, so the CLI and the pytest plugin can offer them at start-up;
    a malformed profile is named, with the key at fault, when the board is used."""
    names = []
    for name, paths in _profile_files().items():
        try:
            if "emulation" in tomllib.loads(paths[0].read_text()):
                names.append(name)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
    return sorted(names)


def all_boards() -> list[BoardProfile]:
    """Every profile found, sorted by name."""
    return [load_board(name) for name in board_names()]
