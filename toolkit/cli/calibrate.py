"""``bisup calibrate``: thresholds (single model) or an exit policy (multi-exit), by the deployment's kind."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bisup.cli.common import (
    RISK_HELP,
    check_exists,
    check_npz,
    main,
    progress,
    quiet_tensorflow,
)
from bisup.converters.scores import KINDS


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
@click.option("--max-local-error", type=float,
              help=RISK_HELP.format(procedure="see --risk-procedure") + " Multi-exit: the share of answers taken at "
                   "early exits that are wrong where the full network (the last exit) would be right, so early "
                   "answers are wrong at most this much more often than the full network's on the same inputs; one "
                   "confidence threshold shared by every exit; --max-remote-fraction, if given, is certified too "
                   "(both hold together with probability 1-2*DELTA).")
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
              type=click.Choice(KINDS))
@click.option("--price-per-call", type=float, default=1.0, show_default=True, help="Cost of one remote call.")
@click.option("--latency-ms", type=float, default=0.0, show_default=True, help="Added latency of one remote call.")
@click.option("--max-device-fraction", type=float,
              help="Multi-exit: average device cost budget, as a fraction of the whole network's MACs.")
@click.option("--bandwidth-kbps", type=float, default=1000.0, show_default=True,
              help="Multi-exit: link bandwidth, to choose between relaying the raw input and an activation.")
@click.option("--cloud-gmacs", type=float, default=1.0, show_default=True,
              help="Multi-exit: the cloud's speed (GMAC/s) at finishing the network, the other side of that choice.")
@click.option("--latency-slo-ms", type=float,
              help="Multi-exit: also a run-time schedule in policy.json: for each link condition (bandwidth 1 kbps.."
                   "10 Mbps, round trip, loss) and bridge load, the most accurate policy whose p95 latency stays "
                   "within this many ms; the device measures its link and picks per input.")
@click.option("--device-mmacs", type=float,
              help="Multi-exit, with --latency-slo-ms: the board's speed in million MACs per second [default: its "
                   "clock / 4].")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for thresholds.json and tradeoff.png (multi-exit: policy.json).")
@click.option("--json", "as_json", is_flag=True, help="Print thresholds.json instead of the table.")
def calibrate_command(local_path: Path, remote: str, data_path: Path, max_remote_fraction: float | None,
                      target_accuracy: float | None, max_local_error: float | None, delta: float | None,
                      risk_procedure: str, max_reject: float, remote_target_accuracy: float | None,
                      remote_supervisor: str, max_device_fraction: float | None, bandwidth_kbps: float,
                      cloud_gmacs: float, latency_slo_ms: float | None, device_mmacs: float | None, out_dir: Path,
                      price_per_call: float, latency_ms: float, as_json: bool) -> None:
    """Choose the local (int8) and remote supervisor thresholds on a validation set.

    Writes thresholds.json (the local threshold in the int8 units the firmware compares, the remote
    threshold, and what they achieve) and tradeoff.png (accuracy and remote calls against the threshold).
    Relayed answers the remote supervisor rejects fall back to the local label and count as rejected.

    Given a multi-exit export (--local DIR with stages.json), it chooses the exit policy instead: the
    per-exit-threshold baseline and EENet's learned scorers, each the most accurate within
    --max-device-fraction and --max-remote-fraction, written to policy-thresholds.json and policy.json.
    With --max-local-error instead (risk mode), policy.json holds the policy that answers early as often as
    a Learn-then-Test guarantee allows, and the guarantee (error, delta, procedure, samples, in words).
    """
    from bisup.calibration.single import ModeError
    from bisup.cli.tables import calibrated_table
    from bisup.deployment import CalibrationError, CalibrationRequest, open_deployment

    check_exists(local_path, "local model", "give the model.tflite that `bisup export --out DIR` writes")
    check_npz(data_path)
    request = CalibrationRequest(remote, data_path, out_dir, remote_supervisor, max_reject, max_remote_fraction,
                                 target_accuracy, max_local_error, delta, risk_procedure, remote_target_accuracy,
                                 price_per_call, latency_ms, max_device_fraction, bandwidth_kbps, cloud_gmacs,
                                 latency_slo_ms, device_mmacs)
    deployment = open_deployment(local_path)
    try:
        deployment.check_calibration(request)
    except (CalibrationError, ModeError) as exc:  # options that do not fit: a usage error, as click's own
        raise click.UsageError(str(exc)) from None
    quiet_tensorflow()
    done = deployment.calibrate(request, progress)
    click.echo(json.dumps(done.to_json(), indent=2) if as_json else calibrated_table(done))
    progress("wrote " + " and ".join(str(path) for path in done.wrote))
