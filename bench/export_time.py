"""Wall time of `bisup export` per step, per model, quiet and beside CPU burners (issue 18, item 4).

Each model NAME in --models is DIR/NAME.keras with DIR/NAME_calib.npz (the MLPerf Tiny set: kws, vww, ic).
The step times come from the progress lines the export prints on stderr (each step runs until the next
line); CPU is the export's user + system seconds, children included, which the machine's load inflates
far less than wall time. `--burners N` runs N `while True: pass` processes during the exports and stops
them after. `--python` names the interpreter, so an older install can be timed in the same run.
Steps print as wall/CPU seconds; the last step's CPU is unknown (the process has ended), hence 0.

    python bench/export_time.py --models kws,vww,ic --dir /tmp/mlperf --board mps2-an386
    python bench/export_time.py --burners 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TARGET_QUIET_S = 10.0  # issue 18: each MLPerf Tiny model on a quiet two-core machine, and 2x that under load


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Runs `bisup` with each progress line prefixed by the process's CPU seconds so far (threads included), so that
# a step's CPU can be told apart from the wall time a busy machine stretches. It wraps sys.stderr rather than
# importing the exporter, which would load TensorFlow before the command forks.
WITH_CPU = """import sys, time
from bisup.cli import guard
class Stamped:
    def __init__(self, stream): self.stream = stream
    def write(self, text):
        stamp = f"bisup: [cpu {time.process_time():.2f}] "
        return self.stream.write(text.replace("bisup: ", stamp, 1) if text.startswith("bisup: ") else text)
    def __getattr__(self, name): return getattr(self.stream, name)
sys.stderr = Stamped(sys.stderr)
guard.main(sys.argv[1:])
"""


def _steps(marks: list[tuple[str, float, float]]) -> dict:
    """Each step's wall and CPU seconds: from its progress line to the next one."""
    return {name: {"wall_s": round(marks[k + 1][1] - wall, 2), "cpu_s": round(marks[k + 1][2] - cpu, 2)}
            for k, (name, wall, cpu) in enumerate(marks[:-1])}


def export_once(python: str, model: Path, calib: Path, board: str, out: Path) -> dict:
    """One export: total wall and CPU seconds (children included), and wall and CPU seconds per step, each
    named by the first words of its progress line (CPU from the export process itself, without its children)."""
    argv = [python, "-c", WITH_CPU, "export", str(model), "--calib", str(calib), "--board", board, "--out",
            str(out), "--json"]
    cpu, start = _cpu_of_children(), time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marks = [("start", 0.0, 0.0)]
    for line in process.stderr:
        if line.startswith("bisup: [cpu "):
            words = line.split()
            marks.append((" ".join(words[3:5]), time.perf_counter() - start, float(words[2].rstrip("]"))))
    code = process.wait()
    wall, used = time.perf_counter() - start, _cpu_of_children() - cpu
    marks.append(("end", wall, marks[-1][2]))
    return {"model": model.stem, "exit_code": code, "wall_s": round(wall, 2), "cpu_s": round(used, 2),
            "steps": _steps(marks)}


@contextmanager
def burners(count: int) -> Iterator[None]:
    """``count`` CPU-bound processes for the duration of the block; each is ended by its own pid."""
    started = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in started:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="kws,vww,ic")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mlperf"))
    parser.add_argument("--board", default="mps2-an386")
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose bisup is timed")
    parser.add_argument("--burners", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as work, burners(args.burners):
        for name in args.models.split(","):
            load = os.getloadavg()[0]
            run = export_once(args.python, args.dir / f"{name}.keras", args.dir / f"{name}_calib.npz", args.board,
                              Path(work) / name)
            runs.append(run | {"load_1min_before": round(load, 2), "burners": args.burners})
            if not args.json:
                print(f"{name:4s} wall {run['wall_s']:6.2f} s  cpu {run['cpu_s']:6.2f} s  load {load:5.2f}  "
                      f"exit {run['exit_code']}  target {TARGET_QUIET_S * (2 if args.burners else 1):g} s", flush=True)
                print("     " + ", ".join(f"{step} {t['wall_s']:g}/{t['cpu_s']:g}" for step, t in run["steps"].items()),
                      flush=True)
    if args.json:
        print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
