"""A crash in native code (TensorFlow's converter, TFLM) ends as one Error line, never a bare signal.

The crash is real: the child dereferences NULL through ctypes, as a converter bug would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _guarded(body: str, command: str = "export") -> subprocess.Popen:
    """``bisup COMMAND`` through the guard, with the command's work replaced by ``body``."""
    script = textwrap.dedent(f"""
        import ctypes, sys, time
        import bisup.cli as cli
        def fake(args, prog_name):
            print("bisup: converting to full int8", file=sys.stderr, flush=True)
            {body}
        cli.main = fake
        from bisup.cli import guard as native_guard
        native_guard.main([{command!r}, "model.keras"])
    """)
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_segfault_in_a_batch_command_is_one_error_line():
    process = _guarded("ctypes.string_at(0)")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 70
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert errors == [line for line in stderr.splitlines() if "Error" in line]  # nothing else says error
    assert len(errors) == 1 and "bisup export crashed in native code (SIGSEGV)" in errors[0]
    assert stderr.splitlines()[0] == "bisup: converting to full int8"  # the step it died in stays on screen
    assert "Traceback" not in stderr


def test_an_abort_is_named_too():
    process = _guarded("import os; os.abort()", command="calibrate")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 70
    assert "bisup calibrate crashed in native code (SIGABRT)" in stderr


def test_sigterm_reaches_the_child_and_is_not_called_a_crash():
    process = _guarded("print('working', flush=True); time.sleep(60)")
    assert process.stdout.readline().strip() == "working"
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - start < 20, "the child outlived the parent's SIGTERM"
    assert process.returncode == 128 + signal.SIGTERM
    assert "Error" not in stderr


def test_sigterm_unwinds_the_child_so_its_cleanup_runs(tmp_path):
    """What ``bisup hil`` relies on to stop QEMU and remove its build folder when a CI job's timeout sends
    SIGTERM: the child's ``finally`` blocks run (a signal's default action would skip them)."""
    marker = tmp_path / "cleaned"
    process = _guarded(f"try:\n                print('working', flush=True)\n                time.sleep(60)\n"
                       f"            finally:\n                open({str(marker)!r}, 'w').close()")
    assert process.stdout.readline().strip() == "working"
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert marker.exists(), "the child died without running its finally blocks"


def test_exit_codes_pass_through():
    process = _guarded("sys.exit(3)")
    process.communicate(timeout=60)
    assert process.returncode == 3


def test_the_child_skips_teardown_but_not_what_must_finish():
    """The child ends with os._exit (TensorFlow's teardown takes seconds), after joining its threads, running
    atexit handlers (temporary files) and flushing: none of their output may be lost."""
    process = _guarded("import atexit, threading; atexit.register(print, 'atexit ran'); "
                       "threading.Thread(target=lambda: (time.sleep(0.5), print('thread done'))).start(); "
                       "print('unflushed', end=''); sys.exit(0)")
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert stdout == "unflushedthread done\natexit ran\n"


@pytest.mark.slow
def test_a_recurrent_layer_is_refused_by_name_before_the_converter_crashes(tmp_path):
    """An LSTM that is not unrolled kills TensorFlow's int8 converter with SIGSEGV; bisup names the layer and
    the fix before converting."""
    import keras
    import numpy as np

    inputs = keras.Input((10, 8))
    hidden = keras.layers.LSTM(16, name="lstm")(inputs)
    keras.Model(inputs, keras.layers.Dense(4, name="logits")(hidden)).save(tmp_path / "lstm.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(120, 10, 8)).astype(np.float32), y=rng.integers(0, 4, 120))
    done = subprocess.run([sys.executable, "-m", "bisup.cli", "export", str(tmp_path / "lstm.keras"), "--calib",
                           str(tmp_path / "calib.npz"), "--board", "nrf52840", "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert "layer 'lstm' (LSTM) is recurrent and not unrolled" in errors[0]
    assert "LSTM(..., unroll=True)" in errors[0]
