"""Typed artefacts: every file one bisup stage writes for another to read, and the one decision rule.

``thresholds.json`` (calibrate → bridge, device, hil, bundle), ``report.json`` (export → calibrate,
bundle, flash, device), the bundle's ``manifest.json`` (bundle → every reader of a ``.bisup``) and a
board profile are dataclasses here, each with ``to_json``/``from_json``. Writers build them, readers
parse them; no other module reads these files by string keys. Every file carries a ``format``
version that ``from_json`` checks: an older or newer format, or a file that is not the artefact at
all, is an ``ArtefactError`` naming the file and what to do.

This module sits in ``converters`` (the lowest layer, which imports no other package) so that
``boards``, ``firmware_bridge`` and ``toolkit`` can all import it; it imports neither Keras nor
TensorFlow.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bisup.converters.errors import BisupError

if TYPE_CHECKING:
    import numpy as np
    from _typeshed import DataclassInstance
    from numpy.typing import ArrayLike

NEVER_TRUST = 128  # a local threshold above every int8 code: every input goes to the remote
_Artefact = TypeVar("_Artefact", bound="DataclassInstance")


class ArtefactError(BisupError, ValueError):
    """A bisup file that is missing, malformed, or of a format this bisup does not read."""


def trusted(confidence_int8: ArrayLike, threshold_int8: int):
    """The device's rule, exactly as the firmware's ``bisup_proto_trusted``: answer locally iff the int8
    confidence reaches the int8 threshold (``NEVER_TRUST`` means never)."""
    import numpy as np  # here, not at import: `bisup boards` and `--help` read artefacts without numpy

    return np.asarray(confidence_int8, dtype=np.int32) >= threshold_int8


def accepted(remote_score: ArrayLike, remote_threshold: float):
    """The remote supervisor's rule: keep the remote answer iff its score reaches the threshold."""
    import numpy as np

    return np.asarray(remote_score) >= remote_threshold


@dataclass(frozen=True)
class Decision:
    """Both rules with their thresholds: what a deployment decides for every input."""

    threshold_int8: int
    remote_threshold: float

    def trusted(self, confidence_int8: ArrayLike):
        return trusted(confidence_int8, self.threshold_int8)

    def accepted(self, remote_score: ArrayLike):
        return accepted(remote_score, self.remote_threshold)


def _document(raw: bytes | str | dict, where: str) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtefactError(f"{where} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtefactError(f"{where} holds a JSON {type(data).__name__}, not an object")
    return data


def _versioned(raw: bytes | str | dict, where: str, kind: str, current: int, rewrite: str) -> dict:
    """The document, once its format is the one this bisup reads."""
    data = _document(raw, where)
    version = data.get("format")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtefactError(f"{where} is not a bisup {kind} (it has no format version); {rewrite}")
    if version > current:
        raise ArtefactError(f"{where} is a {kind} of format {version}, from a newer bisup; this one reads format "
                            f"{current}: upgrade bisup (pip install -U bisup)")
    if version < current:
        raise ArtefactError(f"{where} is a {kind} of format {version}, from an older bisup; this one reads format "
                            f"{current}: {rewrite}")
    return data


def _build(cls: type[_Artefact], data: dict, where: str, **converted: object) -> _Artefact:
    """``cls`` from the document's fields (unknown keys are ignored; missing required ones are named)."""
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in data.items() if k in names} | converted
    required = [f.name for f in fields(cls)
                if f.default is MISSING and f.default_factory is MISSING and f.name not in values]
    if required:
        raise ArtefactError(f"{where} lacks {', '.join(required)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ArtefactError(f"{where} is malformed: {exc}") from exc


def _read(path: Path, kind: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ArtefactError(f"{kind} {path} cannot be read: {exc.strerror}") from exc


@dataclass(frozen=True)
class LocalThreshold:
    supervisor: str
    threshold_int8: int
    threshold: float
    confidence_scale: float
    confidence_zero_point: int
    rule: str = "answer locally when confidence_int8 >= threshold_int8 (128: never)"

    def __post_init__(self):
        if not isinstance(self.threshold_int8, int) or not -128 <= self.threshold_int8 <= NEVER_TRUST:
            raise ValueError(f"local threshold_int8 {self.threshold_int8!r} is not an int8 code or 128")


@dataclass(frozen=True)
class RemoteThreshold:
    supervisor: str
    threshold: float
    max_reject: float | None = None
    target_accuracy: float | None = None
    rule: str = "accept the remote answer when its score >= threshold (scores lie in [0, 1])"

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise ValueError(f"remote threshold {self.threshold!r} is not a number")


@dataclass(frozen=True)
class Thresholds:
    """``thresholds.json``: both thresholds, how they were chosen, and what they achieved."""

    FORMAT = 1
    local: LocalThreshold
    remote: RemoteThreshold
    selection: dict = field(default_factory=dict)
    guarantee: str | None = None
    achieved: dict = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)
    cost_model: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)

    @property
    def decision(self) -> Decision:
        return Decision(self.local.threshold_int8, self.remote.threshold)

    def to_json(self) -> dict:
        local, remote = asdict(self.local), {k: v for k, v in asdict(self.remote).items() if v is not None}
        return {"format": self.FORMAT, **asdict(self) | {"local": local, "remote": remote}}

    @classmethod
    def from_json(cls, raw: bytes | str | dict, where: str = "thresholds.json") -> Thresholds:
        data = _versioned(raw, where, "thresholds file", cls.FORMAT, "run `bisup calibrate` again to rewrite it")
        local, remote = data.get("local"), data.get("remote")
        if not isinstance(local, dict) or not isinstance(remote, dict):
            raise ArtefactError(f"{where} lacks its local and remote sections; run `bisup calibrate` again")
        return _build(cls, data, where, local=_build(LocalThreshold, local, f"{where} (local)"),
                      remote=_build(RemoteThreshold, remote, f"{where} (remote)"))

    @classmethod
    def read(cls, path: str | Path) -> Thresholds:
        return cls.from_json(_read(Path(path), "thresholds file"), str(path))


