"""`bisup hil --emulate BOARD` with default options, run again and again on a busy machine.

    python bench/hil_under_load.py --bundle vww.bisup --data hil8.npz --remote vww.keras \
        [--boards mps2-an386,mps2-an500,mps2-an505,mps3-an547] [--runs 20] [--burners 2] [--json out.json]

Each run is the command line a user types (a fresh process: building the firmware, booting QEMU, the host's
TFLM oracle, every input fed), with ``--burners`` busy Python loops (`while True: pass`) beside it for the
whole bench, so the waits' claim (they count the emulated board's own instructions, not host seconds) is
tested where it matters. Prints one line per run (pass or the error's first line, host seconds, the load
average) and the pass count per board; exits 1 unless every run passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BOARDS = ("mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547")
BISUP = Path(sys.executable).with_name("bisup")


@contextlib.contextmanager
def burners(count: int) -> Iterator[None]:
    """``count`` CPU-bound processes for as long as the block runs; each stopped by its own id."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


def one_run(board: str, args: argparse.Namespace) -> dict:
    """One `bisup hil --emulate` with default options: passed or why not, and its host seconds."""
    cmd = [str(BISUP), "hil", "--emulate", board, "--bundle", str(args.bundle), "--data", str(args.data),
           "--remote", args.remote]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.monotonic() - start
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    return {"board": board, "passed": done.returncode == 0, "seconds": round(seconds, 1),
            "load": round(os.getloadavg()[0], 2), "error": errors[-1] if errors else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--remote", required=True)
    parser.add_argument("--boards", default=",".join(BOARDS))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    with burners(args.burners):
        for k in range(args.runs):
            for board in args.boards.split(","):
                results.append(one_run(board, args))
                r = results[-1]
                print(f"run {k + 1:2d} {board:11s} {'pass' if r['passed'] else 'FAIL'} {r['seconds']:6.1f} s  "
                      f"load {r['load']:.2f}  {r['error'] or ''}", flush=True)
    for board in args.boards.split(","):
        mine = [r for r in results if r["board"] == board]
        times = sorted(r["seconds"] for r in mine)
        print(f"{board:11s} {sum(r['passed'] for r in mine)}/{len(mine)} passed; host seconds min "
              f"{times[0]:.1f}, median {times[len(times) // 2]:.1f}, max {times[-1]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
