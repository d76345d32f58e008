"""The ``bisup`` command line (click). Heavy imports (TensorFlow) happen inside commands.

Errors a user can fix arrive as one line and a non-zero exit; anything else is reported as an
internal error without a traceback unless ``BISUP_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path

import click

from bisup.converters.errors import BisupError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXIT_INTERNAL = 70


class BisupGroup(click.Group):
    """Turns the project's error types into one-line messages."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BisupError as exc:  # every error a user can fix, from any package
            raise click.ClickException(str(exc).splitlines()[0]) from None  # details (a log tail) stay in logs
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("bisup: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if os.environ.get("BISUP_DEBUG"):
                raise
            click.echo(
                f"Error: internal error: {type(exc).__name__}: {exc}. Re-run with BISUP_DEBUG=1 for the traceback "
                "and report it.",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)


def _trusted(command):
    """Add ``--trust PUBKEY``: within the command, only bundles signed by one of these keys are read."""

    @click.option("--trust", "trust", multiple=True, envvar="BISUP_TRUST",
                  type=click.Path(path_type=Path, dir_okay=False),
                  help="Ed25519 public key (NAME.pub of `bisup keygen`); repeat for several. Unsigned bundles, "
                       "build folders and bundles signed by another key are refused. Also $BISUP_TRUST.")
    @functools.wraps(command)
    def wrapper(*args, trust: tuple[Path, ...] = (), **kwargs):
        if not trust:
            return command(*args, **kwargs)
        from bisup.firmware_bridge.bundle import load_public_key, trusting

        with trusting([load_public_key(path) for path in trust]):
            return command(*args, **kwargs)

    return wrapper


def _quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter captured, before any command uses it."""
    from bisup.converters.quiet import capture_fd

    with capture_fd(2):
        import keras  # noqa: F401
        import tensorflow  # noqa: F401


def _check_npz(*paths: Path | None) -> None:
    """Data files are checked (exists, an .npz with x) before TensorFlow is imported and models load, which
    takes 15-30 s: a typo must not cost that."""
    from bisup.datasets import check_npz

    for path in paths:
        if path is not None:
            check_npz(path)


def _check_model(path: Path) -> None:
    """A Keras model given on the command line exists and has a model's extension (before any import)."""
    from bisup.converters.errors import ConversionError

    if not path.exists():
        raise ConversionError(f"model {path} does not exist")
    if path.is_file() and path.suffix not in (".keras", ".h5"):
        raise ConversionError(f"model {path} must be a .keras file or a SavedModel directory")


class MissingInput(BisupError, ValueError):
    """A path given on the command line that does not exist."""


def _check_exists(path: Path | None, what: str, fix: str) -> None:
    """Any other input path: one line naming it and where it comes from."""
    if path is not None and not path.exists():
        raise MissingInput(f"{what} {path} does not exist; {fix}")


@click.group(cls=BisupGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bisup")
def main() -> None:
    """bisup: a small int8 model on a microcontroller that asks a big remote model only when unsure.

    \b
    Typical flow:
      bisup digits build/                        # example model + data (scikit-learn digits)
      bisup boards                               # board profiles and their budgets
      bisup export build/digits.keras --calib build/calib.npz --board esp32s3 --out build/
      bisup calibrate --local build/model.tflite --remote remote.keras --data build/val.npz \\
          --max-remote-fraction 0.3 --out build/
      bisup demo                                 # all of it, end to end, on digits
      bisup demo --exits                         # early exits, split computing, a learned exit policy
    """


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def boards(as_json: bool) -> None:
    """List board profiles: architecture, clock, flash/RAM and what is left for the model.

    Profiles live in the package's boards/ folder as TOML; --board also takes a path to your own
    profile file (see README, "Adding a board").
    """
    from bisup.boards import all_boards
    from bisup.cli.tables import boards_table

    profiles = all_boards()
    if as_json:
        click.echo(json.dumps([b.to_json() for b in profiles], indent=2))
    else:
        click.echo(boards_table(profiles))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", required=True, type=click.Path(path_type=Path),
              help="calib.npz: x (float32, input shape without batch), optional y (int labels). >= 100 samples.")
@click.option("--board", required=True, help="Board profile name (see `bisup boards`) or a profile .toml path.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Output folder for model.tflite, model_data.h/.cc and report.json.")
@click.option("--supervisor", default="max-softmax", show_default=True,
              help="max-softmax, margin, entropy, deepgini, or your own Keras layer as module:Class or file.py:Class.")
@click.option("--eval", "eval_path", type=click.Path(path_type=Path),
              help="Labelled .npz for the accuracy figures (default: the calibration set).")
@click.option("--temperature", type=float, default=None,
              help="Softmax temperature on the supervisor path (default: chosen so int8 confidences do not saturate).")
@click.option("--symbol", default="g_model_data", show_default=True, help="C symbol of the model array.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout instead of the table.")
@click.option("--layers/--no-layers", default=True, show_default=True,
              help="Print the C engine's per-layer table (op, MACs, parameter bytes, output bytes, arena place).")
def export(model: Path, calib: Path, board: str, out_dir: Path, supervisor: str, eval_path: Path | None,
           temperature: float | None, symbol: str, as_json: bool, layers: bool) -> None:
    """Export MODEL (.keras or SavedModel dir) with an in-graph supervisor for a board.

    Writes a full-int8 model.tflite with two named outputs (scores, confidence), TFLite Micro C
    arrays with a generated op resolver, and report.json. The int8 figures come from the
    tflite-micro interpreter, the oracle for what the board computes. Exits non-zero, after
    writing everything, when the model does not fit the board.

    Also writes the C engine (model_infer.c/.h). The table gives total MACs, the C engine's arena
    and flash (code + weights) next to TFLM's, a latency ESTIMATE at the board's clock (MACs x
    instructions per MAC measured on an emulated core of the same architecture; none for other
    architectures), and, unless --no-layers, one row per C engine layer with its place in the
    arena (offset..end). --json has the same figures under "engine".
    """
    from bisup.boards import load_board

    profile = load_board(board)
    _check_model(model)
    _check_npz(calib, eval_path)
    _progress("loading TensorFlow")
    _quiet_tensorflow()
    from bisup.cli.tables import export_table
    from bisup.export import exits as staged
    from bisup.export import single as exporter

    if staged.is_multi_exit(model):
        _export_stages(model, calib, profile, out_dir, supervisor, eval_path, as_json)
        return

    result = exporter.export(
        model, calib, profile, out_dir, supervisor, eval_path, symbol, exporter.stderr_progress, temperature
    )
    if result.engine and not result.engine["generated"]:
        click.echo(f"Warning: no model_infer.c (the C engine): {result.engine['reason']}", err=True)
    _warn_caveats(profile.name, result)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else export_table(result, layers))
    if not result.fits:
        raise exporter.DoesNotFit(f"model does not fit {profile.name}: {'; '.join(result.fit_problems)}")