@dataclass(frozen=True)
class ExportReport:
    """``report.json``: what ``bisup export`` measured for one board."""

    FORMAT = 1
    board: str
    board_title: str
    arch: str
    cpu_mhz: int
    kernels: str
    supervisor: str
    supervisor_temperature: float
    ops: list
    flash_bytes: int
    flash_budget_bytes: int
    arena_bytes: int
    arena_recommended_bytes: int
    arena_budget_bytes: int
    arena_margin: str
    float_accuracy: float | None
    int8_accuracy: float | None
    int8_float_top1_agreement: float
    tflm_vs_litert_bitexact: dict
    supervisor_auroc: dict
    fits: bool
    fit_problems: list
    caveats: list
    quantization: dict
    samples: dict
    oracle: str
    engine: dict = field(default_factory=dict)  # the generated C: arena, flash, per-layer (empty: not generated)
    fit_engine: str = "tflm"  # the engine fits and fit_problems judge by: "c" (model_infer.c) or "tflm"

    @property
    def num_classes(self) -> int:
        return math.prod(self.quantization["scores"]["shape"])

    def to_json(self) -> dict:
        return {"format": self.FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, raw: bytes | str | dict, where: str = "report.json") -> ExportReport:
        return _build(cls, _versioned(raw, where, "export report", cls.FORMAT, "run `bisup export` again"), where)

    @classmethod
    def read(cls, path: str | Path) -> ExportReport:
        return cls.from_json(_read(Path(path), "export report"), str(path))


@dataclass(frozen=True)
class StageEntry:
    """One stage of a multi-exit export: its model file and what the export measured for it."""

    file: str
    sha256: str
    cut: str | None  # the layer whose output this stage hands on (None: the last stage)
    macs: int
    engine_arena_bytes: int
    tflm_arena_bytes: int
    model_bytes: int
    input: dict  # shape, scale, zero_point
    activation: dict | None  # shape, scale, zero_point, bytes (None: the last stage)
    temperature: float
    exit_float_accuracy: float
    exit_int8_accuracy: float


