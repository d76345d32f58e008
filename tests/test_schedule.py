"""SPINN's run-time schedule (issue 21, item 4): the table calibration builds for a latency objective, the
device's link estimator and lookup, the bench's simulation, the wire additions, and C/Python agreement.

Everything runs on small synthetic outcomes: three exits that are right 70, 85 and 95 % of the time (more
often when confident), a remote that is right 99 % of the time.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bisup.calibration import schedule, schedule_sim
from bisup.calibration.exits import ExitOutcomes, PolicyError
from bisup.converters.artefacts import NEVER, Policy
from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.link_schedule import LinkSchedule
from bisup.firmware_bridge.schedule_table import Condition, LatencyModel, ScheduleTable, c_link, c_source
from bisup.firmware_bridge.scheduler import LinkEstimator, Scheduler

ROOT = Path(__file__).resolve().parents[1]
MODEL = LatencyModel(16e6)  # exits at 6.25, 31.25 and 62.5 ms
SLO_MS = 50.0
GRID = schedule.Grid((1e3, 1e4, 1e5, 1e6, 1e7), (0.01, 0.05, 0.2, 1.0), (0.0, 0.01, 0.05), (0, 3))


def _outcomes(n: int = 300, seed: int = 0) -> ExitOutcomes:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    rights = [rng.random(n) < a for a in (0.70, 0.85, 0.95)]
    labels = np.stack([np.where(r, y, (y + 1) % 10) for r in rights])
    confidence = np.stack([np.clip(rng.normal(np.where(r, 60, -20), 40), -128, 127) for r in rights]).astype(int)
    remote = np.where(rng.random(n) < 0.99, y, (y + 2) % 10)
    return ExitOutcomes(labels, confidence, [np.zeros((n, 10), int)] * 3, y, np.stack([remote] * 3),
                        np.ones((3, n), bool), [100_000, 500_000, 1_000_000], [64, 1024, 512])


BASE = Policy("thresholds", 2, [NEVER, 40], True, 0)


@pytest.fixture(scope="module")
def table() -> ScheduleTable:
    return schedule.build(_outcomes(), BASE, SLO_MS, MODEL, GRID)


def test_the_table_relays_on_a_fast_link_and_answers_locally_on_a_slow_one(table):
    fast, _ = table.lookup(Condition(5e6, 0.01))
    slow, in_range = table.lookup(Condition(2e3, 0.5))
    assert table.entries[fast].relay and table.entries[fast].accuracy > table.entries[slow].accuracy
    assert in_range and not table.entries[slow].relay
    assert table.entries[slow].p95_ms <= SLO_MS
    assert not table.entries[table.safe].relay and table.lookup(None) == (table.safe, False)


def test_the_lookup_is_conservative_and_off_the_grid_is_the_safe_entry(table):
    b = table.bandwidths_bps
    assert table.lookup(Condition(b[2] * 1.5, 0.01))[0] == table.lookup(Condition(b[2], 0.01))[0]  # the lower one
    assert table.lookup(Condition(999, 0.01)) == (table.safe, False)  # slower than calibrated
    assert table.lookup(Condition(1e6, 2.0)) == (table.safe, False)  # a longer round trip
    assert table.lookup(Condition(1e6, 0.01, loss=0.3)) == (table.safe, False)


def test_an_objective_below_the_cheapest_exit_names_the_smallest_feasible_one():
    with pytest.raises(PolicyError, match=r"--latency-slo-ms 5 .* the smallest feasible objective is 6.3 ms"):
        schedule.build(_outcomes(), BASE, 5.0, MODEL, GRID)
    local = schedule.build(_outcomes(), BASE, 7.0, MODEL, GRID)  # only exit 1 alone fits: every cell is local
    assert {local.entries[c].depth for c in local.cells} == {1}


def test_the_adaptive_device_keeps_p95_within_the_objective_where_the_static_one_does_not(table):
    link = LinkSchedule.parse("0s 5Mbps 8ms 0%\n20s 5kbps 150ms 1%\n40s outage\n50s 2Mbps 8ms 0%\n70s end")
    test = _outcomes(seed=1)
    adaptive = schedule_sim.run(schedule_sim.Device(test, MODEL, BASE, Scheduler(table, BASE, test.cumulative_macs)),
                                link, 0.2)
    static = schedule_sim.run(schedule_sim.Device(test, MODEL, BASE), link, 0.2)
    for start, stop, _ in link.spans():
        assert adaptive.figures(start, stop)["p95_ms"] <= SLO_MS, (start, adaptive.figures(start, stop))
    assert static.figures(20, 50)["p95_ms"] > SLO_MS  # the calibration-time policy misses on the slow link
    fast = adaptive.figures(0, 20)
    assert fast["remote_fraction"] > 0.5 and fast["accuracy"] > adaptive.figures(20, 40)["accuracy"]
    assert adaptive.figures(40, 50)["out_of_range"] > 0.7  # the outage, once a PING times out: counted


def test_the_estimator_follows_a_link_change_from_its_own_exchanges():
    e = LinkEstimator()
    for _ in range(4):
        e.exchange(28, 0.010 + 28 * 8 / 1e6)  # PINGs and relays on 1 Mbps, 10 ms
        e.exchange(107, 0.010 + 107 * 8 / 1e6)
    assert e.condition().bandwidth_bps == pytest.approx(1e6, rel=1e-3)
    assert e.condition().rtt_s == pytest.approx(0.010, rel=1e-3)
    for _ in range(6):
        e.exchange(28, 0.200 + 28 * 8 / 5e3)  # now 5 kbps, 200 ms
        e.exchange(107, 0.200 + 107 * 8 / 5e3)
    assert e.condition().bandwidth_bps == pytest.approx(5e3, rel=0.05)
    e.attempts(2, answered=False)  # a relay whose every attempt timed out
    assert e.condition() is None
    e.exchange(28, 0.2)
    assert e.condition() is not None and e.condition().loss > 0


def test_a_scheduled_device_says_how_often_it_was_off_the_grid_in_stats(table):
    from types import SimpleNamespace

    from bisup.firmware_bridge.exits_device import StagedDevice

    class Recorder:
        def __init__(self):
            self.sent = []

        def send(self, body: bytes) -> None:
            self.sent.append(p.decode(body))

        def receive(self, timeout_s: float) -> list:
            return []

    staged = SimpleNamespace(model_hash=bytes(32), table=SimpleNamespace(cumulative_macs=[1, 2, 3]))
    link = Recorder()
    device = StagedDevice(link, staged, Policy("thresholds", 2, [NEVER, 40], True, 0, schedule=table.to_json()),
                          timeout_s=0.01)
    device.choose()  # its PING goes unanswered: an outage, so the safe entry
    assert device.scheduler.current == table.safe
    device.send_stats()
    stats = link.sent[-1]
    assert isinstance(stats, p.Stats) and stats.out_of_range == 1
    plain = p.decode(p.encode(p.Stats(1, 5, 4, 1)))
    assert plain.out_of_range is None and len(p.encode(plain)) == p.HEADER.size + 12


def test_the_load_hint_rides_in_the_answer_flags_beside_rejected():
    body = p.encode(p.AnswerMsg(3, 1, 0.5, p.Source.REMOTE, True, 5))
    assert body[-1] == 0b1011  # bit 0 rejected, bits 1..3 the load
    assert p.decode(body).load == 5 and p.decode(body).rejected
    assert p.decode(p.encode(p.AnswerMsg(3, 1, 0.5, p.Source.REMOTE, load=99))).load == p.MAX_LOAD


def test_the_bridge_counts_the_requests_waiting_beside_one_into_its_load_level():
    from bisup.firmware_bridge.handler import RequestHandler

    handler = RequestHandler(relay=None, bundle=None)
    assert handler.load_level() == 0
    handler.waiting.append(lambda: 3)
    handler._inflight.update({("d", 0, 1, b""): None, ("d", 0, 2, b""): None})
    assert handler.load_level() == 4
    handler.waiting.append(lambda: 100)
    assert handler.load_level() == p.MAX_LOAD


def test_calibration_writes_the_table_into_policy_json_and_the_device_reads_it(tmp_path):
    chosen = schedule.attach({"learned": BASE}, _outcomes(), SLO_MS, MODEL, tmp_path, GRID)
    read = Policy.read(tmp_path / "policy.json")
    assert read == chosen["learned"] and read.depth == BASE.depth  # the static policy stays what it was
    scheduler = Scheduler.of(read, [100_000, 500_000, 1_000_000])
    assert scheduler.table.slo_ms == SLO_MS and Scheduler.of(BASE, [1, 2, 3]) is None


def _measurements(table: ScheduleTable, rng: np.random.Generator) -> list[Condition | None]:
    """Grid points exactly, between them, beyond both ends, and outages."""
    out: list[Condition | None] = [None]
    for _ in range(400):
        b = rng.choice([*table.bandwidths_bps, *rng.uniform(500, 2e7, 3)])
        r = rng.choice([*table.rtts_s, *rng.uniform(0.001, 1.5, 3)])
        loss = rng.choice([*table.losses, *rng.uniform(0, 0.1, 2)])
        out.append(Condition(float(b), float(r), float(loss), int(rng.integers(0, 5))))
    return out


def _c_program(table: ScheduleTable, main: Path, tmp_path: Path) -> Path:
    """``main`` built by the host's gcc with the C exit library and ``table`` as C (``bisup_schedule``)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (CI installs it)")
    c_dir = ROOT / "firmware_bridge" / "c"
    (tmp_path / "table.c").write_text(c_source(table, 3))
    exe = tmp_path / main.stem
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{c_dir}", str(c_dir / "bisup_exits.c"),
                    str(tmp_path / "table.c"), str(main), "-o", str(exe), "-lm"], check=True)
    return exe