def _export_stages(model, calib, profile, out_dir, supervisor, eval_path, as_json) -> None:
    """A multi-exit model (from `bisup exits`): one stage per exit, the stage table, and the fit verdict."""
    from bisup.cli.tables import stages_table
    from bisup.converters.artefacts import dumps
    from bisup.export import exits as staged
    from bisup.export import single as exporter

    table = staged.export(model, calib, profile, out_dir, supervisor, eval_path, exporter.stderr_progress)
    click.echo(dumps(table) if as_json else stages_table(table))
    if not table.fits:
        raise exporter.DoesNotFit(f"the stages do not fit {profile.name}: {'; '.join(table.fit_problems)}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--at", "at", required=True,
              help="Comma-separated layer names to put an exit after (see the model's summary), e.g. conv2d,pool.")
@click.option("--train", "train_path", required=True, type=click.Path(path_type=Path),
              help="Labelled .npz (x, y) to train the exit heads on.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for exits.keras and the remote tails tail0.keras ... tailN.keras.")
@click.option("--epochs", default=30, show_default=True, help="Training epochs.")
@click.option("--joint", is_flag=True,
              help="Fine-tune the backbone too, with EENet's exit-weighted loss and distillation from the final exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the exits' training accuracies as JSON.")
def exits(model: Path, at: str, train_path: Path, out_dir: Path, epochs: int, joint: bool, as_json: bool) -> None:
    """Add early exits to MODEL (SPINN / EENet): one small head (pooling + dense) after each --at layer.

    The backbone stays frozen unless --joint. Writes exits.keras (export it with `bisup export` to get
    one int8 stage per exit) and the remote tails the bridge serves for split computing: tail0.keras
    (the whole network, for a relayed raw input) and tailS.keras (the rest after cut S). A layer that a
    skip connection jumps over cannot be a cut; the error names it.
    """
    _check_model(model)
    _check_npz(train_path)
    _quiet_tensorflow()
    from bisup.calibration import exits_run as multi_exit

    layers = [name.strip() for name in at.split(",") if name.strip()]
    accuracy = multi_exit.build(model, layers, train_path, out_dir, epochs, joint, _progress)
    if as_json:
        click.echo(json.dumps({"train_accuracy": accuracy, "out_dir": str(out_dir)}, indent=2))
    else:
        for name, value in accuracy.items():
            click.echo(f"{name:8s} train accuracy {100 * value:.2f} %")
        model_out = out_dir / "exits.keras"
        click.echo(f"wrote {model_out} and the remote tails; next: bisup export {model_out} --calib ... --board ...")