@dataclass(frozen=True)
class StageTable:
    """``stages.json``: a multi-exit export, stage by stage (see ``bisup.converters.exits_stages``)."""

    FORMAT = 1
    board: str
    supervisor: str
    classes: int
    stages: list[StageEntry]
    fits: bool
    fit_problems: list
    samples: dict
    flash_bytes: int | None = None  # generated C of every stage plus the kernels (arm-none-eabi-size)
    shared_arena_bytes: int | None = None  # the one arena the stages' generated C shares (stages_arena.c)

    @property
    def cumulative_macs(self) -> list[int]:
        """Device MACs to reach each exit (exit i runs stages 1..i)."""
        total, out = 0, []
        for stage in self.stages:
            total += stage.macs
            out.append(total)
        return out

    def to_json(self) -> dict:
        return {"format": self.FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, raw: bytes | str | dict, where: str = "stages.json") -> StageTable:
        data = _versioned(raw, where, "stage table", cls.FORMAT, "run `bisup export` on the multi-exit model again")
        rows = data.get("stages")
        if not isinstance(rows, list) or not rows:
            raise ArtefactError(f"{where} lists no stages; run `bisup export` on the multi-exit model again")
        return _build(cls, data, where, stages=[_build(StageEntry, row if isinstance(row, dict) else {},
                                                       f"{where} (stage {i})") for i, row in enumerate(rows, 1)])

    @classmethod
    def read(cls, path: str | Path) -> StageTable:
        return cls.from_json(_read(Path(path), "stage table"), str(path))


@dataclass(frozen=True)
class Member:
    sha256: str
    size: int


@dataclass(frozen=True)
class BundleManifest:
    """A ``.bisup`` archive's ``manifest.json``: the SHA-256 and size of every other member."""

    FORMAT = 2  # 2: report.json replaced board.json, so readers get the measured arena and the board
    toolkit_version: str
    created: str
    model_sha256: str
    members: dict[str, Member]

    def to_json(self) -> dict:
        return {"format": self.FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, raw: bytes | str | dict, where: str = "manifest.json") -> BundleManifest:
        data = _versioned(raw, where, "bundle manifest", cls.FORMAT, "rebuild the bundle with `bisup bundle`")
        members = data.get("members")
        if not isinstance(members, dict):
            raise ArtefactError(f"{where} lacks its members table; rebuild the bundle with `bisup bundle`")
        return _build(cls, data, where, members={name: _build(Member, entry if isinstance(entry, dict) else {},
                                                              f"{where} ({name})") for name, entry in members.items()})


@dataclass(frozen=True)
class Caveat:
    """A known kernel problem on some boards; ``check`` names the model inspection that detects it."""

    id: str
    check: str
    severity: str
    message: str
    fix: str
    source: str


@dataclass(frozen=True)
class Emulation:
    """An emulated board's QEMU machine, core, clock and memory map: what ``bisup hil --emulate`` builds the
    firmware for (``-mcpu``, the linker script, the UART and SysTick defines) and runs (``-machine``)."""

    machine: str
    cpu: str
    cpu_hz: int
    flash_origin: int
    flash_bytes: int
    ram_origin: int
    ram_bytes: int
    uart0: int
    # Where the core reads its vector table at reset (QEMU's initial secure VTOR), when that is not
    # flash_origin: the an547 boots from ITCM but keeps its code in the larger SRAM.
    vectors_origin: int | None = None

    @property
    def boot_entropy_address(self) -> int:
        """``_boot_entropy`` in the linker script: the last word of RAM."""
        return self.ram_origin + self.ram_bytes - 4

    @property
    def nanoseconds_per_cycle(self) -> float:
        return 1e9 / self.cpu_hz


@dataclass(frozen=True)
class BoardProfile:
    """What the exporter needs to know about a board to say whether a model fits and runs right."""

    FORMAT = 1
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
    caveats: tuple[Caveat, ...] = ()
    firmware: str = ""  # its firmware template folder, relative to the boards folder; "" for none
    emulation: Emulation | None = None  # set for a board QEMU emulates (`bisup hil --emulate`)

    @property
    def model_flash_budget(self) -> int:
        """Flash left for the model once the firmware image is accounted for."""
        return self.flash_bytes - self.reserved_flash_bytes

    @property
    def arena_ram_budget(self) -> int:
        """RAM left for the tensor arena once stacks, heap and radio stacks are accounted for."""
        return self.ram_bytes - self.reserved_ram_bytes

    def to_json(self) -> dict:
        budgets = {"model_flash_budget": self.model_flash_budget, "arena_ram_budget": self.arena_ram_budget}
        return {"format": self.FORMAT, **asdict(self), **budgets}

    @classmethod
    def from_json(cls, raw: bytes | str | dict, where: str = "board profile") -> BoardProfile:
        data = _versioned(raw, where, "board profile", cls.FORMAT, "export it again with `bisup boards --json`")
        caveats = tuple(_build(Caveat, c, f"{where} (caveat)") for c in data.get("caveats", ()))
        emulation = data.get("emulation")
        emulation = _build(Emulation, emulation, f"{where} (emulation)") if isinstance(emulation, dict) else None
        return _build(cls, data, where, caveats=caveats, notes=tuple(data.get("notes", ())), emulation=emulation)


