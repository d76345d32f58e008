"""``link.png``: what the link did over time and what the device did about it, one input at a time.

Three panels on the schedule's time axis: the link's bandwidth (log scale, outages shaded), the action the device
took for each input (an exit, a relay of the input or of a cut's activation, or continuing locally after a relay
failed), and each input's latency against the objective when one is given. Outages are shaded on every panel so
that a cluster of slow answers lines up with its cause.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: no display on build hosts or CI
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from bisup.examples.demo_link import Step
    from bisup.firmware_bridge.link_schedule import LinkSchedule


def _bandwidth(axis: Axes, schedule: LinkSchedule, stop_s: float) -> None:
    """The schedule as steps; after its ``end`` (dotted) the last phase goes on, as the emulator keeps it."""
    times, rates = [], []
    for start, stop, phase in schedule.spans():
        stop = min(stop, stop_s)
        times += [start, stop]
        rates += [phase.bandwidth_bps or float("nan")] * 2
    axis.plot(times, rates, color="tab:blue", lw=1.5)
    if schedule.end_s < stop_s:
        axis.plot([schedule.end_s, stop_s], [rates[-1]] * 2, color="tab:blue", lw=1, ls=":")
        axis.axvline(schedule.end_s, color="gray", lw=0.8, ls=":")
    axis.set_yscale("log")
    axis.set_ylabel("bandwidth (bit/s)")


def _outages(axes: list[Axes], schedule: LinkSchedule, stop_s: float) -> None:
    for start, stop, phase in schedule.spans():
        if phase.outage:
            stop = stop_s if phase is schedule.phases[-1] else min(stop, stop_s)  # the last phase goes on
            for axis in axes:
                axis.axvspan(start, stop, color="tab:red", alpha=0.12, lw=0)


def _actions(axis: Axes, steps: list[Step]) -> None:
    names = sorted({s.action for s in steps}, key=lambda a: (a.startswith("local"), a.startswith("relay"), a))
    rows = {name: i for i, name in enumerate(names)}
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    axis.scatter([s.t_s for s in steps], [rows[s.action] for s in steps], c=[colours[s.action] for s in steps],
                 s=8, marker="|")
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_ylim(-0.5, len(names) - 0.5)
    axis.set_ylabel("action")


def _latency(axis: Axes, steps: list[Step], objective_ms: float | None) -> None:
    axis.scatter([s.t_s for s in steps], [max(s.latency_ms, 1e-3) for s in steps], s=6, color="black",
                 label="latency per input")
    if objective_ms is not None:
        axis.axhline(objective_ms, color="tab:orange", ls="--", lw=1, label=f"objective {objective_ms:g} ms")
        axis.legend(loc="upper right", fontsize=7)
    axis.set_yscale("log")
    axis.set_ylabel("latency (ms of link time)")
    axis.set_xlabel("link time (s)")


def plot(schedule: LinkSchedule, steps: list[Step], objective_ms: float | None, path: Path) -> Path:
    """Write the three panels to ``path`` (PNG)."""
    stop_s = max([s.t_s for s in steps] + [schedule.end_s if schedule.end_s != float("inf") else 1.0])
    figure, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True, height_ratios=(1, 1, 1.4))
    _bandwidth(axes[0], schedule, stop_s)
    _actions(axes[1], steps)
    _latency(axes[2], steps, objective_ms)
    _outages(list(axes), schedule, stop_s)
    axes[0].set_xlim(0, stop_s)
    axes[0].set_title("the link over time, the device's action and its latency (outages shaded)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
