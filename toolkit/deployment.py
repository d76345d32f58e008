"""One deployment, whatever its kind: a single model with its thresholds, or a chain of stages with its exit policy.

Every command that takes an export folder or a ``.bisup`` opens it here once (``open_deployment``) and asks
the ``Deployment`` for what it needs: the bundle members, the bridge's relay and remotes, a virtual device,
a HIL run, a calibration. This module is the only place that asks which kind it is; a third kind would be a
third subclass here, not a branch in every command. Loading is lazy: opening costs one look at the path,
and each artefact is read (and checked) the first time a command needs it.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bisup.converters.errors import BisupError
from bisup.firmware_bridge.exits_model import is_staged

if TYPE_CHECKING:
    from bisup.firmware_bridge.bundle import Bundle
    from bisup.firmware_bridge.exits_model import StagedModel
    from bisup.firmware_bridge.link_schedule import LinkSchedule
    from bisup.firmware_bridge.relay import Relay
    from bisup.firmware_bridge.remotes import RemoteModel
    from bisup.firmware_bridge.virtual_device import VirtualDevice
    from bisup.hil.runner import HilReport
    from bisup.service.bridge import Monitoring

Progress = Callable[[str], None]

__all__ = ["CalibrationRequest", "Calibrated", "Deployment", "ExitsDeployment", "SingleDeployment",
           "open_deployment"]


class CalibrationError(BisupError, ValueError):
    """Calibration options that do not fit the deployment's kind; the message names the option."""


class MissingTails(BisupError, ValueError):
    """A multi-exit deployment's remote tails folder that does not exist."""


@dataclass(frozen=True)
class CalibrationRequest:
    """Everything ``bisup calibrate`` was given; each kind reads the options that apply to it."""

    remote: str
    data_path: Path
    out_dir: Path
    remote_supervisor: str = "max-softmax"
    max_reject: float = 0.005
    max_remote_fraction: float | None = None
    target_accuracy: float | None = None
    max_local_error: float | None = None
    delta: float | None = None
    risk_procedure: str = "auto"
    remote_target_accuracy: float | None = None
    price_per_call: float = 1.0
    latency_ms: float = 0.0
    max_device_fraction: float | None = None
    bandwidth_kbps: float = 250.0
    cloud_gmacs: float = 100.0
    latency_slo_ms: float | None = None  # multi-exit: also the run-time schedule table for this p95 objective
    device_mmacs: float | None = None  # the board's speed for that table (None: its clock / 4 cycles per MAC)


@dataclass(frozen=True)
class Calibrated:
    """What a calibration chose and the files it wrote: ``Thresholds`` for a single model, the policies by
    kind for a multi-exit one (``kind`` says which; ``bisup.cli.tables.calibrated_table`` presents both)."""

    kind: str
    chosen: Any  # Thresholds | dict[str, Policy]
    wrote: list[Path]

    def to_json(self) -> dict[str, Any]:
        """What ``bisup calibrate --json`` prints."""
        if self.kind == "exits":
            return {name: policy.to_json() for name, policy in self.chosen.items()}
        return self.chosen.to_json()


