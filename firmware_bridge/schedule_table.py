"""SPINN's run-time schedule: one exit policy per link condition and server load, chosen by table lookup.

Calibration (``bisup.calibration.schedule``) fills a small grid: bandwidths (log-spaced), round trips,
loss rates and the bridge's load levels (ANSWER's flag bits 1..3). Each cell names an entry: a policy's
depth, per-exit thresholds, relay or not and split, the most accurate whose p95 latency stays within the
objective at that condition. A device measures its link (``bisup.firmware_bridge.scheduler``) and looks
its condition up, conservatively: the nearest calibrated bandwidth below the measured one, and the
nearest round trip, loss and load above. A condition outside the grid (a slower link, a longer round
trip, more loss than calibrated, or an outage) gets the safe entry, which never relays, and is counted.
A lookup is four binary searches and an index: the C device does the same (``bisup_exits.h``).

The latency model, shared by calibration, the device's timeouts and the bench:

- device: stage MACs / the board's MACs per second;
- one relay attempt: round trip + (request + answer bytes, framing included) * 8 / bandwidth + server
  time, where the server time is the tail's MACs / the cloud's speed plus a fixed overhead, times
  (1 + load level): a load level L says about L requests wait ahead at the bridge;
- loss: each message is lost with probability ``loss``, so an attempt fails with 1 - (1 - loss)^2; a
  failed attempt costs the device its timeout (``timeout_factor`` times the attempt's expected time, at
  least ``min_timeout_s``) and a resend, ``retries`` times; after the last, the device finishes locally.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from bisup.converters.errors import BisupError

TABLE_FORMAT = 1
LOAD_LEVELS = 8  # ANSWER's load hint: 3 bits
COBS_DELIMITER_CRC = 4  # a serial frame adds about 4 bytes to a short body: CRC 2, COBS 1, delimiter 1
REQUEST_OVERHEAD = 10 + 9 + COBS_DELIMITER_CRC  # header, SPLIT's fixed fields (INFER's are one fewer)
ANSWER_BYTES = 10 + 6 + COBS_DELIMITER_CRC
PING_BYTES = 10 + COBS_DELIMITER_CRC


class TableError(BisupError, ValueError):
    """A schedule table in policy.json that cannot be used; run `bisup calibrate --latency-slo-ms` again."""


@dataclass(frozen=True)
class LatencyModel:
    """The figures latency is predicted from (see the module docstring)."""

    device_macs_per_s: float
    cloud_macs_per_s: float = 1e9
    server_overhead_s: float = 0.002
    retries: int = 1
    timeout_factor: float = 2.0
    min_timeout_s: float = 0.05

    def device_s(self, macs: float) -> float:
        return macs / self.device_macs_per_s

    def server_s(self, tail_macs: float, load: int) -> float:
        return (tail_macs / self.cloud_macs_per_s + self.server_overhead_s) * (1 + load)

    def attempt_s(self, condition: Condition, payload_bytes: int, tail_macs: float) -> float:
        """One relay attempt that arrives: round trip, both messages on the wire, the bridge's time."""
        wire = (payload_bytes + REQUEST_OVERHEAD + ANSWER_BYTES) * 8 / condition.bandwidth_bps
        return condition.rtt_s + wire + self.server_s(tail_macs, condition.load)

    def timeout_s(self, expected_s: float) -> float:
        """How long the device waits for an attempt it expects to take ``expected_s``."""
        return np.maximum(self.min_timeout_s, self.timeout_factor * expected_s)


@dataclass(frozen=True)
class Condition:
    """A link and server state: what the device measures and the grid is indexed by."""

    bandwidth_bps: float
    rtt_s: float
    loss: float = 0.0
    load: int = 0

    @property
    def attempt_fails(self) -> float:
        """The chance an attempt gets no answer: the request or the answer is lost."""
        return 1.0 - (1.0 - self.loss) ** 2


@dataclass(frozen=True)
class Entry:
    """One policy of the table: the fields of ``Policy`` that change with the link, and what calibration
    predicted for it at the conditions that chose it (the worst of them)."""

    depth: int
    thresholds: list[int]
    relay: bool
    split: int
    accuracy: float = 0.0
    p95_ms: float = 0.0