def _warn_caveats(board: str, report) -> None:
    """A board's known kernel problems that this model hits, one line each (export and demo alike)."""
    for caveat in report.caveats:
        if caveat["severity"] == "warning":
            message = f"{caveat['message']}: {caveat['detail']}. Fix: {caveat['fix']}."
            click.echo(f"Warning: {board}: {message}", err=True)


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--epochs", default=40, show_default=True, help="Training epochs for the local CNN.")
@click.option("--seed", default=0, show_default=True, help="Seed for splits and training.")
@click.option("--remote-epochs", default=40, show_default=True,
              help="Training epochs for the larger remote CNN (remote.keras); 0 skips it.")
def digits(out_dir: Path, epochs: int, seed: int, remote_epochs: int) -> None:
    """Train the example CNNs on scikit-learn's digits: digits.keras (the local model, for export),
    remote.keras (the big remote model, for calibrate, bridge and hil), and calib/val/test/holdout .npz."""
    _quiet_tensorflow()
    from bisup.examples.digits import write_example

    paths = write_example(out_dir, epochs=epochs, seed=seed, progress=lambda m: click.echo(f"bisup: {m}", err=True),
                          remote_epochs=remote_epochs or None)
    for name, path in paths.items():
        click.echo(f"{name}: {path}")


RISK_HELP = (
    "Risk guarantee: the most local answers whose error rate is at most this, certified with "
    "probability 1-DELTA over the draw of --data (exact binomial tests; {procedure}). "
    "Assumes validation and deployment inputs are exchangeable, e.g. i.i.d. from one distribution."
)


@main.command("calibrate")
@click.option("--local", "local_path", required=True, type=click.Path(path_type=Path),
              help="The exported int8 model.tflite (run in TFLM, as on the board); or a multi-exit export's folder "
                   "(with stages.json) to choose an exit policy.")
@click.option("--remote", required=True, help="Remote model: a .keras file, a SavedModel directory or a float .tflite; "
                                               "for a multi-exit export, the folder `bisup exits` wrote the tails to.")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Labelled validation .npz (x, y), not used for training or calibration of the int8 model.")
@click.option("--max-remote-fraction", type=float,
              help="Budget: the most accurate point with at most this fraction of remote calls.")
@click.option("--target-accuracy", type=float, help="Fewest remote calls that reach this system accuracy.")
@click.option("--max-local-error", type=float, help=RISK_HELP.format(procedure="see --risk-procedure"))
@click.option("--delta", type=float, default=None,
              help="Risk mode: allowed failure probability [default: 0.1]. Budget mode: given, the deployed remote "
                   "fraction exceeds --max-remote-fraction with probability at most this (an upper confidence "
                   "bound on the relay rate); without it the budget holds on the validation set only.")
@click.option("--risk-procedure", default="auto", show_default=True,
              type=click.Choice(["auto", "split-fixed-sequence", "fixed-sequence", "sgr"]),
              help="Risk mode: how thresholds are tested. split-fixed-sequence spends 20% of --data on where to "
                   "start testing and certifies the most local answers in our simulations (bench/risk_modes.py) "
                   "from 2,000 samples on; below, fixed-sequence (all of --data, from the strictest threshold) "
                   "does better; auto picks by the sample count. sgr pays a union bound.")
@click.option("--max-reject", type=float, default=0.005, show_default=True,
              help="Remote supervisor: reject the least confident remote answers, at most this fraction of all "
                   "inputs. A rejected input falls back to the device's own label, so rejecting trades system "
                   "accuracy for accuracy on accepted answers.")
@click.option("--remote-target-accuracy", type=float,
              help="Remote supervisor instead: lowest threshold whose accepted remote answers reach this accuracy.")
@click.option("--remote-supervisor", default="max-softmax", show_default=True,
              type=click.Choice(["max-softmax", "margin", "entropy", "deepgini"]))
@click.option("--price-per-call", type=float, default=1.0, show_default=True, help="Cost of one remote call.")
@click.option("--latency-ms", type=float, default=0.0, show_default=True, help="Added latency of one remote call.")
@click.option("--max-device-fraction", type=float,
              help="Multi-exit: average device cost budget, as a fraction of the whole network's MACs.")
@click.option("--bandwidth-kbps", type=float, default=1000.0, show_default=True,
              help="Multi-exit: link bandwidth, to choose between relaying the raw input and an activation.")
@click.option("--cloud-gmacs", type=float, default=1.0, show_default=True,
              help="Multi-exit: the cloud's speed (GMAC/s) at finishing the network, the other side of that choice.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for thresholds.json and tradeoff.png (multi-exit: policy.json).")