class Deployment(ABC):
    """A deployed model: what the bridge, the virtual device, HIL, calibration and bundling need of it."""

    kind: str

    def __init__(self, path: Path):
        self.path = path

    # -- identity and data
    @property
    @abstractmethod
    def model_hash(self) -> bytes:
        """The hash HELLO carries, so a device and a bridge know they run the same deployment."""

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """The float input shape without the batch axis."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Classes of the model's answer."""

    def load_data(self, data_path: Path, labels_for: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """A ``.npz`` checked against the model's input and classes; ``labels_for`` names the run that needs
        labels (e.g. "a HIL run"), if one does."""
        from bisup import datasets

        x, y = datasets.load_npz(data_path)
        if labels_for and y is None:
            raise datasets.DataError(f"{data_path} has no labels 'y'; {labels_for} needs a labelled set")
        datasets.check_matches(x, y, self.input_shape, self.num_classes, data_path)
        return x, y

    # -- bundle
    @abstractmethod
    def members(self, labels_path: Path | None) -> tuple[dict[str, bytes], str]:
        """The archive members and the model hash (hex) of ``bisup bundle``."""

    @abstractmethod
    def verify(self) -> None:
        """Read every artefact, so a bundle that verifies also loads."""

    # -- bridge
    @abstractmethod
    def check_remote(self, remote_spec: str) -> None:
        """Refuse a ``--remote`` this kind cannot serve, in one line, before anything is loaded."""

    @abstractmethod
    def remote_specs(self, remote_spec: str) -> list[str]:
        """The remotes the bridge opens for ``--remote``."""

    @abstractmethod
    def remote_names(self, remotes: list[RemoteModel]) -> dict[str, RemoteModel]:
        """The opened remotes by the name the bridge's metrics give them."""

    @abstractmethod
    def relay(self, remotes: list[RemoteModel]) -> Relay:
        """The bridge's relay over the opened (guarded) remotes, in ``remote_specs`` order."""

    @abstractmethod
    def identity(self) -> Any:
        """What the bridge's request handler checks requests against (hash, input size)."""

    @abstractmethod
    def observers(self, monitoring: Monitoring, progress: Progress) -> list:
        """The bridge's event observers that depend on the deployment (drift alarm, collector)."""

    # -- virtual device
    @abstractmethod
    def device(self, link: Any, device_id: str, timeout_s: float, retries: int) -> VirtualDevice:
        """A device without a board running this deployment over ``link``."""

    @abstractmethod
    def run_device(self, unit: VirtualDevice, x: np.ndarray, y: np.ndarray | None) -> dict:
        """Run ``x`` on ``unit`` and summarize as ``bisup device`` prints it."""

    # -- HIL and calibration
    @abstractmethod
    def run_hil(self, x: np.ndarray, y: np.ndarray, remote_spec: str, emulate: str | None, port_url: str | None,
                timeout_s: float | None, progress: Progress, policy_path: Path | None = None,
                estimate_cycles: bool = False, link: LinkSchedule | None = None) -> HilReport:
        """Feed ``x`` to the board (or QEMU) while serving the bridge's role (over ``link``, emulated, if given);
        the checked report."""

    @abstractmethod
    def check_calibration(self, request: CalibrationRequest) -> None:
        """Refuse options and a remote that do not fit this kind, before anything heavy is loaded."""

    @abstractmethod
    def calibrate(self, request: CalibrationRequest, progress: Progress) -> Calibrated:
        """Choose the thresholds (or the exit policy) on ``request.data_path`` and write them to ``out_dir``."""


class SingleDeployment(Deployment):
    """One model with its local and remote thresholds (``model.tflite``, ``thresholds.json``, ``report.json``)."""

    kind = "single"

    @functools.cached_property
    def bundle(self) -> Bundle:
        from bisup.firmware_bridge.bundle import Bundle

        return Bundle.load(self.path)

    @property
    def model_path(self) -> Path:
        """The int8 model calibration runs (the export's ``model.tflite``)."""
        return self.path / "model.tflite" if self.path.is_dir() else self.path

    @property
    def model_hash(self) -> bytes:
        return self.bundle.model_hash

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.bundle.quantization.shape)

    @property
    def num_classes(self) -> int:
        return self.bundle.num_classes

    def members(self, labels_path: Path | None) -> tuple[dict[str, bytes], str]:
        from bisup.export.bundles import members
        from bisup.firmware_bridge.bundle import sha256_hex

        files = members(self.path, labels_path)
        return files, sha256_hex(files["model.tflite"])

    def verify(self) -> None:
        _ = self.bundle  # parses thresholds.json and report.json too

    def check_remote(self, remote_spec: str) -> None:
        from bisup.firmware_bridge.remotes import check_remote

        check_remote(remote_spec)

    def remote_specs(self, remote_spec: str) -> list[str]:
        return [remote_spec]

    def remote_names(self, remotes: list[RemoteModel]) -> dict[str, RemoteModel]:
        return {remote.name: remote for remote in remotes}

    def relay(self, remotes: list[RemoteModel]) -> Relay:
        from bisup.firmware_bridge.relay import Relay

        (remote,) = remotes
        return Relay(remote, self.bundle.remote_supervisor, self.bundle.quantization)

    def identity(self) -> Bundle:
        return self.bundle

    def observers(self, monitoring: Monitoring, progress: Progress) -> list:
        from bisup.firmware_bridge.collect import Collector
        from bisup.firmware_bridge.drift import DriftAlarm

        loaded = self.bundle
        observers: list = [DriftAlarm.from_thresholds(loaded.thresholds, progress, monitoring.drift_window)]
        if monitoring.collect is not None:
            observers.append(Collector(monitoring.collect, loaded.quantization, loaded.model_hash.hex(), progress,
                                       max_bytes=int(monitoring.collect_max_mb * 1e6)))
            progress(f"collecting relayed inputs in {monitoring.collect}")
        return observers

    def device(self, link: Any, device_id: str, timeout_s: float, retries: int) -> VirtualDevice:
        from bisup.firmware_bridge.virtual_device import VirtualDevice

        return VirtualDevice(link, self.bundle.local_model(), self.bundle.threshold_int8, device_id, timeout_s,
                             retries)

    def run_device(self, unit: VirtualDevice, x: np.ndarray, y: np.ndarray | None) -> dict:
        from bisup.firmware_bridge.protocol import Source

        answers = unit.run(x)
        summary = vars(unit.stats) | {"inputs": len(x), "local": sum(a.source is Source.LOCAL for a in answers)}
        if y is not None:
            summary["accuracy"] = float(sum(a.label == t for a, t in zip(answers, y, strict=True)) / len(y))
        return summary

    def run_hil(self, x: np.ndarray, y: np.ndarray, remote_spec: str, emulate: str | None, port_url: str | None,
                timeout_s: float | None, progress: Progress, policy_path: Path | None = None,
                estimate_cycles: bool = False, link: LinkSchedule | None = None) -> HilReport:
        from bisup.firmware_bridge.remotes import open_remote
        from bisup.hil import runner

        self.check_remote(remote_spec)
        handler = runner.bridge_handler(self.bundle, open_remote(remote_spec))
        return runner.run(self.bundle, x, y, handler, port_url, emulate, timeout_s, progress, estimate_cycles, link)

    def calibrate(self, request: CalibrationRequest, progress: Progress) -> Calibrated:
        from bisup.calibration import single
        from bisup.calibration.thresholds import CostModel, RemoteRule
        from bisup.firmware_bridge.remotes import open_remote

        self.check_calibration(request)
        mode = _mode(request)
        rule = RemoteRule(max_reject=None if request.remote_target_accuracy else request.max_reject,
                          target_accuracy=request.remote_target_accuracy)
        result = single.calibrate(self.model_path, open_remote(request.remote), request.data_path, mode, rule,
                                  request.remote_supervisor,
                                  CostModel(request.price_per_call, request.latency_ms / 1000), progress)
        paths = single.write(result, request.out_dir)
        return Calibrated(self.kind, result.thresholds(), [paths["thresholds"], paths["plot"]])

    def check_calibration(self, request: CalibrationRequest) -> None:
        _mode(request)
        self.check_remote(request.remote)


