"""``bisup boards``, ``export``, ``exits``, ``bundle`` and ``keygen``: from a Keras model to a signed bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bisup.cli.common import (
    check_model,
    check_npz,
    main,
    progress,
    quiet_tensorflow,
    trusted,
    warn_caveats,
)
from bisup.converters.scores import KINDS
from bisup.export.fit import ENGINES

if TYPE_CHECKING:
    from bisup.converters.artefacts import BoardProfile


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
              help=f"{', '.join(KINDS)}, or your own Keras layer as module:Class or file.py:Class.")
@click.option("--eval", "eval_path", type=click.Path(path_type=Path),
              help="Labelled .npz for the accuracy figures (default: the calibration set).")
@click.option("--temperature", type=float, default=None,
              help="Softmax temperature on the supervisor path (default: chosen so int8 confidences do not saturate).")
@click.option("--symbol", default="g_model_data", show_default=True, help="C symbol of the model array.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout instead of the table.")
@click.option("--layers/--no-layers", default=True, show_default=True,
              help="Print the C engine's per-layer table (op, MACs, parameter bytes, output bytes, arena place).")
@click.option("--engine", "engine_choice", type=click.Choice(ENGINES),
              help="The engine the board will run, which the fit verdict and the table's flash and arena rows use: "
                   "c = model_infer.c (static arena planned from tensor lifetimes, code + weights in flash), "
                   "tflm = the TFLM interpreter with model_data.cc (measured arena + margin, the flatbuffer). "
                   "Default: c wherever the C engine can run the model, else tflm. Both are written either way.")
def export(model: Path, calib: Path, board: str, out_dir: Path, supervisor: str, eval_path: Path | None,
           temperature: float | None, symbol: str, as_json: bool, layers: bool, engine_choice: str | None) -> None:
    """Export MODEL (.keras or SavedModel dir) with an in-graph supervisor for a board.

    Writes a full-int8 model.tflite with two named outputs (scores, confidence), TFLite Micro C
    arrays with a generated op resolver, and report.json. The int8 figures come from the
    tflite-micro interpreter, the oracle for what the board computes. Exits non-zero, after
    writing everything, when the model does not fit the board with the engine that will run it
    (--engine), naming the layer where memory peaks.

    Also writes the C engine (model_infer.c/.h). The table gives total MACs, the C engine's arena
    and flash (code + weights) next to TFLM's, a latency ESTIMATE at the board's clock (MACs x
    instructions per MAC measured on an emulated core of the same architecture; none for other
    architectures), and, unless --no-layers, one row per C engine layer with its place in the
    arena (offset..end). --json has the same figures under "engine".
    """
    from bisup.boards import load_board

    profile = load_board(board)
    check_model(model)
    check_npz(calib, eval_path)
    from bisup.converters.engine import compile_kernels_ahead

    compile_kernels_ahead(profile.arch)  # gcc on the core TensorFlow's import leaves idle
    progress("loading TensorFlow")
    quiet_tensorflow()
    from bisup.cli.tables import export_table
    from bisup.export import exits as staged
    from bisup.export import single as exporter

    if staged.is_multi_exit(model):
        if engine_choice == "tflm":
            raise click.BadParameter("a multi-exit model's stages are judged by the C engine's shared arena "
                                     "(stages.json lists TFLM's arena per stage); leave --engine out",
                                     param_hint="'--engine'")
        _export_stages(model, calib, profile, out_dir, supervisor, eval_path, as_json)
        return

    result = exporter.export(
        model, calib, profile, out_dir, supervisor, eval_path, symbol, exporter.stderr_progress, temperature,
        engine_choice,
    )
    if result.engine and not result.engine["generated"]:
        click.echo(f"Warning: no model_infer.c (the C engine): {result.engine['reason']}", err=True)
    warn_caveats(profile.name, result)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else export_table(result, layers))
    if not result.fits:
        raise exporter.DoesNotFit(f"model does not fit {profile.name}: {'; '.join(result.fit_problems)}")


def _export_stages(model: Path, calib: Path, profile: BoardProfile, out_dir: Path, supervisor: str,
                   eval_path: Path | None, as_json: bool) -> None:
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
    check_model(model)
    check_npz(train_path)
    quiet_tensorflow()
    from bisup.export import exits as multi_exit

    layers = [name.strip() for name in at.split(",") if name.strip()]
    accuracy = multi_exit.build(model, layers, train_path, out_dir, epochs, joint, progress)
    if as_json:
        click.echo(json.dumps({"train_accuracy": accuracy, "out_dir": str(out_dir)}, indent=2))
    else:
        for name, value in accuracy.items():
            click.echo(f"{name:8s} train accuracy {100 * value:.2f} %")
        model_out = out_dir / "exits.keras"
        click.echo(f"wrote {model_out} and the remote tails; next: bisup export {model_out} --calib ... --board ...")


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
@trusted
def bundle_command(build_dir: Path | None, out: Path | None, labels: Path | None, verify_path: Path | None,
                   sign_key: Path | None, as_json: bool) -> None:
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