def _run_c(exe: Path, lines: list[str]) -> list[str]:
    return subprocess.run([str(exe)], input="".join(f"{line}\n" for line in lines), capture_output=True, text=True,
                          check=True).stdout.splitlines()


@pytest.mark.toolchain
def test_the_c_device_picks_the_same_entry_as_python(table, tmp_path):
    (tmp_path / "main.c").write_text("""#include <stdio.h>
#include "bisup_exits.h"
extern const bisup_exit_table bisup_schedule;
int main(void) {
  unsigned o, b, r, l, d;
  while (scanf("%u %u %u %u %u", &o, &b, &r, &l, &d) == 5) {
    bisup_exit_link m = {o != 0, b, r, l, (uint8_t)d};
    bool in_range;
    unsigned entry = bisup_exit_lookup(&bisup_schedule, &m, &in_range);
    printf("%u %d\\n", entry, in_range);
  }
  return 0;
}
""")
    exe = _c_program(table, tmp_path / "main.c", tmp_path)
    measured = _measurements(table, np.random.default_rng(0))
    got = _run_c(exe, [" ".join(map(str, c_link(m))) for m in measured])
    expected = [f"{entry} {int(ok)}" for entry, ok in map(table.lookup, measured)]
    assert got == expected
    assert len({line for line in expected}) > 2  # the measurements reach several entries, in and off the grid


