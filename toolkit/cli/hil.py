"""``bisup hil``: hardware in the loop, on a board's port or in QEMU."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bisup.cli.common import (
    EmulatedBoards,
    check_exists,
    check_npz,
    main,
    progress,
    quiet_tensorflow,
    trusted,
)
from bisup.converters.errors import BisupError

if TYPE_CHECKING:
    from bisup.hil.runner import HilReport


@main.command()
@click.option("--port", "port_url", help="The board's port as a pyserial URL.")
@click.option("--emulate", type=EmulatedBoards(),
              help="Run the firmware in QEMU instead of a board: a board profile with an [emulation] table "
                   "(see README, \"Adding a board\").")
@click.option("--bundle", "bundle_path", required=True, type=click.Path(path_type=Path),
              help="The .bisup bundle (or build folder) the board runs; or a multi-exit export (its folder or bundle).")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path), help="Labelled .npz (x, y).")
@click.option("--remote", required=True,
              help="Remote model for the bridge side (multi-exit: the folder with the tails from `bisup exits`).")
@click.option("--policy", "policy_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Multi-exit: the exit policy [default: policy.json in the --bundle folder].")
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False), help="Write JSON here.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path, dir_okay=False), help="Write JUnit XML here.")
@click.option("--timeout", type=float,
              help="Seconds the board may stay silent before HELLO and while an input is in flight [default: 10; "
                   "with --emulate, derived from the model's MACs and input size, in the emulated board's own time "
                   "(QEMU's instruction count), so a busy machine needs no larger value].")
@click.option("--cycles", "estimate_cycles", is_flag=True,
              help="With --emulate: also trace the first input's inference and estimate the core's cycles per layer "
                   "from the executed instruction mix and the core's published timings (slow).")
@click.option("--link", "link_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Carry the bridge's traffic over a link emulated from this schedule (see `bisup link --help`), "
                   "in host time; the harness's own FEED/REPORT frames pass untouched.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@trusted
def hil(port_url: str | None, emulate: str | None, bundle_path: Path, data_path: Path, remote: str,
        policy_path: Path | None, report_path: Path | None, junit_path: Path | None, timeout: float | None,
        estimate_cycles: bool, link_path: Path | None, as_json: bool) -> None:
    """Hardware-in-the-loop: run a labelled set through a board (or QEMU) and the bridge.

    The host feeds each input; the board infers, decides with its int8 threshold, asks the bridge when
    unsure, and reports. The report gives local-only / remote-only / system accuracy, remote calls,
    rejections, cost saved, device latency p50/p95, agreement with the host TFLM oracle, and agreement
    with the offline decisions. With --emulate, QEMU runs the firmware with the model as generated C
    and counts the instructions one inference takes.

    Given a multi-exit export, the board runs the stages and the exit policy, relaying INFER or SPLIT to
    the tails; the report gives the exit histogram, instructions per stage and agreement, input by
    input, with the policy applied offline. Exits 1 when a check fails.

    With --link SCHEDULE, the board's relays cross an emulated link (bandwidth, delay, loss, outages
    over host time; the emulated board waits in its own instruction-counted time, so on a loaded
    host a slow phase looks shorter to it): losses make it resend, outages make it answer locally.
    """
    if (port_url is None) == (emulate is None):
        raise click.UsageError("give exactly one of --port and --emulate")
    if estimate_cycles and emulate is None:
        raise click.UsageError("--cycles needs --emulate (it traces the emulated core)")
    try:
        result = _hil_run(port_url, emulate, bundle_path, data_path, remote, policy_path, timeout, estimate_cycles,
                          link_path)
    except BisupError as exc:
        if junit_path:  # CI reads the JUnit file: a run that never got to its checks must show up there too
            with contextlib.suppress(OSError):
                junit_path.write_text(_junit_error(str(exc).splitlines()[0]))
        raise
    from bisup.cli.tables import hil_table

    if report_path:
        report_path.write_text(json.dumps(result.data, indent=2) + "\n")
    if junit_path:
        junit_path.write_text(result.junit())
    click.echo(json.dumps(result.data, indent=2) if as_json else hil_table(result))
    if not result.passed:
        raise click.ClickException("HIL checks failed; see the report")


def _hil_run(port_url: str | None, emulate: str | None, bundle_path: Path, data_path: Path, remote: str,
             policy_path: Path | None, timeout: float | None, estimate_cycles: bool,
             link_path: Path | None) -> HilReport:
    """Check the inputs (the link schedule first: the cheapest), open the deployment once and run the set."""
    from bisup.deployment import open_deployment
    from bisup.firmware_bridge.link_schedule import LinkSchedule

    link = LinkSchedule.read(link_path) if link_path else None
    check_exists(bundle_path, "bundle", "build one with `bisup bundle`, or give the folder `bisup export` wrote")
    check_exists(policy_path, "exit policy", "`bisup calibrate` on the multi-exit export writes policy.json")
    check_npz(data_path)
    deployment = open_deployment(bundle_path)
    deployment.check_remote(remote)  # before the bundle is read: the cheaper mistake is named first
    x, y = deployment.load_data(data_path, labels_for="a HIL run")
    quiet_tensorflow()
    return deployment.run_hil(x, y, remote, emulate, port_url, timeout, progress, policy_path, estimate_cycles, link)


def _junit_error(message: str) -> str:
    """JUnit XML for a run that failed before its checks: one test case with the error, so CI shows it."""
    from xml.sax.saxutils import escape, quoteattr

    return ('<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="bisup-hil" tests="1" failures="0" errors="1">\n'
            f'  <testcase classname="bisup.hil" name="hil_run"><error message={quoteattr(message)}>{escape(message)}'
            "</error></testcase>\n</testsuite>\n")
