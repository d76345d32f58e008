"""A multi-exit export as a device runs it: one TFLM interpreter per stage, int8 activations between.

Shared by calibration (which learns the exit policy on exactly these outputs) and the virtual
device (which acts on them), like ``device_model`` for a single-exit model.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bisup.converters import tflite_model
from bisup.converters.artefacts import Policy, StageTable
from bisup.converters.errors import ConversionError
from bisup.converters.runners import TflmRunner, quantize
from bisup.converters.signature import ACTIVATION, CONFIDENCE, SCORES
from bisup.firmware_bridge.relay import InputQuantization, Relay, RemoteSupervisor, Tail
from bisup.firmware_bridge.remote_base import RemoteModel

ARENA_SLACK = 1024
STAGE_FILE = re.compile(r"stage[1-9][0-9]?\.tflite")


@dataclass(frozen=True)
class StageOutputs:
    """Every stage's int8 outputs for a batch: ``scores[i]`` is ``(N, K)``, ``confidence[i]`` ``(N,)``,
    ``activation[i]`` ``(N, ...)`` (none after the last stage); index 0 is stage 1."""

    x_q: np.ndarray
    scores: list[np.ndarray]
    confidence: list[np.ndarray]
    activation: list[np.ndarray]

    @property
    def labels(self) -> np.ndarray:
        """``(exits, N)`` predicted label at every exit."""
        return np.stack([s.argmax(axis=1) for s in self.scores])


class StagedModel:
    """The stage models of ``stages.json``, each in the tflite-micro interpreter."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        table_path = self.directory / "stages.json"
        if not table_path.is_file():
            raise ConversionError(f"{self.directory} has no stages.json; export a multi-exit model (made by "
                                  "`bisup exits`) with `bisup export` first")
        self.table = StageTable.read(table_path)
        self.models = [self._load(entry.file, entry.sha256) for entry in self.table.stages]
        self.infos = [tflite_model.read(model) for model in self.models]
        self.runners = [TflmRunner(model, info, entry.tflm_arena_bytes + ARENA_SLACK)
                        for model, info, entry in zip(self.models, self.infos, self.table.stages, strict=True)]

    def _load(self, name: str, sha256: str) -> bytes:
        if not STAGE_FILE.fullmatch(name):  # stages.json may come from someone else: no path may leave the folder
            raise ConversionError(f"{self.directory / 'stages.json'} names stage file {name[:80]!r}; stage files are "
                                  "stageN.tflite beside it. Export the model again with `bisup export`")
        path = self.directory / name
        if not path.is_file():
            raise ConversionError(f"stage model {path} is missing; run `bisup export` again")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ConversionError(f"stage model {path} does not match stages.json (SHA-256); run `bisup export` again")
        return data

    def __len__(self) -> int:
        return len(self.models)

    @property
    def model_hash(self) -> bytes:
        """What a multi-exit device reports in HELLO: SHA-256 over the stage hashes in order."""
        return hashlib.sha256(b"".join(hashlib.sha256(m).digest() for m in self.models)).digest()

    def quantize(self, x: np.ndarray) -> np.ndarray:
        return quantize(x, self.infos[0].inputs[0])

    def stage(self, index: int, x_q: np.ndarray) -> dict[str, np.ndarray]:
        """Stage ``index`` (0-based) on a batch of its int8 inputs: scores, confidence, activation."""
        out = self.runners[index].run(x_q)
        result = {SCORES: out[SCORES], CONFIDENCE: out[CONFIDENCE][:, 0].astype(np.int32)}
        if ACTIVATION in out:
            shape = self.infos[index].output(ACTIVATION).shape[1:]
            result[ACTIVATION] = out[ACTIVATION].reshape((len(x_q), *shape))
        return result

    def run_all(self, x: np.ndarray) -> StageOutputs:
        """Every stage on every input (what calibration needs to weigh every policy)."""
        x_q = self.quantize(x)
        scores, confidence, activation = [], [], []
        current = x_q
        for index in range(len(self)):
            out = self.stage(index, current)
            scores.append(out[SCORES])
            confidence.append(out[CONFIDENCE])
            if ACTIVATION in out:
                activation.append(out[ACTIVATION])
                current = out[ACTIVATION]
        return StageOutputs(x_q, scores, confidence, activation)


@dataclass(frozen=True)
class StagedIdentity:
    """What the bridge's handler needs of a multi-exit deployment: the hash HELLO carries and the raw
    input size an INFER must have (SPLIT sizes come from the remote tails)."""

    model_hash: bytes
    input_elements: int

    @classmethod
    def of(cls, staged: StagedModel) -> StagedIdentity:
        return cls(staged.model_hash, int(np.prod(staged.table.stages[0].input["shape"])))


def _quant(entry: dict) -> InputQuantization:
    return InputQuantization(entry["scale"], entry["zero_point"], tuple(entry["shape"][1:]))


def relay_for(model: StagedModel, tails: dict[int, RemoteModel], chosen: Policy) -> Relay:
    """The bridge's relay for a multi-exit deployment: tail 0 answers INFER (the raw input), tail ``s``
    answers SPLIT at cut ``s``, each under the remote supervisor's threshold for that split."""
    table, thresholds = model.table, chosen.remote_thresholds
    if len(thresholds) != len(tails):
        raise ConversionError(f"the policy has remote thresholds for {len(thresholds)} splits but there are "
                              f"{len(tails)} tails; calibrate the stages again")
    judges = [RemoteSupervisor(chosen.remote_supervisor, t) for t in thresholds]
    cut_tails = {s: Tail(tails[s], _quant(table.stages[s - 1].activation), judges[s]) for s in range(1, len(tails))}
    return Relay(tails[0], judges[0], _quant(table.stages[0].input), cut_tails)


def is_staged(path: str | Path) -> bool:
    """A multi-exit export: a folder with ``stages.json`` (or that file), or a ``.bisup`` archive holding one."""
    path = Path(path)
    if path.name == "stages.json":
        return path.is_file()
    if path.is_dir():
        return (path / "stages.json").is_file()
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return "stages.json" in archive.namelist()
    return False


@contextlib.contextmanager
def staged_folder(path: str | Path) -> Iterator[Path]:
    """The folder of a multi-exit export (given as the folder, its ``stages.json`` or a ``.bisup`` archive). An
    archive is verified (``bundle.read_archive``) and unpacked into a temporary folder for the duration
    (``StagedModel`` reads every stage into memory, so it outlives it)."""
    from bisup.firmware_bridge.bundle import read_archive, refuse_folder_when_trusting

    path = Path(path)
    if path.name == "stages.json":
        path = path.parent
    if path.is_dir():
        refuse_folder_when_trusting(path)
        yield path
        return
    files, _ = read_archive(path)  # plain member names only (bundle.check_member_name), so none leaves the folder
    with tempfile.TemporaryDirectory(prefix="bisup-stages-") as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        yield Path(folder)