def _mode(request: CalibrationRequest):
    from bisup.calibration.single import Mode

    return Mode.from_options(request.max_remote_fraction, request.target_accuracy, request.max_local_error,
                             request.delta, request.risk_procedure)


class ExitsDeployment(Deployment):
    """A multi-exit model as a chain of stages with its exit policy (``stages.json``, the stages,
    ``policy.json``); its remotes are the tails `bisup exits` wrote, one per split."""

    kind = "exits"

    @functools.cached_property
    def _loaded(self) -> tuple[StagedModel, bytes | None]:
        from bisup.firmware_bridge.exits_model import StagedModel, staged_folder

        with staged_folder(self.path) as folder:
            staged = StagedModel(folder)  # checks every stage against stages.json
            policy_bytes = (folder / "policy.json").read_bytes() if (folder / "policy.json").is_file() else None
        return staged, policy_bytes

    @property
    def staged(self) -> StagedModel:
        return self._loaded[0]

    def policy(self, path: Path | None = None):
        """The exit policy: ``path``, or the one the export or bundle holds (read when first needed, so
        that calibration, which writes it, can open an export that has none yet)."""
        from bisup.converters.artefacts import Policy

        raw = self._loaded[1]
        if path is not None or raw is None:
            return Policy.read(path or self.path / "policy.json")  # names the missing file
        return Policy.from_json(raw, str(self.path / "policy.json"))

    @property
    def model_hash(self) -> bytes:
        return self.staged.model_hash

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.staged.table.stages[0].input["shape"][1:])

    @property
    def num_classes(self) -> int:
        return self.staged.table.classes

    def members(self, labels_path: Path | None) -> tuple[dict[str, bytes], str]:
        from bisup.export.bundles import staged_members

        return staged_members(self.path, labels_path)

    def verify(self) -> None:
        self.policy()

    def check_remote(self, remote_spec: str) -> None:
        _tails_folder(remote_spec)

    def remote_specs(self, remote_spec: str) -> list[str]:
        from bisup.service.bridge import tail_specs

        return tail_specs(remote_spec, len(self.staged))

    def remote_names(self, remotes: list[RemoteModel]) -> dict[str, RemoteModel]:
        return {f"tail{s}": remote for s, remote in enumerate(remotes)}

    def relay(self, remotes: list[RemoteModel]) -> Relay:
        from bisup.firmware_bridge.exits_model import relay_for

        return relay_for(self.staged, dict(enumerate(remotes)), self.policy())

    def identity(self) -> Any:
        from bisup.firmware_bridge.exits_model import StagedIdentity

        return StagedIdentity.of(self.staged)

    def observers(self, monitoring: Monitoring, progress: Progress) -> list:
        from bisup.service.bridge import OptionError

        if monitoring.collect is not None:
            raise OptionError("--collect keeps raw inputs for retraining one local model; a multi-exit bundle "
                              "relays activations. Serve a single-model bundle to collect")
        return []  # no drift alarm: a multi-exit policy has no single calibrated remote fraction to hold it to (yet)

    def device(self, link: Any, device_id: str, timeout_s: float, retries: int) -> VirtualDevice:
        from bisup.firmware_bridge.exits_device import StagedDevice

        return StagedDevice(link, self.staged, self.policy(), device_id, timeout_s, retries)

    def run_device(self, unit: VirtualDevice, x: np.ndarray, y: np.ndarray | None) -> dict:
        from bisup.firmware_bridge.protocol import Source

        results = unit.run_staged(x)
        exits = [r.exit_taken for r in results]
        summary = vars(unit.stats) | {
            "inputs": len(x), "local": sum(r.answer.source is Source.LOCAL for r in results),
            "exits": {f"exit{e + 1}": exits.count(e) for e in range(len(self.staged))} | {"remote": exits.count(-1)},
            "mean_device_macs": float(np.mean([r.device_macs for r in results])),
            "mean_bytes_sent": float(np.mean([r.sent_bytes for r in results]))}
        if y is not None:
            summary["accuracy"] = float(np.mean([r.answer.label == t for r, t in zip(results, y, strict=True)]))
        return summary

    def run_hil(self, x: np.ndarray, y: np.ndarray, remote_spec: str, emulate: str | None, port_url: str | None,
                timeout_s: float | None, progress: Progress, policy_path: Path | None = None,
                estimate_cycles: bool = False, link: LinkSchedule | None = None) -> HilReport:
        from bisup.export.exits import open_tail_dir
        from bisup.hil import exits

        if estimate_cycles:
            raise BisupError("--cycles traces a single model's inference; a multi-exit export has no estimate yet")
        tails = open_tail_dir(_tails_folder(remote_spec), self.staged.table)
        return exits.run(self.staged, self.policy(policy_path), x, y, tails, emulate, port_url, timeout_s, progress,
                         link)

    def calibrate(self, request: CalibrationRequest, progress: Progress) -> Calibrated:
        from bisup.calibration import exits as exit_calibration
        from bisup.export.exits import open_tail_dir

        self.check_calibration(request)
        tails = open_tail_dir(Path(request.remote), self.staged.table)
        link = exit_calibration.LinkCost(request.bandwidth_kbps * 1000, request.cloud_gmacs * 1e9)
        if request.max_local_error is not None:
            return self._calibrate_risk(request, tails, link, progress)
        chosen, o = exit_calibration.calibrate(self.staged, tails, request.data_path, request.max_device_fraction,
                                               request.max_remote_fraction, request.max_reject, link,
                                               request.remote_supervisor, progress, request.out_dir)
        if request.latency_slo_ms is not None:
            from bisup.calibration import schedule

            model = schedule.board_model(self.staged.table.board, request.device_mmacs, link.cloud_macs_per_s)
            chosen = schedule.attach(chosen, o, request.latency_slo_ms, model, request.out_dir)
        return Calibrated(self.kind, chosen,
                          [request.out_dir / "policy.json", request.out_dir / "policy-thresholds.json"])

    def _calibrate_risk(self, request: CalibrationRequest, tails: dict, link: Any, progress: Progress) -> Calibrated:
        """Risk mode: one certified policy (``bisup.calibration.exits_risk``) in policy.json."""
        from bisup.calibration import exits_risk

        policy = exits_risk.calibrate(self.staged, tails, request.data_path, _risk_target(request), request.max_reject,
                                      link, request.remote_supervisor, progress, request.out_dir)
        return Calibrated(self.kind, {"certified": policy}, [request.out_dir / "policy.json"])

    def check_calibration(self, request: CalibrationRequest) -> None:
        self.check_remote(request.remote)
        if request.target_accuracy is not None:
            raise CalibrationError("a multi-exit export takes budgets (--max-device-fraction and "
                                   "--max-remote-fraction) or a risk (--max-local-error), not --target-accuracy")
        if request.latency_slo_ms is not None and (request.latency_slo_ms <= 0 or request.max_local_error is not None):
            raise CalibrationError("--latency-slo-ms takes a positive p95 objective in ms, with the budgets "
                                   "(--max-device-fraction and --max-remote-fraction), not risk mode")
        if request.max_local_error is not None:
            if request.max_device_fraction is not None:
                raise CalibrationError("risk mode exits as early as the guarantee allows, the least device cost it "
                                       "can certify; drop --max-device-fraction (or --max-local-error for budgets)")
            _risk_target(request).check()
            return
        if request.max_device_fraction is None or request.max_remote_fraction is None:
            raise CalibrationError("a multi-exit export needs both budgets: --max-device-fraction and "
                                   "--max-remote-fraction")


def _risk_target(request: CalibrationRequest) -> Any:
    """The multi-exit risk mode's target from the single-exit risk mode's options (delta 0.1 unless given)."""
    from bisup.calibration.exits_risk import RiskTarget

    return RiskTarget(request.max_local_error, 0.1 if request.delta is None else request.delta,
                      request.risk_procedure, request.max_remote_fraction)


def _tails_folder(remote_spec: str) -> Path:
    folder = Path(remote_spec)
    if not folder.exists():
        raise MissingTails(f"remote tails folder {folder} does not exist; give the folder `bisup exits --out` "
                           "wrote")
    return folder


def open_deployment(path: str | Path) -> Deployment:
    """The deployment at ``path``: an export folder, its ``model.tflite`` or ``stages.json``, or a ``.bisup``."""
    path = Path(path)
    if is_staged(path):
        return ExitsDeployment(path.parent if path.name == "stages.json" else path)
    return SingleDeployment(path)
