"""Kernel objects compiled ahead (while the export loads TensorFlow) give the flash figures a full compile gives."""

from __future__ import annotations

import shutil

import pytest

from bisup.converters.engine import report

pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")

MODEL_C = """#include <stdint.h>
#include "bisup_kernels.h"
int bisup_model_infer(const int8_t *input, int8_t *output) { output[0] = input[0]; return 0; }
"""


@pytest.fixture
def out_dir(tmp_path):
    (tmp_path / "model_infer.c").write_text(MODEL_C)
    return tmp_path


def test_objects_compiled_ahead_are_taken_and_measure_the_same(out_dir):
    full = report.measure_flash(out_dir, "cortex-m4")
    report.compile_kernels_ahead("cortex-m4")
    assert ("cortex-m4", report.kernel_sources()[0]) in report._AHEAD
    assert report.measure_flash(out_dir, "cortex-m4") == full
    assert not [key for key in report._AHEAD if key[0] == "cortex-m4"]  # every kernel object was taken


def test_an_object_compiled_before_the_kernels_changed_is_not_taken(out_dir, monkeypatch):
    report.compile_kernels_ahead("cortex-m7")
    source = report.kernel_sources()[0]
    monkeypatch.setattr(report, "_kernel_text", lambda path: b"edited since")
    assert report._take_ahead("cortex-m7", source) is None
    monkeypatch.undo()
    assert report.measure_flash(out_dir, "cortex-m7")["flash_bytes"] > 0
