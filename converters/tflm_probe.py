"""Subprocess worker: can the TFLM interpreter allocate and invoke a model with a given arena?

Run as ``python -m bisup.converters.tflm_probe MODEL ARENA_BYTES`` for one probe: it prints ``OK`` and
exits 0 on success, prints the reason and exits 1 on failure. Run as ``python -m bisup.converters.tflm_probe
MODEL`` (or ``-``, with MODEL's path as the first line of stdin) to serve many probes: it reads one arena
size per line on stdin and answers one line each (``OK`` or the reason), so a search pays Python's and
tflite-micro's start-up once rather than once per probe. A line
``run ARENA_BYTES OUTPUTS FOLDER`` runs every int8 row of ``FOLDER/inputs.npy`` through the model (the export's
oracle evaluation, right after its arena search and beside the exporter's own work) and saves the ``OUTPUTS``
outputs to ``FOLDER/outputs.npz`` as ``arr_0``, ``arr_1``, ... by output position, one flattened row per input.
Either way it must run in its own process: with some undersized arenas TFLM dies with SIGSEGV instead
of raising, which the caller counts as a failure (and starts a new worker for the next probe).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bisup.converters.quiet import capture_fd

OK = "OK"
RUN_INPUTS, RUN_OUTPUTS = "inputs.npy", "outputs.npz"


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


def run(model: bytes, arena_bytes: int, outputs: int, folder: Path) -> str:
    """Every row of ``folder/inputs.npy`` through TFLM, one invoke each, outputs saved to ``folder/outputs.npz``;
    the reason on failure, empty on success (the same sample-by-sample run as ``runners.TflmRunner``)."""
    from tflite_micro.python.tflite_micro import runtime

    with capture_fd(1):
        try:
            interpreter = runtime.Interpreter.from_bytes(model, arena_size=arena_bytes)
            rows: list[list[np.ndarray]] = [[] for _ in range(outputs)]
            for sample in np.load(folder / RUN_INPUTS):
                interpreter.set_input(sample[None], 0)
                interpreter.invoke()
                for position, values in enumerate(rows):
                    values.append(np.array(interpreter.get_output(position)).reshape(-1))
        except (RuntimeError, ValueError) as exc:
            return str(exc) or type(exc).__name__
    np.savez(folder / RUN_OUTPUTS, *(np.stack(values) for values in rows))
    return ""


def _request(model: bytes, line: str) -> str:
    """The reason for one protocol line (an arena size, or a ``run`` request); empty on success."""
    words = line.split(maxsplit=3)  # a run's folder may hold spaces
    if words[0] == "run":
        return run(model, int(words[1]), int(words[2]), Path(words[3].rstrip("\n")))
    return probe(model, int(words[0]))


def _answer(reason: str) -> str:
    """One protocol line: ``OK`` or the reason, newlines folded so that one probe is one line."""
    return " ".join(reason.split()) if reason else OK


def serve(model: bytes) -> int:
    """Answer arena sizes (and ``run`` requests) read from stdin, one line each, until stdin closes."""
    for line in sys.stdin:
        print(_answer(_request(model, line)), flush=True)
    return 0


def _model_path(argument: str) -> str:
    """The model's path: the argument, or for ``-`` (a worker started early, see ``arena.Prober.start``) the
    first line on stdin, read after tflite-micro has loaded; empty when stdin closes first."""
    if argument != "-":
        return argument
    from tflite_micro.python.tflite_micro import runtime  # noqa: F401 - loaded while the exporter converts

    return sys.stdin.readline().rstrip("\n")


def main(argv: list[str]) -> int:
    path = _model_path(argv[0])
    if not path:
        return 0
    with open(path, "rb") as handle:
        model = handle.read()
    if len(argv) == 1:
        return serve(model)
    reason = probe(model, int(argv[1]))
    print(_answer(reason))
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
