"""The BiSupervised decision path, shared by the demo and the bridges.

Device side (``bisup.converters.artefacts.trusted``, the one rule): the int8 supervisor output is compared
with the int8 threshold, exactly as the firmware does; trusted answers never leave the device. Host side (``Relay``): an
unsure request is answered by the remote model, and the remote supervisor accepts that answer or
rejects it, in which case the device falls back to its own label. Serial and MQTT transports carry
``InferRequest``/``Answer`` between the two; the logic stays here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bisup.converters.artefacts import accepted
from bisup.converters.runners import dequantize_affine
from bisup.converters.scores import score
from bisup.firmware_bridge.protocol import Source
from bisup.firmware_bridge.remotes import RemoteModel


@dataclass(frozen=True)
class InferRequest:
    """What an unsure device sends: its int8 input and its own prediction and confidence."""

    device: str
    seq: int
    input_int8: np.ndarray
    local_label: int
    local_confidence_int8: int
    stage: int = 0  # split computing: the activation at the cut after this stage (0: the raw input)


@dataclass(frozen=True)
class Answer:
    """What the device ends up using. ``rejected``: the remote supervisor refused the remote answer."""

    seq: int
    label: int
    confidence: float
    source: Source
    rejected: bool = False
    remote_label: int | None = None
    probabilities: np.ndarray | None = field(default=None, compare=False, repr=False)  # the remote's, for collecting


@dataclass(frozen=True)
class RemoteSupervisor:
    """Judges the remote's probabilities; accepts when the score reaches the threshold."""

    kind: str
    threshold: float

    def judge(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, confidences and accept flags for a batch of remote probabilities."""
        confidence = score(self.kind, probs)
        return probs.argmax(axis=1), confidence, accepted(confidence, self.threshold)


@dataclass(frozen=True)
class InputQuantization:
    """The bundle's input quantization: the relay dequantizes what the device sent."""

    scale: float
    zero_point: int
    shape: tuple[int, ...]

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """What the remote sees: the same float32 values calibration gave it for this input."""
        return dequantize_affine(q, self.scale, self.zero_point).astype(np.float32).reshape(self.shape)


@dataclass(frozen=True)
class Tail:
    """Split computing: the rest of a multi-exit network after one cut, the quantization of the activation
    the device sends at that cut, and the remote supervisor's threshold for the tail's answers."""

    remote: RemoteModel
    quantization: InputQuantization
    supervisor: RemoteSupervisor

    @property
    def elements(self) -> int:
        return int(np.prod(self.quantization.shape))


class Relay:
    """Answers unsure requests with the remote model under the remote supervisor; a SPLIT request goes to
    the remote tail of its stage."""

    def __init__(self, remote: RemoteModel, supervisor: RemoteSupervisor, quantization: InputQuantization,
                 tails: dict[int, Tail] | None = None):
        self.remote = remote
        self.supervisor = supervisor
        self.quantization = quantization
        self.tails = tails or {}

    def handle(self, request: InferRequest) -> Answer:
        if request.stage:
            tail = self.tails[request.stage]
            remote, quantization, supervisor = tail.remote, tail.quantization, tail.supervisor
        else:
            remote, quantization, supervisor = self.remote, self.quantization, self.supervisor
        x = quantization.dequantize(request.input_int8)[None]
        probs = remote.predict(x)
        labels, confidence, accepted = supervisor.judge(probs)
        remote_label = int(labels[0])
        if accepted[0]:
            return Answer(request.seq, remote_label, float(confidence[0]), Source.REMOTE, remote_label=remote_label,
                          probabilities=probs[0])
        return Answer(request.seq, request.local_label, float(confidence[0]), Source.FALLBACK, True, remote_label,
                      probs[0])
