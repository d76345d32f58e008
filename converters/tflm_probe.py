"""Subprocess worker: can the TFLM interpreter allocate and invoke a model with a given arena?

Run as ``python -m bisup.converters.tflm_probe MODEL ARENA_BYTES``. It prints ``OK`` and exits 0 on
success, prints the reason and exits 1 on failure. It must run in its own process: with some
undersized arenas TFLM dies with SIGSEGV instead of raising, which the caller counts as a failure.
"""

from __future__ import annotations

import sys

import numpy as np

from bisup.converters.quiet import capture_fd


def probe(model: bytes, arena_bytes: int) -> str:
    from tflite_micro.python.tflite_micro import runtime

    with capture_fd(1) as log:
        try:
            interpreter = runtime.Interpreter.from_bytes(model, arena_size=arena_bytes)
            details = interpreter.get_input_details(0)
            interpreter.set_input(np.zeros(details["shape"], dtype=details["dtype"]), 0)
            interpreter.invoke()
        except (RuntimeError, ValueError) as exc:
            reason = str(exc)
        else:
            reason = ""
    missing = [line.strip() for line in log.text.splitlines() if "Didn't find op" in line]
    return "; ".join(missing + [reason]) if reason else ""


def main(argv: list[str]) -> int:
    model_path, arena = argv[0], int(argv[1])
    with open(model_path, "rb") as handle:
        reason = probe(handle.read(), arena)
    print(reason if reason else "OK")
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