@dataclass(frozen=True)
class ScheduleTable:
    """The grid (ascending axes) and its cells: ``cells`` holds an entry index per (bandwidth, rtt, loss,
    load), the last axis fastest. ``entries[safe]`` never relays."""

    slo_ms: float
    bandwidths_bps: list[float]
    rtts_s: list[float]
    losses: list[float]
    loads: list[int]
    entries: list[Entry]
    cells: list[int]
    safe: int
    model: LatencyModel
    format: int = TABLE_FORMAT
    notes: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.bandwidths_bps), len(self.rtts_s), len(self.losses), len(self.loads)

    def cell(self, b: int, r: int, l_: int, d: int) -> int:
        """The entry index at grid position (bandwidth, rtt, loss, load)."""
        _, nr, nl, nd = self.shape
        return self.cells[((b * nr + r) * nl + l_) * nd + d]

    def lookup(self, measured: Condition | None) -> tuple[int, bool]:
        """The entry for a measured condition (None: an outage) and whether it lies in the calibrated range."""
        if measured is None:
            return self.safe, False
        b = bisect.bisect_right(self.bandwidths_bps, measured.bandwidth_bps) - 1  # nearest below
        r = bisect.bisect_left(self.rtts_s, measured.rtt_s)  # nearest above
        l_ = bisect.bisect_left(self.losses, measured.loss)
        d = bisect.bisect_left(self.loads, measured.load)
        if b < 0 or r >= len(self.rtts_s) or l_ >= len(self.losses) or d >= len(self.loads):
            return self.safe, False
        return self.cell(b, r, l_, d), True

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "policy.json") -> ScheduleTable:
        """The table in a policy's ``schedule`` section, checked for shape so a lookup cannot go wrong."""
        if data.get("format") != TABLE_FORMAT:
            raise TableError(f"{where}: schedule table format {data.get('format')!r}, this bisup reads "
                             f"{TABLE_FORMAT}; run `bisup calibrate --latency-slo-ms` again")
        try:
            table = cls(**(data | {"model": LatencyModel(**data["model"]),
                                   "entries": [Entry(**e) for e in data["entries"]]}))
        except (KeyError, TypeError) as exc:
            raise TableError(f"{where}: schedule table is malformed ({exc}); run `bisup calibrate "
                             "--latency-slo-ms` again") from None
        size = len(table.bandwidths_bps) * len(table.rtts_s) * len(table.losses) * len(table.loads)
        if len(table.cells) != size or not all(0 <= c < len(table.entries) for c in [*table.cells, table.safe]):
            raise TableError(f"{where}: schedule table has {len(table.cells)} cells for a grid of {size}, or names "
                             "an entry it lacks; run `bisup calibrate --latency-slo-ms` again")
        return table

    def dumps(self) -> str:
        return json.dumps(self.to_json())


def c_link(measured: Condition | None) -> tuple[int, int, int, int, int]:
    """``measured`` in the C lookup's integer units (outage, bps down, round trip µs up, loss ppm up, load): on a
    grid of integers in those units, the C device then picks exactly the entry ``ScheduleTable.lookup`` does."""
    if measured is None:
        return 1, 0, 0, 0, 0
    return (0, min(math.floor(measured.bandwidth_bps), 2**32 - 1), min(math.ceil(measured.rtt_s * 1e6), 2**32 - 1),
            min(math.ceil(measured.loss * 1e6), 2**32 - 1), measured.load)


def _array(c_type: str, name: str, values: list[int]) -> str:
    return f"static const {c_type} {name}[] = {{{', '.join(str(v) for v in values)}}};"


def c_source(table: ScheduleTable, exits: int, name: str = "bisup_schedule") -> str:
    """The table as C for ``bisup_exit_lookup`` (``bisup_exits.h``), and per entry its depth, relay, split and
    ``exits`` thresholds (2^40: never), so the firmware runs the entry the lookup names."""
    axes = [("uint32_t", "bandwidths", [int(v) for v in table.bandwidths_bps]),
            ("uint32_t", "rtts", [round(v * 1e6) for v in table.rtts_s]),
            ("uint32_t", "losses", [round(v * 1e6) for v in table.losses]),
            ("uint8_t", "loads", list(table.loads)), ("uint8_t", "cells", table.cells)]
    never = 2**40
    rows = [", ".join(str(t) for t in (list(e.thresholds) + [never] * exits)[:exits]) for e in table.entries]
    lines = ['#include "bisup_exits.h"', *(_array(t, f"{name}_{axis}", v) for t, axis, v in axes),
             f"const uint8_t {name}_depth[] = {{{', '.join(str(e.depth) for e in table.entries)}}};",
             f"const uint8_t {name}_relay[] = {{{', '.join(str(int(e.relay)) for e in table.entries)}}};",
             f"const uint8_t {name}_split[] = {{{', '.join(str(e.split) for e in table.entries)}}};",
             f"const int64_t {name}_thresholds[][{exits}] = {{{', '.join('{' + r + '}' for r in rows)}}};",
             f"const bisup_exit_table {name} = {{{name}_bandwidths, {name}_rtts, {name}_losses, {name}_loads, "
             f"{', '.join(str(n) for n in table.shape)}, {name}_cells, {table.safe}}};"]
    return "\n".join(lines) + "\n"
