"""Subprocess worker: can the TFLM interpreter allocate and invoke a model with a given arena?

Run as ``python -m bisup.converters.tflm_probe MODEL ARENA_BYTES`` for one probe: it prints ``OK`` and
exits 0 on success, prints the reason and exits 1 on failure. Run as ``python -m bisup.converters.tflm_probe
MODEL`` to serve many probes: it reads one arena size per line on stdin and answers one line each (``OK``
or the reason), so a search pays Python's and tflite-micro's start-up once rather than once per probe.
Either way it must run in its own process: with some undersized arenas TFLM dies with SIGSEGV instead
of raising, which the caller counts as a failure (and starts a new worker for the next probe).
"""

from __future__ import annotations

import sys

import numpy as np

from bisup.converters.quiet import capture_fd

OK = "OK"


def probe(model: bytes, arena_bytes: int) -> str:
    """The reason TFLM cannot allocate and invoke ``model`` in ``arena_bytes``; empty when it can."""
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


def _answer(reason: str) -> str:
    """One protocol line: ``OK`` or the reason, newlines folded so that one probe is one line."""
    return " ".join(reason.split()) if reason else OK


def serve(model: bytes) -> int:
    """Answer arena sizes read from stdin, one line each, until stdin closes."""
    for line in sys.stdin:
        print(_answer(probe(model, int(line))), flush=True)
    return 0


def main(argv: list[str]) -> int:
    with open(argv[0], "rb") as handle:
        model = handle.read()
    if len(argv) == 1:
        return serve(model)
    reason = probe(model, int(argv[1]))
    print(_answer(reason))
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
