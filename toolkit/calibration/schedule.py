"""SPINN's run-time schedule, calibrated: for each link condition and server load, the most accurate exit
policy whose p95 latency stays within the objective (``bisup calibrate --latency-slo-ms``).

The candidates come from the policy machinery of ``bisup.calibration.exits`` (``apply`` on the outcomes):
for each depth and split, one family of per-exit thresholds at matched quantiles of each exit's score
(quantile q: each exit answers its most confident 1-q), plus the policies that never relay: the same
family finishing locally, and "answer everything at exit e". Each candidate is reduced once to a few
atoms (local answers per exit MACs, relays accepted and rejected, how many of each are right), so its
latency distribution and expected accuracy at any condition are a handful of scalars
(``firmware_bridge.schedule_table`` states the latency model). Every cell of the grid takes the most
accurate candidate within the objective; the safe entry, the most accurate policy that never relays
within it, is every cell's last resort and what a device outside the grid uses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bisup.calibration.exits import CANDIDATES, ExitOutcomes, PolicyError, apply, exit_scores
from bisup.converters.artefacts import NEVER, Policy
from bisup.firmware_bridge.schedule_table import Condition, Entry, LatencyModel, ScheduleTable

P95 = 0.95
BANDWIDTHS_BPS = [float(f"{v:.3g}") for v in np.logspace(3, 7, 13)]  # 1 kbps .. 10 Mbps, 3 a decade
RTTS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
LOSSES = [0.0, 0.01, 0.05, 0.2]
LOADS = [0, 1, 3, 7]
MAX_ENTRIES = 256  # the C table's cells are uint8
MACS_PER_CYCLE = 0.25  # int8 reference kernels on a Cortex-M4 class core, about 4 cycles per MAC
ANY_LINK = Condition(1.0, 0.0)  # what a policy that never relays is evaluated at: the link does not matter


@dataclass(frozen=True)
class Grid:
    """The conditions a table covers (ascending)."""

    bandwidths_bps: tuple[float, ...] = tuple(BANDWIDTHS_BPS)
    rtts_s: tuple[float, ...] = tuple(RTTS_S)
    losses: tuple[float, ...] = tuple(LOSSES)
    loads: tuple[int, ...] = tuple(LOADS)

    def conditions(self) -> list[Condition]:
        """Every cell, the last axis fastest (``ScheduleTable.cells`` order)."""
        return [Condition(b, r, loss, load) for b in self.bandwidths_bps for r in self.rtts_s
                for loss in self.losses for load in self.loads]


@dataclass(frozen=True)
class Profile:
    """A candidate policy reduced to what its latency and accuracy at any condition depend on (fractions of
    the calibration set)."""

    entry: Entry
    local_macs: np.ndarray  # distinct device MACs of the inputs answered locally
    local_weights: np.ndarray  # their fractions
    accepted: float  # relayed, the remote answer kept
    rejected: float  # relayed, the remote answer rejected: the device finishes locally
    local_right: float
    relayed_right: float  # right when the relay gets through (remote answer, or last exit after a rejection)
    fallback_right: float  # relayed inputs the last exit gets right: what a failed relay answers
    depth_macs: int
    finish_macs: int  # device MACs from the relay point to the last exit
    payload: int
    tail_macs: int

    @property
    def relays(self) -> bool:
        return self.accepted + self.rejected > 0

    def atoms(self, model: LatencyModel, c: Condition) -> tuple[np.ndarray, np.ndarray]:
        """Latency values (s) and their probabilities over the set, ``(cells, atoms)`` for the conditions in ``c``
        (a ``Condition`` of arrays, ``conditions``)."""
        cells = np.shape(c.rtt_s)
        values = [np.broadcast_to(model.device_s(self.local_macs), (*cells, len(self.local_macs)))]
        weights = [np.broadcast_to(self.local_weights, values[0].shape)]
        if self.relays:
            base, finish = model.device_s(self.depth_macs), model.device_s(self.finish_macs)
            attempt = np.asarray(model.attempt_s(c, self.payload, self.tail_macs))[..., None]
            timeout, fail = model.timeout_s(attempt), np.asarray(c.attempt_fails)[..., None]
            k = np.arange(model.retries + 1)
            through, lost = (1 - fail) * fail**k, fail ** (model.retries + 1)
            values += [base + k * timeout + attempt, base + k * timeout + attempt + finish,
                       base + (model.retries + 1) * timeout + finish]
            weights += [self.accepted * through, self.rejected * through, (self.accepted + self.rejected) * lost]
        return np.concatenate(values, axis=-1), np.concatenate(weights, axis=-1)

    def figures(self, model: LatencyModel, c: Condition) -> tuple[np.ndarray, np.ndarray]:
        """Expected accuracy and p95 latency (s) at the conditions in ``c``, one per cell."""
        values, weights = self.atoms(model, c)
        order = np.argsort(values, axis=-1, kind="stable")
        reached = np.cumsum(np.take_along_axis(weights, order, -1), axis=-1) >= P95 - 1e-9
        p95 = np.take_along_axis(np.take_along_axis(values, order, -1), np.argmax(reached, -1)[..., None], -1)[..., 0]
        lost = np.asarray(c.attempt_fails) ** (model.retries + 1) if self.relays else 0.0
        accuracy = self.local_right + (1 - lost) * self.relayed_right + lost * self.fallback_right
        return np.broadcast_to(accuracy, p95.shape), p95


def conditions(cells: list[Condition]) -> Condition:
    """The cells as one ``Condition`` of arrays, so a candidate's figures come for all of them at once."""
    return Condition(*(np.array([getattr(c, name) for c in cells]) for name in ("bandwidth_bps", "rtt_s", "loss",
                                                                                 "load")))


