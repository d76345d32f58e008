"""The link schedule: what the emulator and the scheduler's evaluation both read."""

from __future__ import annotations

import math

import pytest

from bisup.firmware_bridge.link_schedule import LinkSchedule, ScheduleError

SCHEDULE = """
# start  bandwidth  round-trip  loss
0s       2Mbps      20ms        0%
30s      20kbps     150ms       1%
1min     outage
75s      2kbps      600ms       5%   # LoRa-class
120s     end
"""


def test_phases_are_read_in_base_units():
    schedule = LinkSchedule.parse(SCHEDULE)
    first, second, outage, last = schedule.phases
    assert (first.bandwidth_bps, first.rtt_s, first.loss) == (2e6, 0.02, 0.0)
    assert (second.start_s, second.bandwidth_bps, second.loss) == (30.0, 2e4, 0.01)
    assert outage.start_s == 60.0 and outage.outage and not last.outage
    assert schedule.end_s == 120.0


def test_the_phase_in_force_and_its_transfer_time():
    schedule = LinkSchedule.parse(SCHEDULE)
    assert schedule.at(0.0) is schedule.phases[0] and schedule.at(29.999) is schedule.phases[0]
    assert schedule.at(30.0) is schedule.phases[1] and schedule.at(500.0) is schedule.phases[3]
    assert schedule.at(30.0).transfer_s(100, 25) == pytest.approx(0.15 + 125 * 8 / 2e4)
    assert math.isinf(schedule.at(61.0).transfer_s(1))
    assert [(a, b) for a, b, _ in schedule.spans()] == [(0, 30), (30, 60), (60, 75), (75, 120)]


@pytest.mark.parametrize(("text", "message"), [
    ("5s 1Mbps 1ms 0%", r"line 1 .*the first phase must start at 0s"),
    ("0s 1Mbps 1ms", r"line 1 .*expected bandwidth, round trip and loss"),
    ("0s 1Gbps 1ms 0%", r"line 1 .*'1Gbps' is not a bandwidth such as 20kbps"),
    ("0s 1Mbps 1ms 0%\n\n0s outage", r"line 3 .*not after the previous line"),
    ("0s 1Mbps 1ms 100%", r"line 1 .*write 'outage' instead"),
    ("0s 1Mbps 1ms 0%\n9s end\n10s outage", r"line 3 .*nothing may follow 'end'"),
    ("# only a comment", r"no phase"),
])
def test_a_bad_line_is_named(text, message):
    with pytest.raises(ScheduleError, match=message):
        LinkSchedule.parse(text)


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(ScheduleError, match="cannot read the link schedule .*missing.txt"):
        LinkSchedule.read(tmp_path / "missing.txt")
