"""Board profiles: flash and RAM limits, architecture, flashing method and kernel caveats.

Profiles are plain TOML files in this folder so that adding a board is adding a file; a user can
also point at their own profile file by path wherever a board name is taken.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from converters.errors import BisupError

PROFILE_DIR = Path(__file__).resolve().parent
_CAVEATS_FILE = PROFILE_DIR / "caveats.toml"
_REQUIRED = ("name", "title", "arch", "cpu_mhz", "flash_bytes", "ram_bytes", "flash_method")


class BoardError(BisupError, ValueError):
    """An unknown board or a malformed profile; the message names the fix."""


@dataclass(frozen=True)
class Caveat:
    """A known kernel problem on some boards; `check` names the model inspection that detects it."""

    id: str
    check: str
    severity: str
    message: str
    fix: str
    source: str


@dataclass(frozen=True)
class BoardProfile:
    """What the exporter needs to know about a board to say whether a model fits and runs right."""

    name: str
    title: str
    arch: str
    cpu_mhz: int
    flash_bytes: int
    ram_bytes: int
    flash_method: str
    reserved_flash_bytes: int = 0
    reserved_ram_bytes: int = 0
    kernels: str = "reference"
    flash_target: str = ""
    model_offset: int = 0
    notes: tuple[str, ...] = ()
    caveats: tuple[Caveat, ...] = field(default_factory=tuple)

    @property
    def model_flash_budget(self) -> int:
        """Flash left for the model once the firmware image is accounted for."""
        return self.flash_bytes - self.reserved_flash_bytes

    @property
    def arena_ram_budget(self) -> int:
        """RAM left for the tensor arena once stacks, heap and radio stacks are accounted for."""
        return self.ram_bytes - self.reserved_ram_bytes


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