def profile(o: ExitOutcomes, policy: Policy, scores: np.ndarray) -> Profile:
    """``policy`` on the calibration outcomes, reduced to a ``Profile``."""
    r, n, last = apply(policy, o, scores), len(o.y), o.exits - 1
    local = ~r.relayed
    macs, counts = np.unique(r.device_macs[local], return_counts=True)
    right = r.labels == o.y
    last_right = o.labels[last] == o.y
    relay_at = o.cumulative_macs[policy.depth - 1]
    split = policy.split
    return Profile(Entry(policy.depth, list(policy.thresholds), policy.relay, split), macs.astype(float),
                   counts / n, float((r.relayed & ~r.rejected).mean()), float(r.rejected.mean()),
                   float((right & local).mean()), float((right & r.relayed).mean()),
                   float((last_right & r.relayed).mean()), relay_at, o.cumulative_macs[last] - relay_at,
                   o.sent_bytes[split], o.cumulative_macs[last] - (o.cumulative_macs[split - 1] if split else 0))


def _levels(scores: np.ndarray) -> list[int]:
    """Per quantile level (and a last "never"), the exit's threshold: matched across exits by index."""
    return [int(np.quantile(scores, q, method="nearest")) for q in np.linspace(0.0, 1.0, CANDIDATES)] + [NEVER]


def candidates(o: ExitOutcomes, base: Policy) -> tuple[list[Profile], list[Profile]]:
    """The candidates that relay and those that never do, with ``base``'s kind and scorers."""
    scores = exit_scores(o, replace(base, depth=o.exits))
    levels = [_levels(s) for s in scores]
    exits, relaying, local = o.exits, [], []
    for q in range(len(levels[0])):
        for depth in range(1, exits + 1):
            thresholds = [levels[e][q] for e in range(depth)]
            for split in range(0, min(depth, exits - 1) + 1):
                relaying.append(profile(o, replace(base, depth=depth, thresholds=thresholds, relay=True,
                                                   split=split), scores))
        finish = [levels[e][q] for e in range(exits - 1)] + [-NEVER]
        local.append(profile(o, replace(base, depth=exits, thresholds=finish, relay=False, split=0), scores))
    for e in range(exits):  # everything at exit e: the cheapest local answers
        ladder = [NEVER] * e + [-NEVER]
        local.append(profile(o, replace(base, depth=e + 1, thresholds=ladder, relay=False, split=0), scores))
    return relaying, local


