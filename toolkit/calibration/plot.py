"""``tradeoff.png``: what each local threshold buys, so a user sees the budget at a glance.

Panels: accuracy and remote calls against the threshold; system accuracy against the remote
fraction, with local-only and remote-only marked and the chosen point labelled (legends sit below
the axes, so nothing covers the label); and in risk mode, the observed error of locally accepted
answers next to the certified bound and the target.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display on boards' build hosts or CI
import matplotlib.pyplot as plt  # noqa: E402

from bisup.converters.artefacts import trusted  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from bisup.calibration.single import Calibration
    from bisup.calibration.thresholds import Point


def _by_threshold(axis: Axes, calibration: Calibration, points: list[Point], x: list[float]) -> None:
    axis.plot(x, [p.accuracy for p in points], color="tab:blue", label="system accuracy")
    axis.axhline(calibration.baselines["remote_only_accuracy"], color="tab:blue", ls=":", lw=1,
                 label="remote-only accuracy")
    axis.axhline(calibration.baselines["local_only_accuracy"], color="tab:gray", ls=":", lw=1,
                 label="local-only accuracy")
    axis.set_xlabel(f"local confidence threshold ({calibration.local_supervisor}, dequantized int8)")
    axis.set_ylabel("accuracy")
    fractions = axis.twinx()
    fractions.plot(x, [p.remote_fraction for p in points], color="tab:orange", label="remote calls")
    fractions.plot(x, [p.rejected_fraction for p in points], color="tab:red", lw=1, label="rejected")
    fractions.set_ylabel("fraction of inputs")
    fractions.set_ylim(0, 1)
    chosen = calibration.chosen
    if chosen.threshold_int8 < 128:
        axis.axvline(calibration.local.threshold_float(chosen.threshold_int8), color="black", lw=1)
    handles = axis.get_legend_handles_labels()[0] + fractions.get_legend_handles_labels()[0]
    axis.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=7)
    axis.set_title("against the local threshold", fontsize=9)


def _by_remote_fraction(axis: Axes, calibration: Calibration, points: list[Point]) -> str:
    baselines, chosen = calibration.baselines, calibration.chosen
    axis.plot([p.remote_fraction for p in points], [p.accuracy for p in points], color="tab:blue",
              label="system (every threshold)")
    axis.plot([0.0], [baselines["local_only_accuracy"]], "s", color="tab:gray", label="local-only")
    axis.plot([1.0], [baselines["remote_only_accuracy"]], "D", color="tab:blue", label="remote-only")
    axis.plot([chosen.remote_fraction], [chosen.accuracy], "o", color="black")
    label = f"chosen: int8 {chosen.threshold_int8}\nacc {chosen.accuracy:.3f}, remote {chosen.remote_fraction:.0%}"
    # The label goes to the side and the height with room: left or right of the point, above it when it
    # sits in the lower half of the axis (where the x label would cover it), below otherwise.
    low, high = axis.get_ylim()
    right_half, lower_half = chosen.remote_fraction > 0.5, chosen.accuracy < (low + high) / 2
    axis.annotate(label, (chosen.remote_fraction, chosen.accuracy), textcoords="offset points",
                  xytext=(-14 if right_half else 14, 22 if lower_half else -34), ha="right" if right_half else "left",
                  fontsize=8, arrowprops={"arrowstyle": "-", "lw": 0.6},
                  bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
    axis.set_xlabel("remote fraction")
    axis.set_ylabel("system accuracy")
    axis.set_xlim(-0.03, 1.03)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=7)
    axis.set_title("accuracy against remote calls", fontsize=9)
    return label


def _risk(axis: Axes, calibration: Calibration, points: list[Point], x: list[float]) -> None:
    """Observed error of locally accepted answers, its certified (Clopper-Pearson) bound, and the target."""
    from bisup.calibration.thresholds import clopper_pearson_upper

    o, mode = calibration.outcomes, calibration.mode
    right = o.local_pred == o.y
    observed, bound = [], []
    for p in points:
        accepted = trusted(o.confidence_int8, p.threshold_int8)
        errors, count = int((~right[accepted]).sum()), int(accepted.sum())
        observed.append(errors / count if count else np.nan)
        bound.append(clopper_pearson_upper(errors, count, mode.risk_delta))
    axis.plot(x, observed, color="tab:green", label="observed local error")
    axis.plot(x, bound, color="tab:purple", ls="--", label=f"certified bound ({1 - mode.risk_delta:.0%})")
    axis.axhline(mode.value, color="black", ls=":", lw=1, label=f"target {mode.value:.1%}")
    axis.set_ylim(0, min(1.0, max(4 * mode.value, 0.05)))
    axis.set_xlabel("local confidence threshold")
    axis.set_ylabel("error of local answers")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=7)
    axis.set_title("risk: certified against observed", fontsize=9)


def tradeoff(calibration: Calibration, path: Path) -> dict:
    """Draw ``tradeoff.png``; return what was drawn (panel titles and the chosen point's label)."""
    points = [p for p in calibration.points if p.threshold_int8 < 128]
    x = [calibration.local.threshold_float(p.threshold_int8) for p in points]
    risk = calibration.mode.kind == "risk"
    fig, axes = plt.subplots(1, 3 if risk else 2, figsize=(15 if risk else 11, 4.8), dpi=110)
    _by_threshold(axes[0], calibration, points, x)
    label = _by_remote_fraction(axes[1], calibration, points)
    if risk:
        _risk(axes[2], calibration, points, x)
    fig.suptitle("BiSupervised trade-off on the validation set")
    fig.tight_layout()
    fig.savefig(path)
    titles = [axis.get_title() for axis in axes]
    plt.close(fig)
    return {"panels": titles, "chosen_label": label}
