"""Board profiles: flash and RAM limits, architecture, flashing method and kernel caveats.

Profiles are plain TOML files in this folder so that adding a board is adding a file; a user can
also point at their own profile file by path wherever a board name is taken.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from converters.artefacts import BoardProfile, Caveat
from converters.errors import BisupError

__all__ = ["BoardError", "BoardProfile", "Caveat", "PROFILE_DIR", "all_boards", "board_names", "load_board"]

PROFILE_DIR = Path(__file__).resolve().parent
_CAVEATS_FILE = PROFILE_DIR / "caveats.toml"
_REQUIRED = ("name", "title", "arch", "cpu_mhz", "flash_bytes", "ram_bytes", "flash_method")


class BoardError(BisupError, ValueError):
    """An unknown board or a malformed profile; the message names the fix."""


def _load_caveats() -> dict[str, Caveat]:
    data = tomllib.loads(_CAVEATS_FILE.read_text())
    return {cid: Caveat(id=cid, **fields) for cid, fields in data.items()}


def _parse(path: Path) -> BoardProfile:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BoardError(f"board profile {path} cannot be read: {exc}") from exc
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise BoardError(f"board profile {path} lacks {', '.join(missing)}")
    known = _load_caveats()
    unknown = [cid for cid in data.get("caveats", []) if cid not in known]
    if unknown:
        raise BoardError(f"board profile {path} names unknown caveats {unknown}; known: {sorted(known)}")
    data["caveats"] = tuple(known[cid] for cid in data.get("caveats", []))
    data["notes"] = tuple(data.get("notes", []))
    try:
        return BoardProfile(**data)
    except TypeError as exc:
        raise BoardError(f"board profile {path} has an unexpected key: {exc}") from exc


def board_names() -> list[str]:
    """Names of the profiles shipped in this folder."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml") if p.name != _CAVEATS_FILE.name)


def load_board(name_or_path: str) -> BoardProfile:
    """Load a shipped profile by name, or a user's own profile from a `.toml` path."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise BoardError(f"board profile file {path} does not exist")
        return _parse(path)
    if name_or_path not in board_names():
        raise BoardError(
            f"unknown board {name_or_path!r}; choose one of {', '.join(board_names())} "
            "or pass a profile file (see `bisup boards`)"
        )
    return _parse(PROFILE_DIR / f"{name_or_path}.toml")


def all_boards() -> list[BoardProfile]:
    """Every shipped profile, sorted by name."""
    return [load_board(name) for name in board_names()]
