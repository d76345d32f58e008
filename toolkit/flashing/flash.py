"""``bisup flash``: write a bundle's model image to a board, or say exactly what would be written.

A plan is a list of writes (flash offset, bytes, what it is), made without touching hardware, so
``--dry-run`` shows and saves the very bytes a real run writes:

- ESP32 family (esptool): the partition table generated from the board profile at 0x8000, and
  the model image inside an ESP firmware-image container at the ``model`` data partition. The
  container (built by esptool's own image classes) carries esptool's checksum and SHA-256, so
  ``esptool image-info`` can check a model image off the board as well as on it.
- Cortex-M boards (pyocd): the model image at the profile's ``model_offset``, checked against
  pyocd's memory map of the target before any probe is opened.

A profile's ``flash_method`` names an entry of ``METHODS``: how to plan, write and spell by hand the
writes of that tool. A new tool is one entry; QEMU boards have one that says to use ``bisup hil``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bisup.boards import BoardProfile
from bisup.converters.errors import BisupError
from bisup.firmware_bridge.bundle import Bundle
from bisup.firmware_bridge.image import ModelImage
from bisup.flashing import esp_partitions


class FlashError(BisupError, RuntimeError):
    """A plan that cannot be made or a write that failed; the message names the fix."""


@dataclass(frozen=True)
class Write:
    offset: int
    data: bytes
    what: str
    file: str

    def describe(self) -> dict:
        return {"offset": self.offset, "end": self.offset + len(self.data), "bytes": len(self.data),
                "sha256": hashlib.sha256(self.data).hexdigest(), "what": self.what, "file": self.file}


@dataclass(frozen=True)
class FlashPlan:
    board: BoardProfile
    writes: tuple[Write, ...]
    extra_files: tuple[tuple[str, bytes], ...] = ()

    @property
    def tool(self) -> str:
        return self.board.flash_method

    def describe(self) -> dict:
        return {"board": self.board.name, "tool": self.tool, "target": self.board.flash_target,
                "writes": [w.describe() for w in self.writes]}

    def save(self, folder: Path) -> None:
        """Write each image (and the partition CSV) to ``folder`` for inspection or manual flashing."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in [(w.file, w.data) for w in self.writes] + list(self.extra_files):
            (folder / name).write_bytes(data)

    def command(self, port: str, folder: str | Path) -> str:
        """The equivalent manual command on the images saved in ``folder``, for users who flash with the
        vendors' tools."""
        files = [f"{Path(folder) / w.file}" for w in self.writes]
        return method(self.board).command(self, port, files)


def esp_container(payload: bytes, chip: str) -> bytes:
    """The payload as one flash-mapped (DROM) segment of an ESP firmware image for ``chip``."""
    from esptool.bin_image import ImageSegment
    from esptool.targets import CHIP_DEFS

    rom = CHIP_DEFS[chip]
    image = rom.BOOTLOADER_IMAGE()
    image.chip_id = rom.IMAGE_CHIP_ID
    # Load address 0x20 past the DROM window start keeps the segment at file offset 32, no padding.
    image.segments = [ImageSegment(rom.DROM_MAP_START + 0x20, payload)]
    with tempfile.TemporaryDirectory(prefix="bisup-esp-") as folder:  # esptool saves to a path only
        path = Path(folder) / "model.bin"
        image.save(str(path))
        return path.read_bytes()


def plan(bundle: Bundle, board: BoardProfile) -> FlashPlan:
    """What flashing ``bundle`` onto ``board`` writes, without touching hardware."""
    how = method(board)
    return how.plan(ModelImage(bundle.model, bundle.threshold_int8).encode(), board)


def _esp_plan(image: bytes, board: BoardProfile) -> FlashPlan:
    try:
        table = esp_partitions.for_board(board)
    except esp_partitions.PartitionError as exc:
        raise FlashError(f"board profile {board.name}: {exc}") from exc
    model_part = next(p for p in table if p.subtype == esp_partitions.MODEL_SUBTYPE)
    container = esp_container(image, board.flash_target)
    _check_fits(len(container), model_part.size, f"the 'model' partition ({model_part.size:,} B)")
    return FlashPlan(board, (
        Write(esp_partitions.TABLE_OFFSET, esp_partitions.to_binary(table), "partition table", "partition-table.bin"),
        Write(model_part.offset, container, "model image (ESP image container)", "model.bin"),
    ), (("partitions.csv", esp_partitions.to_csv(table).encode()),))


def _pyocd_plan(image: bytes, board: BoardProfile) -> FlashPlan:
    from pyocd.target import TARGET

    target = TARGET.get(board.flash_target)
    if target is None:
        raise FlashError(f"board {board.name}: pyocd has no built-in target {board.flash_target!r}; set "
                         "flash_target in the profile to one `pyocd list --targets` shows")
    region = target.MEMORY_MAP.get_region_for_address(board.model_offset)
    if region is None or not region.is_flash:
        raise FlashError(f"board {board.name}: model_offset {board.model_offset:#x} is not in flash on "
                         f"{board.flash_target}")
    _check_fits(len(image), region.end + 1 - board.model_offset, f"flash from {board.model_offset:#x}")
    return FlashPlan(board, (Write(board.model_offset, image, "model image", "model.bin"),))


