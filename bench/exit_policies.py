"""Learned (EENet) vs per-exit thresholds (SPINN) at equal budgets on hard-digits (issue 21, items 1 and 2).

    python bench/exit_policies.py [--seed 0] [--json]

Runs ``bisup demo --exits --task hard-digits`` (backbone trained once and cached, exits, int8 stages,
policies calibrated on 5,385 validation inputs, 5,400 test inputs from 360 unseen originals, every one also
through the deployed path), then sweeps the budgets: for each (device MACs, remote calls) pair both
policies are chosen on the validation split under the same budgets and applied to the test split with the
exact integer rule. Per pair: each policy's accuracy, remote calls and device MACs with 95% intervals, and
the learned-minus-thresholds margin with its paired 95% interval (a cluster bootstrap over originals).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bisup.calibration import exits as policy  # noqa: E402
from bisup.calibration import intervals  # noqa: E402
from bisup.examples import demo_exits  # noqa: E402
from bisup.export import exits as staged  # noqa: E402
from bisup.firmware_bridge.exits_model import StagedModel  # noqa: E402

BUDGETS = ((0.3, 0.2), (0.4, 0.2), (0.4, 0.3), (0.5, 0.3), (0.6, 0.4))  # (device fraction, remote fraction)


def sweep(out: Path, groups: np.ndarray, max_reject: float) -> list[dict]:
    """Both policies at every pair of ``BUDGETS``, chosen on val.npz and measured on test.npz."""
    model = StagedModel(out)
    tails = staged.open_tails(out, len(model))
    val, thresholds = policy.labelled_outcomes(model, tails, out / "val.npz", max_reject, "max-softmax",
                                               lambda message: None)
    test = demo_exits._outcomes(model, tails, out / "test.npz", thresholds)
    rows = []
    for device, remote in BUDGETS:
        results = {kind: policy.apply(policy.search(val, kind, device * val.cumulative_macs[-1], remote)[0], test)
                   for kind in ("thresholds", "learned")}
        figures = {kind: demo_exits.row(kind, r, test.y, groups) for kind, r in results.items()}
        margin = intervals.paired_margin(results["learned"].labels == test.y,
                                         results["thresholds"].labels == test.y, groups)
        rows.append({"max_device_fraction": device, "max_remote_fraction": remote, "policies": figures,
                     "margin": margin})
    return rows


def _line(r: dict) -> str:
    cells = []
    for kind in ("thresholds", "learned"):
        f = r["policies"][kind]
        low, high = f["ci95"]["accuracy"]
        cells.append(f"{100 * f['accuracy']:6.2f} [{100 * low:.2f}, {100 * high:.2f}] "
                     f"{100 * f['remote_fraction']:5.1f}% {f['mean_device_macs']:9,.0f}")
    m = r["margin"]
    return (f"{r['max_device_fraction']:>6.0%} {r['max_remote_fraction']:>6.0%}  " + "  ".join(cells)
            + f"  {100 * m['margin']:+.2f} [{100 * m['ci95'][0]:+.2f}, {100 * m['ci95'][1]:+.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    args = parser.parse_args()
    start = time.perf_counter()
    demo = demo_exits.run(seed=args.seed, task_name="hard-digits", progress=lambda m: print(f"bench: {m}",
                                                                                             file=sys.stderr))
    groups = demo_exits.splits("hard-digits", args.seed)["test"][2]
    rows = sweep(Path(demo["out_dir"]), groups, 0.005)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"sizes": demo["sizes"], "deployed": demo["deployed"], "sweep": rows, "seconds": seconds},
                         indent=2))
        return
    print(f"hard-digits: {demo['sizes']['val']:,} validation, {demo['sizes']['test']:,} test inputs "
          f"({demo['sizes']['test_originals']} originals); accuracy [95% CI], remote calls, mean device MACs")
    print(f"{'device':>6s} {'remote':>6s}  {'per-exit thresholds':37s}  {'learned (EENet)':37s}  "
          "learned - thresholds, pp [paired 95% CI]")
    for r in rows:
        print(_line(r))
    agree = min(demo["deployed"]["agreement"].values())
    print(f"rows: the exact integer rule on all test inputs; {demo['deployed']['inputs']:,} of them also through "
          f"the deployed path (virtual device, pty, bridge): {100 * agree:.1f} % identical. {seconds:.0f} s.")


if __name__ == "__main__":
    main()