def dumps(artefact: Thresholds | ExportReport | BundleManifest | BoardProfile) -> str:
    """The file text of an artefact, as every writer writes it."""
    return json.dumps(artefact.to_json(), indent=2) + "\n"


# --- policy.json: the exit policy of a multi-exit device and its one decision rule. Calibration
# (bisup.calibration.exits) chooses it; the virtual device and the firmware apply it through ``Policy.exit_score``,
# in integers, so a device decides exactly as calibration assumed.

NEVER = 2**40  # a threshold no score reaches: do not answer at that exit


def features(confidence: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """int features of one exit for a batch: the int8 confidences of this exit and every earlier one
    (``confidence`` is ``(exits so far, N)``), the exit's top int8 score and its top-1 minus top-2."""
    import numpy as np

    top2 = np.sort(np.asarray(scores, dtype=np.int64), axis=1)[:, -2:]
    return np.column_stack([np.asarray(confidence, dtype=np.int64).T, top2[:, 1], top2[:, 1] - top2[:, 0]])


@dataclass(frozen=True)
class Scorer:
    """EENet's scorer for one exit, in integers: ``score = features . weights + bias``."""

    weights: list[int]
    bias: int

    def score(self, feats: np.ndarray) -> np.ndarray:
        import numpy as np

        return feats @ np.asarray(self.weights, dtype=np.int64) + self.bias


@dataclass(frozen=True)
class Policy:
    """How a multi-exit device decides (``bisup.calibration.exits`` explains the fields)."""

    FORMAT = 1
    kind: str  # "thresholds" (int8 confidence) or "learned" (EENet scorers)
    depth: int  # device stages before relaying (1..E)
    thresholds: list[int]  # per exit 1..depth in the score's units; NEVER: do not answer there
    relay: bool
    split: int  # what is relayed: 0 the raw input (INFER), s the activation at cut s (SPLIT)
    scorers: list[Scorer] = field(default_factory=list)
    remote_thresholds: list[float] = field(default_factory=list)  # per split, for the bridge's supervisor
    remote_supervisor: str = "max-softmax"
    achieved: dict = field(default_factory=dict)
    guarantee: dict = field(default_factory=dict)  # risk mode: what is certified, in numbers and in words
    schedule: dict = field(default_factory=dict)  # run-time table (firmware_bridge.schedule_table); {}: none

    def exit_score(self, exit_index: int, confidence: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Exit ``exit_index``'s (0-based) score for a batch; ``confidence`` holds exits 0..exit_index."""
        import numpy as np

        if self.kind == "thresholds":
            return np.asarray(confidence[exit_index], dtype=np.int64)
        return self.scorers[exit_index].score(features(confidence[: exit_index + 1], scores))

    def answers_at(self, exit_index: int, score: np.ndarray) -> np.ndarray:
        """Whether exit ``exit_index`` answers locally (the rule the firmware applies after each stage)."""
        import numpy as np

        return np.asarray(score) >= self.thresholds[exit_index]

    def to_json(self) -> dict:
        return {"format": self.FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, raw: bytes | str | dict, where: str = "policy.json") -> Policy:
        data = _versioned(raw, where, "exit policy", cls.FORMAT, "run `bisup calibrate` on the stages again")
        scorers = data.get("scorers", [])
        if not isinstance(scorers, list):
            raise ArtefactError(f"{where}: scorers is not a list; run `bisup calibrate` on the stages again")
        return _build(cls, data, where, scorers=[_build(Scorer, s if isinstance(s, dict) else {}, f"{where} (scorer)")
                                                 for s in scorers])

    @classmethod
    def read(cls, path: str | Path) -> Policy:
        return cls.from_json(_read(Path(path), "exit policy"), str(path))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"
