"""``tradeoff.png``: what each local threshold buys, so a user sees the budget at a glance."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on boards' build hosts or CI
import matplotlib.pyplot as plt  # noqa: E402


def tradeoff(calibration, path: Path) -> None:
    """System accuracy and remote-call fraction against the local threshold, chosen point marked."""
    points = [p for p in calibration.points if p.threshold_int8 < 128]
    local = calibration.local
    x = [local.threshold_float(p.threshold_int8) for p in points]
    chosen = calibration.chosen
    fig, acc_axis = plt.subplots(figsize=(8, 4.5), dpi=110)
    acc_axis.plot(x, [p.accuracy for p in points], color="tab:blue", label="system accuracy")
    acc_axis.axhline(calibration.baselines["remote_only_accuracy"], color="tab:blue", ls=":", lw=1,
                     label="remote-only accuracy")
    acc_axis.axhline(calibration.baselines["local_only_accuracy"], color="tab:gray", ls=":", lw=1,
                     label="local-only accuracy")
    acc_axis.set_xlabel(f"local confidence threshold ({calibration.local_supervisor}, dequantized int8)")
    acc_axis.set_ylabel("accuracy")
    frac_axis = acc_axis.twinx()
    frac_axis.plot(x, [p.remote_fraction for p in points], color="tab:orange", label="remote calls")
    frac_axis.plot(x, [p.rejected_fraction for p in points], color="tab:red", lw=1, label="rejected")
    frac_axis.set_ylabel("fraction of inputs")
    frac_axis.set_ylim(0, 1)
    if chosen.threshold_int8 < 128:
        cx = local.threshold_float(chosen.threshold_int8)
        acc_axis.axvline(cx, color="black", lw=1)
        acc_axis.plot([cx], [chosen.accuracy], "o", color="black")
        acc_axis.annotate(
            f"chosen: int8 {chosen.threshold_int8}\nacc {chosen.accuracy:.3f}, remote {chosen.remote_fraction:.0%}",
            (cx, chosen.accuracy), textcoords="offset points", xytext=(8, -30), fontsize=8,
        )
    handles = acc_axis.get_legend_handles_labels()[0] + frac_axis.get_legend_handles_labels()[0]
    acc_axis.legend(handles=handles, loc="center right", fontsize=8)
    acc_axis.set_title("BiSupervised trade-off on the validation set")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