@click.option("--json", "as_json", is_flag=True, help="Print thresholds.json instead of the table.")
def calibrate_command(local_path, remote, data_path, max_remote_fraction, target_accuracy, max_local_error, delta,
                      risk_procedure, max_reject, remote_target_accuracy, remote_supervisor, max_device_fraction,
                      bandwidth_kbps, cloud_gmacs, out_dir, price_per_call, latency_ms, as_json) -> None:
    """Choose the local (int8) and remote supervisor thresholds on a validation set.

    Writes thresholds.json (the local threshold in the int8 units the firmware compares, the remote
    threshold, and what they achieve) and tradeoff.png (accuracy and remote calls against the threshold).
    Relayed answers the remote supervisor rejects fall back to the local label and count as rejected.

    Given a multi-exit export (--local DIR with stages.json), it chooses the exit policy instead: the
    per-exit-threshold baseline and EENet's learned scorers, each the most accurate within
    --max-device-fraction and --max-remote-fraction, written to policy-thresholds.json and policy.json.
    """
    from bisup.calibration.single import ModeError
    from bisup.deployment import CalibrationError, CalibrationRequest, open_deployment

    _check_exists(local_path, "local model", "give the model.tflite that `bisup export --out DIR` writes")
    _check_npz(data_path)
    request = CalibrationRequest(remote, data_path, out_dir, remote_supervisor, max_reject, max_remote_fraction,
                                 target_accuracy, max_local_error, delta, risk_procedure, remote_target_accuracy,
                                 price_per_call, latency_ms, max_device_fraction, bandwidth_kbps, cloud_gmacs)
    deployment = open_deployment(local_path)
    try:
        deployment.check_calibration(request)
    except (CalibrationError, ModeError) as exc:  # options that do not fit: a usage error, as click's own
        raise click.UsageError(str(exc)) from None
    _quiet_tensorflow()
    done = deployment.calibrate(request, _progress)
    click.echo(json.dumps(done.json, indent=2) if as_json else done.table)
    _progress("wrote " + " and ".join(str(path) for path in done.wrote))


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
def retrain(model_path, train_path, collected_dir, data_path, remote, test_path, board, max_remote_fraction,
            target_accuracy, max_local_error, delta, max_reject, epochs, learning_rate, distill, include_rejected,
            seed, out_dir, as_json) -> None:
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
    _check_model(model_path)
    _check_npz(train_path, data_path, test_path)
    _check_exists(collected_dir, "collect folder", f"run `bisup bridge --collect {collected_dir}` first")
    check_remote(remote)
    _quiet_tensorflow()
    from bisup.calibration.thresholds import RemoteRule
    from bisup.cli.tables import retrain_table
    from bisup.flywheel import retrain as flywheel

    plan = flywheel.Plan(model_path, train_path, collected_dir, data_path, remote, board, out_dir, mode, test_path,
                         RemoteRule(max_reject=max_reject), epochs, learning_rate, distill, include_rejected, seed)
    result = flywheel.retrain(plan, _progress)
    click.echo(json.dumps(result, indent=2) if as_json else retrain_table(result))


def _progress(message: str) -> None:
    click.echo(f"bisup: {message}", err=True)


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the exported model, thresholds and plot go (default: the cache folder's demo/).")
@click.option("--board", default="nrf52840", show_default=True, help="Board to export the local model for.")
@click.option("--max-remote-fraction", default=0.3, show_default=True, help="Remote-call budget for calibration.")
@click.option("--max-reject", default=0.005, show_default=True, help="Most inputs the remote supervisor may reject.")
@click.option("--seed", default=0, show_default=True, help="Seed for splits and training.")
@click.option("--retrain", is_flag=True, help="Train the models again instead of using the cache.")
@click.option("--exits", "with_exits", is_flag=True,
              help="SPINN/EENet instead: early exits on the remote CNN, split computing, learned exit policy.")
@click.option("--max-device-fraction", default=0.6, show_default=True,
              help="--exits: average device cost budget, as a fraction of the whole network's MACs.")
@click.option("--flywheel", "with_flywheel", is_flag=True,
              help="The data flywheel instead: a drifted stream through the bridge with the drift alarm and "
                   "--collect, then `bisup retrain` on what was collected, before and after on held-out data.")
@click.option("--target-accuracy", default=0.92, show_default=True,
              help="--flywheel: both models are calibrated to the fewest remote calls reaching this accuracy.")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [...]} instead of the table.')
