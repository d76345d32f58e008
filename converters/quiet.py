"""Capture what native libraries and chatty wrappers print, so it neither breaks output nor is lost.

TensorFlow's converter prints from C++ straight to the file descriptor, and the TFLM Python wrapper
prints on every construction; either would corrupt ``--json`` output. Captured text is kept so that
a failure can quote it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator


class Captured:
    """Text captured from a stream, readable once the block has exited."""

    text: str = ""


@contextlib.contextmanager
def capture_fd(fd: int) -> Iterator[Captured]:
    """Redirect file descriptor ``fd`` (1 or 2) and Python's matching stream into a buffer."""
    name = "stdout" if fd == 1 else "stderr"
    getattr(sys, name).flush()
    saved = os.dup(fd)
    captured = Captured()
    python_level = io.StringIO()
    redirect = contextlib.redirect_stdout if fd == 1 else contextlib.redirect_stderr
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            with redirect(python_level):
                yield captured
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode(errors="replace") + python_level.getvalue()