def safe_entry(local: list[Profile], model: LatencyModel, slo_s: float) -> Profile:
    """The most accurate never-relaying candidate within the objective; refuses an objective none meets."""
    figures = [tuple(map(float, p.figures(model, ANY_LINK))) for p in local]
    feasible = [(acc, -p95, i) for i, (acc, p95) in enumerate(figures) if p95 <= slo_s + 1e-12]
    if not feasible:
        smallest = min(p95 for _, p95 in figures)
        raise PolicyError(f"--latency-slo-ms {slo_s * 1e3:g} is below what the device alone needs to answer at "
                          f"its cheapest exit; the smallest feasible objective is {np.ceil(smallest * 1e4) / 10:g} ms")
    return local[max(feasible)[2]]


def build(o: ExitOutcomes, base: Policy, slo_ms: float, model: LatencyModel, grid: Grid = Grid()) -> ScheduleTable:
    """The table for ``base``'s kind: per cell of ``grid``, the most accurate candidate within ``slo_ms`` (ties: the
    lower p95), else the safe one. Entry 0 is the safe one; each entry states the lowest accuracy and highest p95
    of the cells that chose it."""
    slo_s = slo_ms / 1e3
    relaying, local = candidates(o, base)
    safe = safe_entry(local, model, slo_s)
    cells = conditions(grid.conditions())
    options = [safe, *relaying]
    accuracy, p95 = (np.stack(f) for f in zip(*(p.figures(model, cells) for p in options), strict=True))
    key = np.where(p95 <= slo_s + 1e-12, accuracy, -np.inf)
    key[0] = accuracy[0]  # the safe entry is always there
    best = _argbest(key, p95)
    used = [0, *sorted(set(best.tolist()) - {0}, key=best.tolist().index)]
    if len(used) > MAX_ENTRIES:
        raise PolicyError(f"the schedule needs {len(used)} entries, more than a device's table holds "
                          f"({MAX_ENTRIES}); calibrate on a smaller grid")
    entries = [_stated(options[i].entry, accuracy[i], p95[i], best == i) for i in used]
    index = {i: n for n, i in enumerate(used)}
    return ScheduleTable(slo_ms, list(grid.bandwidths_bps), list(grid.rtts_s), list(grid.losses), list(grid.loads),
                         entries, [index[i] for i in best.tolist()], 0, model,
                         notes={"samples": len(o.y), "kind": base.kind})


def _stated(entry: Entry, accuracy: np.ndarray, p95: np.ndarray, chose: np.ndarray) -> Entry:
    """``entry`` with the worst accuracy and p95 over the cells that chose it (all cells: a safe entry no cell
    chose, whose figures do not depend on the link)."""
    chose = chose if chose.any() else np.ones_like(chose)
    return replace(entry, accuracy=round(float(accuracy[chose].min()), 6),
                   p95_ms=round(float(p95[chose].max()) * 1e3, 3))


def _argbest(key: np.ndarray, p95: np.ndarray) -> np.ndarray:
    """Per cell (column), the option with the highest ``key``, ties to the lower p95, then the earlier option."""
    top = key == key.max(axis=0)
    return np.argmin(np.where(top, p95, np.inf), axis=0)


def board_model(board: str, device_mmacs: float | None, cloud_macs_per_s: float) -> LatencyModel:
    """The latency model of the export's board: ``device_mmacs`` if given, else its clock at ``MACS_PER_CYCLE``."""
    from bisup.boards import load_board

    speed = device_mmacs * 1e6 if device_mmacs else load_board(board).cpu_mhz * 1e6 * MACS_PER_CYCLE
    return LatencyModel(speed, cloud_macs_per_s)


POLICY_FILES = {"learned": "policy.json", "thresholds": "policy-thresholds.json"}


def attach(chosen: dict[str, Policy], o: ExitOutcomes, slo_ms: float, model: LatencyModel, out_dir: Path,
           grid: Grid = Grid()) -> dict[str, Policy]:
    """Each calibrated policy with its table, rewritten into ``out_dir``: the policy itself stays what a device
    without the scheduler runs (and what the table's cells improve on)."""
    scheduled = {kind: replace(policy, schedule=build(o, policy, slo_ms, model, grid).to_json())
                 for kind, policy in chosen.items()}
    for kind, policy in scheduled.items():
        (Path(out_dir) / POLICY_FILES[kind]).write_text(policy.dumps())
    return scheduled
