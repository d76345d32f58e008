"""Start-up time of the commands a user runs most, against `python -c pass` in the same run.

Commands that need no model framework must not import TensorFlow (issue 10: under 1.5 s). `bridge`
is timed to its "serving" line, with the demo's remote as a float TFLite model (no Keras), serving
`loop://`. Each command runs ROUNDS times; the median is reported.

    python bench/startup.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_setup import demo_setup  # noqa: E402

ROUNDS = 5
LIMIT_S = 1.5


def _run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def _until_serving(argv: list[str]) -> float:
    """Seconds until the process prints its "serving" line on stderr; then it is stopped."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in process.stderr:
            if "serving" in line:
                return time.perf_counter() - start
        raise RuntimeError(f"{argv} ended without serving (exit {process.wait()})")
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    setup = demo_setup()
    remote = setup.float_remote()
    bisup = [sys.executable, "-m", "bisup.cli"]
    with tempfile.TemporaryDirectory() as folder:
        archive = Path(folder) / "demo.bisup"
        subprocess.run([*bisup, "bundle", str(setup.bundle.path), "--out", str(archive)], check=True,
                       capture_output=True)
        cases = {
            "python -c pass (baseline)": lambda: _run([sys.executable, "-c", "pass"]),
            "bisup --help": lambda: _run([*bisup, "--help"]),
            "bisup boards": lambda: _run([*bisup, "boards"]),
            "bisup bundle --verify": lambda: _run([*bisup, "bundle", "--verify", str(archive)]),
            "bisup flash --dry-run": lambda: _run([*bisup, "flash", str(archive), "--dry-run"]),
            "bisup bridge (to serving)": lambda: _until_serving([*bisup, "bridge", "--serial", "loop://", "--remote",
                                                                 str(remote), "--bundle", str(archive)]),
        }
        times = {name: statistics.median(case() for _ in range(ROUNDS)) for name, case in cases.items()}
    baseline = times["python -c pass (baseline)"]
    print(f"| command (median of {ROUNDS}) | seconds | vs `python -c pass` | under {LIMIT_S} s |")
    print("|---|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.3f} | {seconds / baseline:.1f}x | {'yes' if seconds < LIMIT_S else 'NO'} |")


if __name__ == "__main__":
    main()