def demo(out_dir, board, max_remote_fraction, max_reject, seed, retrain, with_exits, max_device_fraction,
         with_flywheel, target_accuracy, as_json) -> None:
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
    """
    _quiet_tensorflow()
    if with_flywheel:
        _demo_flywheel(out_dir, board, max_remote_fraction, seed, target_accuracy, as_json)
        return
    if with_exits:
        _demo_exits(out_dir, board, max_device_fraction, max_remote_fraction, max_reject, seed, retrain, as_json)
        return
    from bisup.boards import load_board
    from bisup.cli.tables import remote_threshold_text, rows_table
    from bisup.converters.artefacts import ExportReport
    from bisup.examples import demo as demo_run

    profile = load_board(board)
    result = demo_run.run(out_dir, seed, board, max_remote_fraction, max_reject, retrain=retrain, progress=_progress)
    _warn_caveats(profile.name, ExportReport.read(Path(result["out_dir"]) / "report.json"))
    if as_json:
        click.echo(json.dumps({"rows": result["rows"]}, indent=2))
    else:
        click.echo(rows_table(result["rows"]))
        chosen = result["thresholds"]
        click.echo(f"\nlocal threshold int8 {chosen.local.threshold_int8}, remote threshold "
                   f"{remote_threshold_text(chosen)}; artefacts in {result['out_dir']}")


def _demo_flywheel(out_dir, board, max_remote_fraction, seed, target_accuracy, as_json) -> None:
    from bisup.cli.tables import retrain_table
    from bisup.examples import demo_flywheel

    result = demo_flywheel.run(out_dir, seed, board, max_remote_fraction, target_accuracy, _progress)
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


def _demo_exits(out_dir, board, max_device_fraction, max_remote_fraction, max_reject, seed, retrain, as_json):
    from bisup.cli.tables import exit_rows_table, stages_table
    from bisup.examples import demo_exits

    remote_budget = max_remote_fraction if click.get_current_context().get_parameter_source(
        "max_remote_fraction").name != "DEFAULT" else 0.4
    result = demo_exits.run(out_dir, seed, board, max_device_fraction, remote_budget, max_reject, retrain, _progress)
    if as_json:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2))
        return
    click.echo(stages_table(result["table"]))
    click.echo()
    click.echo(exit_rows_table(result["rows"]))
    click.echo(f"\ndevice budget {result['device_budget_macs']:,.0f} MACs ({max_device_fraction:.0%} of "
               f"{result['full_macs']:,}), remote budget {remote_budget:.0%}; artefacts in {result['out_dir']}")


def _mqtt_options(command):
    """Broker options shared by `bisup bridge` and `bisup device`."""
    for option in reversed([
        click.option("--mqtt", "mqtt_url", help="Broker URL: mqtt://host:1883 or mqtts://host:8883."),
        click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                     help="CA certificate that signed the broker's (implies TLS)."),
        click.option("--username", help="MQTT username (`bisup broker --secure` prints them)."),
        click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                     help="File holding the MQTT password (kept off the command line)."),
    ]):
        command = option(command)
    return command


def _broker(mqtt_url, tls_ca, username, password_file):
    from bisup.firmware_bridge.mqtt_link import Broker

    password = password_file.read_text().strip() if password_file else None
    return Broker.from_url(mqtt_url, username, password, tls_ca)


def _one_transport(serial_url, mqtt_url) -> None:
    if (serial_url is None) == (mqtt_url is None):
        raise click.UsageError("give exactly one of --serial and --mqtt")


@main.command()
@click.option("--serial", "serial_url",
              help="Port as a pyserial URL: /dev/ttyUSB0, socket://host:port, spy://..., a pty path; or `pty` "
                   "to make a pseudo-terminal and print the path a `bisup device --serial PATH` opens.")
@_mqtt_options
@click.option("--remote", required=True,
              help="Remote model: a path (.keras, SavedModel dir, .tflite) or a server URL. For a multi-exit bundle: "
                   "the folder `bisup exits` wrote (tail0.keras ...), or a URL with {split} in it (one per tail).")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path),
              help="A .bisup bundle, or a folder with model.tflite (bisup export) and thresholds.json; or a "
                   "multi-exit export's folder (stages.json, policy.json), served with its remote tails (SPLIT).")
@click.option("--baud", default=921600, show_default=True, help="Baud rate for real UARTs.")
@click.option("--json-log", type=click.Path(path_type=Path, dir_okay=False),
              help="Append one JSON line per relay: time, device, seq, labels, confidences, decision, latency.")
@click.option("--wait", is_flag=True, help="Serial: wait for the port to appear instead of failing at once.")
@click.option("--workers", default=1, show_default=True, help="MQTT: worker clients in this process.")
@click.option("--threads", default=16, show_default=True, help="MQTT: concurrent requests per worker.")
@click.option("--group", default="bisup", show_default=True, help="MQTT: shared-subscription group.")
@click.option("--name", "worker_name", default=None,
              help="MQTT: stable worker name, part of the client id [default: this host's name].")
@click.option("--session-expiry", default=5, show_default=True,
              help="MQTT: seconds the broker keeps a dead worker's session and its queued requests.")
@click.option("--max-batch", default=32, show_default=True, help="Remote: most requests in one batched call (1: none).")
@click.option("--max-delay-ms", default=2.0, show_default=True, help="Remote: longest wait to fill a batch.")
@click.option("--device-wait-ms", default=2000.0, show_default=True,
              help="How long devices wait for an answer in all, over every resend (`bisup device` and the "
                   "firmware templates: 500 ms x 4 attempts). The remote deadline is derived from it.")
@click.option("--deadline-ms", type=float, default=None,
              help="Remote: give up on a request after this long and answer `fallback` (the device keeps its own "
                   "label) [default: --device-wait-ms less a quarter, so the fallback arrives while the device "
                   "still waits].")
@click.option("--breaker-failures", default=5, show_default=True,
              help="Remote: consecutive failures that open the circuit breaker (0: no breaker).")
@click.option("--breaker-cooldown", default=10.0, show_default=True,
              help="Remote: seconds the breaker answers `fallback` at once before it tries the remote again.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port (0: any free one, printed): requests, outcomes, remote "
                   "calls, errors by code, latency histograms, device STATS, breaker state and the drift alarm.")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True,
              help="Address the metrics endpoint listens on (0.0.0.0 for a Prometheus on another machine).")
@click.option("--drift-window", default=500, show_default=True, type=click.IntRange(100),
              help="Drift alarm: device inferences over which the live remote fraction is compared with the "
                   "calibrated one (relayed disagreement: a fifth of it, at least 100 relays).")
@click.option("--collect", "collect_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Keep every relayed input with the remote's label and probabilities (and whether the remote "
                   "supervisor accepted it) in .npz shards here, once per input, for `bisup retrain`.")
@click.option("--collect-max-mb", default=1024.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Stop collecting (and say so) once the --collect folder holds this much.")
@_trusted
def bridge(serial_url, mqtt_url, tls_ca, username, password_file, remote, bundle_dir, baud, json_log, wait, workers,
           threads, group, worker_name, session_expiry, max_batch, max_delay_ms, device_wait_ms, deadline_ms,
           breaker_failures, breaker_cooldown, metrics_port, metrics_addr, drift_window, collect_dir,
           collect_max_mb) -> None:
    """Serve devices: relay unsure inputs to the remote model and supervise the answers.

    \b
    Serial (--serial): frames are COBS + CRC-16 (firmware_bridge/PROTOCOL.md); a port that goes
    away is reopened with backoff.
    MQTT (--mqtt): devices publish to bisup/v1/<id>/req and get answers on bisup/v1/<id>/resp.
    Workers share $share/<group>/bisup/v1/+/req, so more workers (here or on other machines, same
    --group, different --name) share the load. QoS 1 both ways; a request is acked only after its
    answer is published. A worker that dies strands its queued requests for --session-expiry
    seconds; devices whose retries outlast that lose nothing.
    Both: retried requests are answered from a cache without a second remote call; malformed ones
    get an ERROR reply. Concurrent requests are batched into one remote call; a request past its
    deadline, or any request while the circuit breaker is open, is answered `fallback` at once.
    Stop with Ctrl-C; the counters are printed on exit.
    Drift alarm: the live remote fraction (from the devices' STATS) and how often the remote
    disagrees with the device on relayed inputs are tested against their calibrated rates; leaving
    the band is logged (and exported with --metrics-port).

    \b
    --remote: remote.keras | savedmodel/ | remote.tflite
              oip+http://host:8080/v2/models/<name>       (Open Inference Protocol V2: MLServer,
                                                           KServe, Triton)
              tfserving+http://host:8501/v1/models/<name> (TF Serving REST)
    """
    _one_transport(serial_url, mqtt_url)
    from bisup.service import bridge as serve

    options = serve.RemoteOptions(max_batch, max_delay_ms, device_wait_ms, deadline_ms, breaker_failures,
                                  breaker_cooldown)
    monitoring = serve.Monitoring(metrics_port, metrics_addr, drift_window, collect_dir, collect_max_mb)
    handler, guarded = serve.make_handler(bundle_dir, remote, options, json_log, _progress, monitoring)
    try:
        if serial_url:
            serve.serve_serial(serial_url, handler, baud, wait, _progress)
        else:
            broker = _broker(mqtt_url, tls_ca, username, password_file)
            serve.serve_mqtt(broker, handler, workers, threads, group, worker_name, session_expiry, _progress)
    finally:
        guarded.close()
        handler.log.close()
    click.echo(json.dumps(dict(handler.counts), sort_keys=True), err=True)  # after serving; not on a failed start


@main.command()
@click.option("--serial", "serial_url", help="Port as a pyserial URL (see `bisup bridge`).")
@_mqtt_options
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path),
              help="A .bisup bundle, or a folder with model.tflite and thresholds.json; or a multi-exit export's "
                   "folder (stages.json, policy.json), which runs the stages and the exit policy.")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help=".npz with x (and y for the accuracy).")
@click.option("--device-id", default="virtual-0", show_default=True,
              help="The device's id; over MQTT also its topics bisup/v1/<id>/req|resp.")
@click.option("--timeout-ms", default=500, show_default=True, help="Wait per attempt before resending.")
@click.option("--retries", default=3, show_default=True, help="Resends (same sequence number) before falling back.")
@click.option("--hello-timeout", default=10.0, show_default=True, help="Seconds to wait for the bridge's HELLO.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_trusted
def device(serial_url, mqtt_url, tls_ca, username, password_file, bundle_dir, data_path, device_id, timeout_ms,
           retries, hello_timeout, as_json) -> None:
    """Be a device without a board: run the bundle's model in TFLM, decide with the int8 threshold,
    and relay unsure inputs to a `bisup bridge` over a serial link (--serial) or MQTT (--mqtt)."""
    _one_transport(serial_url, mqtt_url)
    _check_exists(bundle_dir, "bundle", "build one with `bisup bundle`, or give the folder `bisup export` wrote")
    _check_npz(data_path)
    from bisup.service import device as virtual

    broker = _broker(mqtt_url, tls_ca, username, password_file) if mqtt_url else None
    summary = virtual.run(bundle_dir, data_path, serial_url, broker, device_id, timeout_ms, retries, hello_timeout,
                          _progress)
    click.echo(json.dumps(summary) if as_json else virtual.table(summary))


@main.command("bundle")
@click.argument("build_dir", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Archive to write, e.g. dist/digits-1.0.bisup.")
@click.option("--labels", type=click.Path(path_type=Path, dir_okay=False), help="Class names, one per line.")
@click.option("--verify", "verify_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Check an archive against its manifest instead of building one.")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path, dir_okay=False),
              help="Sign the manifest with this Ed25519 private key (NAME.key of `bisup keygen`); readers given "
                   "--trust NAME.pub then accept only bundles signed with it.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@_trusted
def bundle_command(build_dir, out, labels, verify_path, sign_key, as_json) -> None:
    """Pack BUILD_DIR (model.tflite, thresholds.json, report.json) into a versioned .bisup archive.

    The manifest records the SHA-256 and size of every member and the toolkit version; --verify checks
    them, and every load (bisup bridge, bisup device) verifies again, so a tampered or truncated bundle is
    refused with the member that does not match.
    """
    from bisup.export import bundles

    if verify_path is not None:
        manifest = bundles.verify(verify_path)
        message = f"{verify_path}: OK, {len(manifest.members)} members match the manifest"
    elif build_dir is None or out is None:
        raise click.UsageError("give BUILD_DIR and --out to build, or --verify FILE to check")
    else:
        manifest = bundles.build(build_dir, out, labels, sign_key)
        message = f"wrote {out} (model sha256 {manifest.model_sha256[:16]}...{', signed' if sign_key else ''})"
    click.echo(json.dumps(manifest.to_json(), indent=2) if as_json else message)


class _EmulatedBoards(click.Choice):
    """The board profiles with an [emulation] table, read when the option is parsed or shown, not at import
    (so a profile in BISUP_BOARDS_PATH is offered as a shipped one is)."""

    def __init__(self) -> None:
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # click.Choice sets a tuple at init; this reads the profiles instead
        from bisup.boards import emulated_names

        return tuple(emulated_names())


@main.command()
@click.argument("name", type=click.Path(path_type=Path, dir_okay=False))
def keygen(name: Path) -> None:
    """Make an Ed25519 key pair for signed bundles: NAME.key (private, mode 0600) and NAME.pub.

    \b
      bisup keygen keys/release
      bisup bundle build/ --out dist/digits.bisup --sign keys/release.key
      bisup bridge ... --bundle dist/digits.bisup --trust keys/release.pub
    """
    from bisup.export import bundles

    private, public = bundles.keygen(name)
    click.echo(f"wrote {private} (private: keep it off devices and out of version control) and {public}")


@main.command()
@click.option("--port", "port_url", help="The board's port as a pyserial URL.")
@click.option("--emulate", type=_EmulatedBoards(),
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
@click.option("--timeout", default=10.0, show_default=True,
              help="Seconds to wait for HELLO and for each report; with --emulate, seconds of QEMU's own CPU time, "
                   "so a busy machine needs no larger value.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_trusted
def hil(port_url, emulate, bundle_path, data_path, remote, policy_path, report_path, junit_path, timeout,
        as_json) -> None:
    """Hardware-in-the-loop: run a labelled set through a board (or QEMU) and the bridge.

    The host feeds each input; the board infers, decides with its int8 threshold, asks the bridge when
    unsure, and reports. The report gives local-only / remote-only / system accuracy, remote calls,
    rejections, cost saved, device latency p50/p95, agreement with the host TFLM oracle, and agreement
    with the offline decisions. With --emulate, QEMU runs the firmware with the model as generated C
    and counts the instructions one inference takes.

    Given a multi-exit export, the board runs the stages and the exit policy, relaying INFER or SPLIT to
    the tails; the report gives the exit histogram, instructions per stage and agreement, input by
    input, with the policy applied offline. Exits 1 when a check fails.
    """
    if (port_url is None) == (emulate is None):
        raise click.UsageError("give exactly one of --port and --emulate")
    try:
        result = _hil_run(port_url, emulate, bundle_path, data_path, remote, policy_path, timeout)
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


def _hil_run(port_url, emulate, bundle_path, data_path, remote, policy_path, timeout):
    """Check the inputs, open the deployment once and run the set on the board."""
    from bisup.deployment import open_deployment

    _check_exists(bundle_path, "bundle", "build one with `bisup bundle`, or give the folder `bisup export` wrote")
    _check_exists(policy_path, "exit policy", "`bisup calibrate` on the multi-exit export writes policy.json")
    _check_npz(data_path)
    deployment = open_deployment(bundle_path)
    deployment.check_remote(remote)  # before the bundle is read: the cheaper mistake is named first
    x, y = deployment.load_data(data_path, labels_for="a HIL run")
    _quiet_tensorflow()
    return deployment.run_hil(x, y, remote, emulate, port_url, timeout, _progress, policy_path)


def _junit_error(message: str) -> str:
    """JUnit XML for a run that failed before its checks: one test case with the error, so CI shows it."""
    from xml.sax.saxutils import escape, quoteattr

    return ('<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="bisup-hil" tests="1" failures="0" errors="1">\n'
            f'  <testcase classname="bisup.hil" name="hil_run"><error message={quoteattr(message)}>{escape(message)}'
            "</error></testcase>\n</testsuite>\n")


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
@_trusted
def flash(bundle_path, board, port, probe, baud, dry_run, out_dir, as_json) -> None:
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
    click.echo(json.dumps(plan.describe(), indent=2) if as_json else flashing.table(plan, port or "PORT", out_dir))
    if not dry_run:
        flashing.run(plan, port, baud, probe, say=lambda line: click.echo(line, err=True))
        click.echo(f"flashed {loaded.path} to {profile.name}", err=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@main.command()
@click.option("--port", default=None, type=int, help="Port to listen on [default: 1883, or 8883 with --secure].")
@click.option("--secure", is_flag=True,
              help="TLS with a generated CA, a password per device and an ACL keeping devices apart.")
@click.option("--device", "devices", multiple=True, default=("d1", "d2"), show_default=True,
              help="Device id to create credentials for (repeat the option).")
@click.option("--dir", "workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="State folder: config, log, persistence, CA, server key and passwords [default: "
                   "$XDG_STATE_HOME/bisup/broker, else ~/.local/state/bisup/broker]. Created mode 0700; "
                   "secret files are 0600.")
@click.option("--bundle", default="build/digits.bisup", show_default=True,
              help="Bundle named in the printed bridge and device commands (the README's walk-through).")
@click.option("--remote", default="build/remote.keras", show_default=True,
              help="Remote model named in the printed bridge command.")
@click.option("--data", default="build/test.npz", show_default=True, help="Data named in the printed device commands.")
def broker(port, secure, devices, workdir, bundle, remote, data) -> None:
    """Start a local mosquitto with a generated config, for trying the MQTT bridge (Ctrl-C stops it).

    \b
    State (config, log, persistence, keys, passwords) goes to --dir, by default outside the working
    tree (mode 0700, secret files 0600); the first lines say where.
    Plain: anonymous, loopback only. --secure: TLS (CA and server certificate generated into --dir)
    and mosquitto's dynamic-security plugin: a password per device, client id bisup-device-<id>
    bound to it, and deny-by-default rules by which device <id> may only publish
    bisup/v1/%u/req and only read bisup/v1/%u/resp. The bridge user reads every request and
    writes every answer, under a shared-subscription group name that devices are not told
    (pass it to `bisup bridge --group`). Persistence is on, so QoS 1 sessions survive a restart.
    Both set TCP_NODELAY (a QoS 1 round trip on loopback: about 1.3 ms instead of 44 ms).
    It prints complete `bisup bridge` and `bisup device` commands (one per --device) to paste.
    """
    import signal

    from bisup.service.broker import default_state_dir, run_broker

    chosen = port or (8883 if secure else 1883)
    # Before mosquitto starts: `kill` must never orphan it. SIGINT too, explicitly: a shell starts a background
    # job with SIGINT ignored, and Python then installs no KeyboardInterrupt of its own.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    with run_broker(workdir or default_state_dir(), chosen, secure, devices) as running:
        for line in running.describe():
            _progress(line)
        bridge_command, *device_commands = running.commands(str(bundle), str(remote), str(data))
        _progress(f"bridge: {bridge_command}")
        for command in device_commands:
            _progress(f"device: {command}")
        try:
            running.process.wait()
        except KeyboardInterrupt:
            pass


