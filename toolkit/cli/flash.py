"""``bisup flash``: a bundle's model image onto a board."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bisup.cli.common import (
    main,
    trusted,
)


@main.command()
@click.argument("bundle_path", type=click.Path(path_type=Path))
@click.option("--board", help="Board profile name or .toml path [default: the board the bundle was exported for].")
@click.option("--port", help="Serial port of an ESP32 board, e.g. /dev/ttyUSB0 (esptool boards).")
@click.option("--probe", help="Debug probe id for Cortex-M boards (pyocd); default: the only one attached.")
@click.option("--baud", default=460_800, show_default=True, help="esptool's baud rate once connected.")
@click.option("--dry-run", is_flag=True, help="Print what would be written where, and touch no hardware.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Also save the images (and partitions.csv) here, e.g. for flashing by hand.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@trusted
def flash(bundle_path: Path, board: str | None, port: str | None, probe: str | None, baud: int, dry_run: bool,
          out_dir: Path | None, as_json: bool) -> None:
    """Write a bundle's model image to a board, so a new model needs no firmware rebuild.

    The image is a 64-byte header (model size, int8 threshold, SHA-256) and the model. ESP32 boards
    (esptool): the partition table from the board profile goes to 0x8000 and the image, in an ESP image
    container that `esptool image-info` checks, to the `model` data partition, which the firmware maps
    with esp_partition_mmap. Cortex-M boards (pyocd): the image goes to the profile's model_offset.

    \b
      bisup flash dist/digits.bisup --board esp32s3 --port /dev/ttyUSB0
      bisup flash dist/digits.bisup --board nrf52840 --dry-run --out flash/
    """
    from bisup.boards import load_board
    from bisup.cli.tables import flash_table
    from bisup.firmware_bridge.bundle import Bundle
    from bisup.flashing import flash as flashing

    loaded = Bundle.load(bundle_path)
    exported_for = flashing.bundle_board(loaded)
    if not (board or exported_for):
        raise click.UsageError(f"{bundle_path} does not say which board it is for; pass --board (see `bisup boards`)")
    profile = load_board(board or exported_for)
    if exported_for and exported_for != profile.name:
        click.echo(f"warning: the bundle was exported for {exported_for}, not {profile.name}; its memory and "
                   "kernel checks do not cover this board", err=True)
    plan = flashing.plan(loaded, profile)
    if out_dir:
        plan.save(out_dir)
    click.echo(json.dumps(plan.describe(), indent=2) if as_json else flash_table(plan, port or "PORT", out_dir))
    if not dry_run:
        flashing.run(plan, port, baud, probe, say=lambda line: click.echo(line, err=True))
        click.echo(f"flashed {loaded.path} to {profile.name}", err=True)
