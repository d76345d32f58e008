"""``bisup digits`` and ``bisup demo``: the packaged example and the end-to-end demos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bisup.cli.common import (
    main,
    progress,
    quiet_tensorflow,
    warn_caveats,
)

if TYPE_CHECKING:
    from bisup.examples.demo_link import LinkRun


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--epochs", default=40, show_default=True, help="Training epochs for the local CNN.")
@click.option("--seed", default=0, show_default=True, help="Seed for splits and training.")
@click.option("--remote-epochs", default=40, show_default=True,
              help="Training epochs for the larger remote CNN (remote.keras); 0 skips it.")
def digits(out_dir: Path, epochs: int, seed: int, remote_epochs: int) -> None:
    """Train the example CNNs on scikit-learn's digits: digits.keras (the local model, for export),
    remote.keras (the big remote model, for calibrate, bridge and hil), and calib/val/test/holdout .npz."""
    quiet_tensorflow()
    from bisup.examples.digits import write_example

    paths = write_example(out_dir, epochs=epochs, seed=seed, progress=lambda m: click.echo(f"bisup: {m}", err=True),
                          remote_epochs=remote_epochs or None)
    for name, path in paths.items():
        click.echo(f"{name}: {path}")


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the exported model, thresholds and plot go (default: the cache folder's demo/).")
@click.option("--board", default="nrf52840", show_default=True, help="Board to export the local model for.")
@click.option("--max-remote-fraction", type=float, default=None,
              help="Remote-call budget for calibration [default: 0.3; with --exits 0.4, 0.2 on hard-digits].")
@click.option("--max-reject", default=0.005, show_default=True, help="Most inputs the remote supervisor may reject.")
@click.option("--seed", default=0, show_default=True, help="Seed for splits and training.")
@click.option("--retrain", is_flag=True, help="Train the models again instead of using the cache.")
@click.option("--exits", "with_exits", is_flag=True,
              help="SPINN/EENet instead: early exits on the remote CNN, split computing, learned exit policy.")
@click.option("--max-device-fraction", type=float, default=None,
              help="--exits: average device cost budget, as a fraction of the whole network's MACs "
                   "[default: 0.6; 0.4 on hard-digits].")
@click.option("--task", "task_name", type=click.Choice(["digits", "hard-digits"]), default="digits", show_default=True,
              help="--exits: digits, or hard-digits (redrawn digits, 5,385 validation and 5,400 test inputs, exits "
                   "far from saturated: where exit policies can be told apart).")
@click.option("--flywheel", "with_flywheel", is_flag=True,
              help="The data flywheel instead: a drifted stream through the bridge with the drift alarm and "
                   "--collect, then `bisup retrain` on what was collected, before and after on held-out data.")
@click.option("--target-accuracy", default=0.92, show_default=True,
              help="--flywheel: both models are calibrated to the fewest remote calls reaching this accuracy.")
@click.option("--link", "link_path", type=click.Path(path_type=Path, dir_okay=False),
              help="--exits: also send the test split over a serial link emulated from this schedule (one phase a "
                   "line: START BANDWIDTH RTT LOSS, 'START outage', 'START end'; see `bisup link --help`); prints "
                   "latency per phase and writes link.png and link.json.")
@click.option("--time-scale", default=10.0, show_default=True,
              help="--link: play the schedule this many times faster than real time.")
@click.option("--latency-slo-ms", type=float,
              help="--link: the latency objective (ms), drawn on link.png and counted per phase; the same policy with "
                   "a run-time schedule for it (as `bisup calibrate --latency-slo-ms`) also goes over the link "
                   "(link-adaptive.png, link-adaptive.json).")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [...]} instead of the table.')
def demo(out_dir: Path | None, board: str, max_remote_fraction: float | None, max_reject: float, seed: int,
         retrain: bool, with_exits: bool, max_device_fraction: float | None, task_name: str, with_flywheel: bool,
         target_accuracy: float, link_path: Path | None, time_scale: float, latency_slo_ms: float | None,
         as_json: bool) -> None:
    """Run BiSupervised end to end on scikit-learn's digits: no server, board or download needed.

    Trains (once, then cached in $BISUP_CACHE or ~/.cache/bisup) a small local CNN and a larger remote
    CNN, exports the local one, calibrates both supervisors on the validation split, and sends the test
    split through the device decision (int8, TFLM) and the relay (remote model + remote supervisor).

    With --exits: three early exits on the remote CNN, one int8 stage per exit for the board, exit
    policies calibrated for --max-device-fraction and --max-remote-fraction (default 0.4 here), and the
    test split through a multi-exit virtual device that relays raw inputs (INFER) or activations (SPLIT).

    With --flywheel: the deployed model meets rotated, noised digits; the drift alarm fires, the
    bridge collects the relayed inputs with the remote's answers, and `bisup retrain` fine-tunes on
    them and compares before and after on held-out shifted digits.

    With --exits --link SCHEDULE: the test split also goes, spread over the schedule (played --time-scale
    times faster), through the multi-exit device and a serial link emulated from it: per input the time,
    the link's phase, the device's action (an exit, a relay of the input or of a cut, or continuing
    locally after a failed relay), the bytes and the latency; per phase the latency p50/p95.
    """
    link = _link_run(link_path, with_exits, time_scale, latency_slo_ms)  # a bad schedule is named before training
    quiet_tensorflow()
    if with_flywheel:
        _demo_flywheel(out_dir, board, 0.3 if max_remote_fraction is None else max_remote_fraction, seed,
                       target_accuracy, as_json)
        return
    if with_exits:
        _demo_exits(out_dir, board, max_device_fraction, max_remote_fraction, max_reject, seed, retrain, task_name,
                    as_json, link)
        return
    from bisup.boards import load_board
    from bisup.cli.tables import remote_threshold_text, rows_table
    from bisup.converters.artefacts import ExportReport
    from bisup.examples import demo as demo_run

    profile = load_board(board)
    budget = 0.3 if max_remote_fraction is None else max_remote_fraction
    result = demo_run.run(out_dir, seed, board, budget, max_reject, retrain=retrain, progress=progress)
    warn_caveats(profile.name, ExportReport.read(result.out_dir / "report.json"))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(rows_table(result.rows))
        chosen = result.thresholds
        click.echo(f"\nlocal threshold int8 {chosen.local.threshold_int8}, remote threshold "
                   f"{remote_threshold_text(chosen)}; artefacts in {result.out_dir}")


def _demo_flywheel(out_dir: Path, board: str, max_remote_fraction: float, seed: int, target_accuracy: float,
                   as_json: bool) -> None:
    from bisup.cli.tables import retrain_table
    from bisup.examples import demo_flywheel

    result = demo_flywheel.run(out_dir, seed, board, max_remote_fraction, target_accuracy, progress)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for name, what in (("iid", "clean test"), ("stream", "drifted")):
        field = result[name]
        click.echo(f"{what} stream: {field['inputs']} inputs, {field['relayed']} relayed "
                   f"({field['relayed'] / field['inputs']:.1%}; calibrated {field['calibrated_remote_fraction']:.1%}),"
                   f" drift alarm {'FIRED' if field['drift_alarm'] else 'quiet'}, {field['collected']} collected")
    click.echo()
    click.echo(retrain_table(result["retrain"]))


def _link_run(path: Path | None, with_exits: bool, time_scale: float, objective_ms: float | None) -> LinkRun | None:
    """The --link schedule read (a bad line named) and its settings, or None without --link."""
    if path is None:
        if objective_ms is not None:
            raise click.UsageError("--latency-slo-ms needs --link (the objective is judged on the link's latencies)")
        return None
    if not with_exits:
        raise click.UsageError("--link needs --exits (the multi-exit device is the one that can choose its action)")
    from bisup.examples.demo_link import LinkRun

    return LinkRun.read(path, time_scale, objective_ms)


def _demo_exits(out_dir: Path, board: str, max_device_fraction: float | None, max_remote_fraction: float | None,
                max_reject: float, seed: int, retrain: bool, task_name: str, as_json: bool,
                link: LinkRun | None) -> None:
    from bisup.cli.tables import exit_margin_text, exit_rows_table, stages_table
    from bisup.examples import demo_exits

    result = demo_exits.run(out_dir, seed, board, max_device_fraction, max_remote_fraction, max_reject, retrain,
                            progress, task_name, link)
    if as_json:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2))
        return
    click.echo(stages_table(result["table"]))
    click.echo()
    click.echo(exit_rows_table(result["rows"]))
    click.echo("\n" + exit_margin_text(result))
    click.echo(f"device budget {result['device_budget_macs']:,.0f} MACs ({result['max_device_fraction']:.0%} of "
               f"{result['full_macs']:,}), remote budget {result['max_remote_fraction']:.0%}; artefacts in "
               f"{result['out_dir']}")
    if link is not None:
        from bisup.examples.demo_link import phase_table

        click.echo(f"\nover the link (schedule at {link.time_scale:g}x), latency in ms of link time:")
        for over in (result["link"], result["link"].get("adaptive")):
            if over is not None:
                click.echo(f"{over['policy']}:\n{phase_table(over)}")
                click.echo(f"plot: {over['plot']}; per input: {over['records']}")
