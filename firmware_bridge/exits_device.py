"""A multi-exit device without a board: the stages in TFLM, the exit policy, and the wire protocol.

It does what the firmware's stage loop does: after each stage it scores the exit with the policy's
integer rule and answers locally when the score reaches the threshold; still unsure after stage
``depth``, it relays the raw input (INFER) or the activation at the policy's cut (SPLIT). When no
usable remote answer comes back (the bridge is gone, the link times out, or the remote supervisor
rejects the answer) it runs the remaining stages and answers with its last exit: a lost link costs
device time, never accuracy against a weak early exit.

A policy calibrated with a latency objective carries a schedule table: the device then picks the policy per
input (``scheduler.Scheduler``) from what it measured of its link: the timing of its relays, a PING every
``PROBE_S`` seconds, and the bridge's load hint in ANSWER. Its STATS say how many inputs it decided
outside the calibrated range.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bisup.converters.artefacts import Policy
from bisup.converters.signature import ACTIVATION, CONFIDENCE, SCORES
from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.exits_model import StagedModel
from bisup.firmware_bridge.relay import Answer
from bisup.firmware_bridge.scheduler import Scheduler
from bisup.firmware_bridge.virtual_device import Link, VirtualDevice

PROBE_S = 1.0


@dataclass(frozen=True)
class StagedAnswer:
    """One input's outcome: the answer, the exit that gave it (-1: the remote), MACs run and bytes sent."""

    answer: Answer
    exit_taken: int
    device_macs: int
    sent_bytes: int


class StagedDevice(VirtualDevice):
    def __init__(self, link: Link, staged: StagedModel, policy: Policy, device_id: str = "staged-0",
                 timeout_s: float = 0.5, retries: int = 3):
        super().__init__(link, staged, 0, device_id, timeout_s, retries)  # HELLO reads staged.model_hash
        self.staged, self.policy = staged, policy
        self.macs = staged.table.cumulative_macs
        self.scheduler = Scheduler.of(policy, self.macs)
        self.probed = float("-inf")
        self.last_policy = policy  # what decided the last input (a scheduled device changes it per input)
        self.clock_scale = 1.0  # link seconds per host second: a compressed emulated link sets its scale

    def link_seconds(self, host_s: float) -> float:
        """Host seconds as the link's, the unit of the table the scheduler measures against."""
        return host_s * self.clock_scale

    def exchange_seconds(self, host_s: float) -> float:
        """An answered relay's host seconds as the link's (a subclass that knows the bridge's compute keeps it
        out of the scaling)."""
        return self.link_seconds(host_s)

    def _finish(self, state: dict, start: int, confidences: list[int]) -> tuple[int, int]:
        """Run stages ``start``.. to the last; return the last exit's label and confidence."""
        current = state
        for index in range(start, len(self.staged)):
            current = self.staged.stage(index, current[ACTIVATION])
            confidences.append(int(current[CONFIDENCE][0]))
        return int(current[SCORES][0].argmax()), confidences[-1]

    def probe(self) -> None:
        """PING the bridge when the last probe is ``PROBE_S`` of link time old: what the scheduler measures while
        the device answers locally. A device loop that has idle time between inputs calls it there, so the wait
        falls outside any input's latency; ``choose`` calls it otherwise."""
        if self.scheduler is not None and self.link_seconds(time.monotonic() - self.probed) >= PROBE_S:
            self.probed = time.monotonic()
            self.scheduler.pinged(self.ping())

    def choose(self) -> Policy:
        """The policy for the next input: the fixed one, or the schedule's entry for the link as measured."""
        if self.scheduler is None:
            return self.policy
        self.probe()
        return self.scheduler.choose()

    def ping(self) -> float | None:
        """One PING's round trip in seconds (None: no PONG within the timeout)."""
        seq = self._next_seq()
        self._send(p.Ping(seq, boot=self.boot))
        start = time.monotonic()
        answered = self._await(seq, (p.Pong,), start + self.timeout_s) is not None
        return self.link_seconds(time.monotonic() - start) if answered else None

    def relay(self, policy: Policy, data: np.ndarray, label: int, confidence: int) -> Answer:
        """``ask`` under the policy's split; a scheduled device waits as long as its link needs and learns from it."""
        if self.scheduler is None:
            return self.ask(data, label, confidence, stage=policy.split)
        configured = self.timeout_s
        self.timeout_s = waited = max(configured, self.scheduler.timeout_s(policy, data.size) / self.clock_scale)
        try:
            reply = self.ask(data, label, confidence, stage=policy.split)
        finally:
            self.timeout_s = configured
        if self.last_exchange is not None:
            x = self.last_exchange
            seconds = None if x.seconds is None else self.exchange_seconds(x.seconds)
            self.scheduler.relayed(policy.split, data.size, seconds, x.lost, self.link_seconds(waited), x.load)
        return reply

    def send_stats(self) -> None:
        """STATS, with the inputs decided off the calibrated range when the device runs a schedule."""
        if self.scheduler is None:
            super().send_stats()
            return
        self._send(p.Stats(self._next_seq(), self.inferences, self.local_answers, self.relayed,
                           self.scheduler.stats.out_of_range, boot=self.boot))

    def infer_one(self, x_q: np.ndarray) -> StagedAnswer:
        """One int8 input through the stages and the policy (see the module docstring)."""
        policy = self.last_policy = self.choose()
        last, confidences, cut = len(self.staged) - 1, [], {0: x_q}
        current = {ACTIVATION: x_q[None]}
        for e in range(policy.depth):
            current = self.staged.stage(e, current[ACTIVATION])
            confidences.append(int(current[CONFIDENCE][0]))
            if ACTIVATION in current:
                cut[e + 1] = current[ACTIVATION][0]
            label = int(current[SCORES][0].argmax())
            score = policy.exit_score(e, np.array(confidences)[:, None], current[SCORES])
            if policy.answers_at(e, score)[0] or (e == last and not policy.relay):
                self.count_inference(relayed=False)
                return StagedAnswer(Answer(0, label, float(confidences[-1]), p.Source.LOCAL), e, self.macs[e], 0)
        if not policy.relay:  # a local-only entry stopped before the last exit: it finishes there
            final, conf = self._finish(current, policy.depth, confidences)
            self.count_inference(relayed=False)
            return StagedAnswer(Answer(0, final, float(conf), p.Source.LOCAL), last, self.macs[last], 0)
        split = policy.split
        reply = self.relay(policy, cut[split], label, confidences[-1])
        sent = cut[split].size
        if reply.source is p.Source.REMOTE:
            return StagedAnswer(reply, -1, self.macs[policy.depth - 1], sent)
        final, conf = self._finish(current, policy.depth, confidences)
        fallback = Answer(reply.seq, final, float(conf), p.Source.FALLBACK, reply.rejected)
        return StagedAnswer(fallback, last, self.macs[last], sent if reply.rejected else 0)

    def run_staged(self, x: np.ndarray) -> list[StagedAnswer]:
        """Every input as deployed."""
        answers = [self.infer_one(sample) for sample in self.staged.quantize(x)]
        self.send_stats()
        return answers
