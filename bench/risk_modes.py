"""Risk procedures over 200 simulated validation draws of 5,000 (issue 13, figure: risk mode).

    python bench/risk_modes.py [--draws 200] [--n 5000]

For each population (tests/risk_simulation.py), target error and procedure: the share of draws
whose certified threshold's true risk exceeds the target (must be at most delta = 0.1), and the
mean coverage as a share of the best valid threshold's. Conformal risk control bounds a different
quantity (the expected accepted-and-wrong fraction of all inputs), so its "violations" column is
expected to be large; its column "E joint" must stay at or below the target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the simulation the tests use

from risk_simulation import KINDS, Population, simulate  # noqa: E402

from bisup.calibration.risk_control import PROCEDURES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    print(f"{'population':14s} {'target':>6s} {'best cov':>8s} {'procedure':22s} {'violations':>10s} "
          f"{'cov/best':>8s} {'none':>5s} {'E joint':>7s}")
    for kind in KINDS:
        population = Population.make(kind)
        for max_risk in (0.05, 0.10):
            for procedure in (*(p for p in PROCEDURES if p != "auto"), "conformal"):
                r = simulate(population, procedure, max_risk, 0.1, args.n, args.draws)
                print(f"{kind:14s} {max_risk:6.0%} {population.best_coverage(max_risk):8.1%} {procedure:22s} "
                      f"{r.violations:10.1%} {r.coverage_ratio:8.1%} {r.none:5.0%} {r.joint_risk:7.2%}", flush=True)


if __name__ == "__main__":
    main()
