"""The arena search's worker also runs the TFLM oracle, and may start before the model exists (the export's path)."""

from __future__ import annotations

import numpy as np

from bisup.converters import arena, tflite_model
from bisup.converters.runners import TflmRunner, quantize


def test_the_worker_gives_the_minimum_and_tflms_outputs(converted, digits_example):
    info = tflite_model.read(converted.model)
    x_q = quantize(np.load(digits_example["holdout"])["x"][:40], info.inputs[0])
    outputs = max(info.output_positions.values()) + 1
    with arena.Prober().start() as early:
        minimum, rows = arena.minimum_arena_and_outputs(converted.model, x_q, outputs, early)
    assert minimum == converted.arena_bytes
    expected = TflmRunner(converted.model, info, arena.recommended(minimum)).run(x_q)
    for name, position in info.output_positions.items():
        assert np.array_equal(rows[position], expected[name])


def test_a_worker_started_early_and_never_used_ends_cleanly():
    prober = arena.Prober().start()
    worker = prober._worker
    prober.close()
    assert worker.returncode == 0