def _check_fits(size: int, room: int, where: str) -> None:
    if size > room:
        raise FlashError(f"the model image is {size:,} B but {where} holds {room:,} B; use a smaller model or "
                         "a board with more flash")


def run(flash_plan: FlashPlan, port: str | None, baud: int = 460_800, probe: str | None = None,
        say: Callable[[str], None] = print) -> None:
    """Carry out the plan on a board; FlashError with the cause and the fix on any failure."""
    method(flash_plan.board).run(flash_plan, port, baud, probe, say)


def _run_esptool(flash_plan: FlashPlan, port: str | None, baud: int, probe: str | None,
                 say: Callable[[str], None]) -> None:
    if not port:
        raise FlashError("esptool boards need --port (e.g. /dev/ttyUSB0)")
    from esptool import cmds
    from esptool.util import FatalError
    from serial import SerialException

    chip = flash_plan.board.flash_target
    try:
        with cmds.detect_chip(port, connect_attempts=3) as esp:
            found = esp.CHIP_NAME.lower().replace("-", "")
            if found != chip:
                raise FlashError(f"the board on {port} is an {esp.CHIP_NAME}, not {chip}; pass the right --board")
            esp = esp.run_stub()
            if baud != esp.ESP_ROM_BAUD:
                esp.change_baud(baud)
            cmds.attach_flash(esp)
            cmds.write_flash(esp, [(w.offset, w.data) for w in flash_plan.writes])
            cmds.reset_chip(esp, "hard-reset")
    except (FatalError, SerialException, OSError) as exc:
        raise FlashError(f"esptool could not flash {chip} on {port}: {str(exc).strip().splitlines()[0]}; check "
                         "the port, the cable and boot mode (hold BOOT while pressing RESET)") from exc


def _run_pyocd(flash_plan: FlashPlan, port: str | None, baud: int, probe: str | None,
               say: Callable[[str], None]) -> None:
    from pyocd.core.exceptions import Error as PyocdError
    from pyocd.core.helpers import ConnectHelper
    from pyocd.flash.file_programmer import FileProgrammer

    target = flash_plan.board.flash_target
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pyocd prints its own coloured "no probe" line
            session = ConnectHelper.session_with_chosen_probe(blocking=False, unique_id=probe,
                                                              options={"target_override": target})
        if session is None:
            raise FlashError(f"no debug probe found{f' with id {probe}' if probe else ''}; connect a CMSIS-DAP, "
                             "J-Link or ST-Link probe to the board (`pyocd list` shows what is attached)")
        with session:
            for write in flash_plan.writes:
                say(f"writing {write.what} ({len(write.data):,} B) at {write.offset:#x}")
                FileProgrammer(session).program(io.BytesIO(write.data), file_format="bin",
                                                base_address=write.offset)
            session.target.reset()
    except PyocdError as exc:
        raise FlashError(f"pyocd could not flash {target}: {exc}") from exc


def _esptool_command(flash_plan: FlashPlan, port: str, files: list[str]) -> str:
    pairs = " ".join(f"{w.offset:#x} {name}" for w, name in zip(flash_plan.writes, files, strict=True))
    return f"esptool --chip {flash_plan.board.flash_target} --port {port} write-flash {pairs}"


def _pyocd_command(flash_plan: FlashPlan, port: str, files: list[str]) -> str:
    return " && ".join(f"pyocd flash -t {flash_plan.board.flash_target} --base-address {w.offset:#x} {name}"
                       for w, name in zip(flash_plan.writes, files, strict=True))


@dataclass(frozen=True)
class Method:
    """One ``flash_method``: the plan of writes for a model image, the run that makes them, and the manual
    command equivalent to the run. ``refusal`` instead says why ``bisup flash`` has no such run."""

    plan: Callable[[bytes, BoardProfile], FlashPlan] | None = None
    run: Callable[[FlashPlan, str | None, int, str | None, Callable[[str], None]], None] | None = None
    command: Callable[[FlashPlan, str, list[str]], str] | None = None
    refusal: str = ""


METHODS: dict[str, Method] = {
    "esptool": Method(_esp_plan, _run_esptool, _esptool_command),
    "pyocd": Method(_pyocd_plan, _run_pyocd, _pyocd_command),
    "qemu": Method(refusal="use `bisup hil --emulate {board}` for QEMU boards"),
}


def method(board: BoardProfile) -> Method:
    """The entry of ``METHODS`` the profile's ``flash_method`` names; FlashError naming the known ones."""
    flashable = " and ".join(name for name, entry in METHODS.items() if not entry.refusal)
    entry = METHODS.get(board.flash_method)
    if entry is None:
        raise FlashError(f"board {board.name} is flashed with {board.flash_method!r}, which bisup does not know; "
                         f"`bisup flash` knows {flashable} boards (flash_method is one of {', '.join(METHODS)})")
    if entry.refusal:
        raise FlashError(f"board {board.name} is flashed with {board.flash_method!r}; `bisup flash` knows "
                         f"{flashable} boards ({entry.refusal.format(board=board.name)})")
    return entry


def bundle_board(bundle: Bundle) -> str | None:
    """The board a bundle's model was exported for (None for a build folder without report.json)."""
    return bundle.report.board if bundle.report else None


