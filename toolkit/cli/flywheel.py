"""``bisup retrain``: the flywheel, from what the bridge collected to a new deployment."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bisup.cli.common import (
    RISK_HELP,
    check_exists,
    check_model,
    check_npz,
    main,
    progress,
    quiet_tensorflow,
)


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="The deployed local model (.keras) to fine-tune.")
@click.option("--train", "train_path", required=True, type=click.Path(path_type=Path),
              help="Its labelled training set (.npz with x, y); also the int8 calibration set of the exports.")
@click.option("--collected", "collected_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="The folder `bisup bridge --collect` filled with relayed inputs and the remote's answers.")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Labelled validation set (.npz) for calibrating both models: inputs like the deployment's now.")
@click.option("--remote", required=True, help="The remote model (path or URL), as for `bisup calibrate`.")
@click.option("--test", "test_path", type=click.Path(path_type=Path),
              help="Held-out labelled set (.npz) on which before and after are compared.")
@click.option("--board", default="nrf52840", show_default=True, help="Board to export for.")
@click.option("--max-remote-fraction", type=float, help="Calibrate both to this remote-call budget.")
@click.option("--target-accuracy", type=float, help="Calibrate both to the fewest calls reaching this accuracy.")
@click.option("--max-local-error", type=float,
              help=RISK_HELP.format(procedure="the testing procedure is picked by the sample count, as "
                                              "`bisup calibrate` does by default"))
@click.option("--delta", type=float, default=None, help="As for `bisup calibrate`.")
@click.option("--max-reject", type=float, default=0.005, show_default=True, help="As for `bisup calibrate`.")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1), help="Fine-tuning epochs.")
@click.option("--learning-rate", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--distill", is_flag=True,
              help="Train on the remote's probabilities (soft targets) instead of its labels.")
@click.option("--include-rejected", is_flag=True,
              help="Also train on answers the remote supervisor rejected (by default they are left out).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for retrained.keras, before/ and after/ (exports, thresholds) and retrained.bisup.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the table.")
def retrain(model_path: Path, train_path: Path, collected_dir: Path, data_path: Path, remote: str,
            test_path: Path | None, board: str, max_remote_fraction: float | None, target_accuracy: float | None,
            max_local_error: float | None, delta: float | None, max_reject: float, epochs: int, learning_rate: float,
            distill: bool, include_rejected: bool, seed: int, out_dir: Path, as_json: bool) -> None:
    """Fine-tune the local model on what the bridge collected, and compare before and after.

    \b
    The relayed inputs the remote supervisor accepted, with the remote's labels (or, with
    --distill, its probabilities) as targets, join the training set; the model trains --epochs more.
    Then the deployed model and the retrained one are each exported for --board, calibrated on
    --data in the same mode, and the new one is bundled (retrained.bisup, for `bisup flash`).
    With --test, both systems run on it as deployed, and the table shows accuracy and remote calls.

    \b
    bisup bridge --serial pty --bundle B --remote R --collect relayed/
    bisup retrain --model local.keras --train train.npz --collected relayed/ --data val.npz \\
                  --test test.npz --remote R --target-accuracy 0.9 --out retrained/
    """
    from bisup.calibration.single import Mode, ModeError
    from bisup.firmware_bridge.remotes import check_remote

    try:
        mode = Mode.from_options(max_remote_fraction, target_accuracy, max_local_error, delta, "auto")
    except ModeError as exc:
        raise click.UsageError(str(exc)) from None
    check_model(model_path)
    check_npz(train_path, data_path, test_path)
    check_exists(collected_dir, "collect folder", f"run `bisup bridge --collect {collected_dir}` first")
    check_remote(remote)
    quiet_tensorflow()
    from bisup.calibration.thresholds import RemoteRule
    from bisup.cli.tables import retrain_table
    from bisup.flywheel import retrain as flywheel

    plan = flywheel.Plan(model=model_path, train=train_path, collected=collected_dir, data=data_path, remote=remote,
                         board=board, out=out_dir, mode=mode, test=test_path, rule=RemoteRule(max_reject=max_reject),
                         epochs=epochs, learning_rate=learning_rate, distill=distill,
                         include_rejected=include_rejected, seed=seed)
    result = flywheel.retrain(plan, progress)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else retrain_table(result.to_json()))
