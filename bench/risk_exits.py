"""Multi-exit risk mode over 200 simulated calibration draws of 5,000 (issue 21, figure: guaranteed early exits).

    python bench/risk_exits.py [--draws 200] [--n 5000] [--json]

For each population (tests/exits_risk_simulation.py), target and procedure: the share of draws whose
deployed threshold's true loss (early answer wrong where the last exit is right) exceeds the target,
with its 95% Clopper-Pearson interval (must be at most delta = 0.1), the mean early share as a share
of the best valid threshold's (chosen with hindsight on the population), and the share of draws that
deployed nothing. The last column adds a remote budget at its hardest (the true relay share of the
median unbudgeted choice) and gives the share of draws relaying more than it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the simulation the tests use

from exits_risk_simulation import KINDS, Population, hardest_budget, simulate  # noqa: E402

from bisup.calibration.exits_risk import RiskTarget  # noqa: E402
from bisup.calibration.risk_control import PROCEDURES  # noqa: E402

DELTA = 0.1


def row(population: Population, kind: str, target: RiskTarget, n: int, draws: int) -> dict:
    """One line of the figure: the promise, the early share kept, and the remote budget at its edge."""
    r = simulate(population, target, n, draws)
    budget = hardest_budget(population, target, n, 50)
    b = simulate(population, replace(target, max_remote_fraction=budget), n, draws)
    return {"population": kind, "max_risk": target.max_risk, "procedure": target.procedure,
            "best_early": population.best_early(target.max_risk), "violations": r.violations / draws,
            "violations_ci95": r.interval(r.violations), "early_ratio": r.early_ratio, "none": r.none,
            "remote_budget": budget, "budget_violations": b.budget_violations / draws,
            "budget_violations_ci95": b.interval(b.budget_violations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    args = parser.parse_args()
    rows = []
    if not args.json:
        print(f"{'population':12s} {'target':>6s} {'best early':>10s} {'procedure':21s} {'violations (95% CI)':>22s} "
              f"{'early/best':>10s} {'none':>5s} {'budget':>7s} {'over budget (95% CI)':>22s}")
    for kind in KINDS:
        population = Population.make(kind)
        for max_risk in (0.05, 0.10):
            for procedure in (p for p in PROCEDURES if p != "auto"):
                r = row(population, kind, RiskTarget(max_risk, DELTA, procedure), args.n, args.draws)
                rows.append(r)
                if not args.json:
                    lo, hi = r["violations_ci95"]
                    blo, bhi = r["budget_violations_ci95"]
                    print(f"{kind:12s} {max_risk:6.0%} {r['best_early']:10.1%} {procedure:21s} "
                          f"{r['violations']:6.1%} ({lo:5.1%}-{hi:5.1%}) {r['early_ratio']:10.1%} {r['none']:5.0%} "
                          f"{r['remote_budget']:7.1%} {r['budget_violations']:6.1%} ({blo:5.1%}-{bhi:5.1%})",
                          flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