def _drive(scheduler: Scheduler, rng: np.random.Generator, steps: int) -> Iterator[str]:
    """Random exchanges, attempts, PINGs and relays on a link that changes every 20 steps, applied to the Python
    scheduler's estimator; yields each as a command for tests/c/estimator_harness.c (durations in whole µs)."""
    for step in range(steps):
        if step % 20 == 0:
            fast = rng.random() < 0.5  # where the table relays, else where it answers locally or is off the grid
            bps, rtt_s = (10 ** rng.uniform(5, 7.3), rng.uniform(0.001, 0.012)) if fast else (
                10 ** rng.uniform(2.7, 5), rng.uniform(0.01, 1.2))
        kind = rng.choice(["x", "a", "p", "r", "r"])
        answered = bool(rng.random() > 0.01)
        if kind == "x":
            size = int(rng.choice([28, 107, 1067]))
            us = round((rtt_s + size * 8 / bps) * rng.uniform(0.9, 1.1) * 1e6)
            scheduler.estimator.exchange(size, us / 1e6)
            yield f"x {size} {us}"
        elif kind == "a":
            lost = int(rng.choice([0] * 10 + [1, 2]))
            scheduler.estimator.attempts(lost, answered)
            yield f"a {lost} {int(answered)}"
        elif kind == "p":
            us = round((rtt_s + 28 * 8 / bps) * rng.uniform(0.9, 1.1) * 1e6)
            scheduler.pinged(us / 1e6 if answered else None)
            yield f"p {int(answered)} {us}"
        else:
            split, payload, load = int(rng.integers(0, 3)), int(rng.choice([64, 512, 1024])), int(rng.integers(0, 5))
            lost = int(rng.choice([0] * 20 + [1, 2]))
            server_us = round(scheduler.table.model.server_s(scheduler.tail_macs(split), 0) * 1e6)
            expected_s = rtt_s + (payload + 43) * 8 / bps + server_us * 1e-6 * (1 + load)
            us, timeout_us = round(expected_s * rng.uniform(0.9, 1.1) * 1e6), round(max(0.05, 2 * expected_s) * 1e6)
            scheduler.relayed(split, payload, us / 1e6 if answered else None, lost, timeout_us / 1e6, load)
            yield f"r {payload} {int(answered)} {us} {lost} {timeout_us} {server_us} {load}"


@pytest.mark.toolchain
def test_the_c_estimator_measures_what_the_python_one_does(table, tmp_path):
    exe = _c_program(table, ROOT / "tests" / "c" / "estimator_harness.c", tmp_path)
    rng = np.random.default_rng(1)
    entries = set()
    for _ in range(10):
        scheduler = Scheduler(table, BASE, [100_000, 500_000, 1_000_000])
        commands, expected = [], []
        for command in _drive(scheduler, rng, 150):
            commands.append(command)
            expected.append((scheduler.estimator.failing, scheduler.estimator.condition()))
        for line, (failing_py, condition) in zip(_run_c(exe, commands), expected, strict=True):
            bps, rtt_s, failing, *link, entry, in_range = line.split()
            assert float(failing) == pytest.approx(failing_py, rel=1e-9, abs=1e-12)
            assert (int(entry), bool(int(in_range))) == table.lookup(condition), (line, condition)
            entries.add(int(entry))
            c_measured, py_measured = list(map(int, link)), c_link(condition)
            assert c_measured[0] == py_measured[0] and c_measured[4] == py_measured[4]  # outage, load
            assert np.all(np.abs(np.subtract(c_measured, py_measured)) <= 1), (c_measured, py_measured)
            if condition is not None:
                assert float(bps) == pytest.approx(condition.bandwidth_bps, rel=1e-9)
                assert float(rtt_s) == pytest.approx(condition.rtt_s, rel=1e-9, abs=1e-12)
    assert len(entries) > 2  # the sequences reach several entries, in and off the grid
