"""The shared check for CLI failures: one ``Error:`` line, a non-zero exit, never a traceback."""

from __future__ import annotations


def error_line(result) -> str:
    """The single ``Error:`` line of a failed click invocation (asserts there is exactly one)."""
    assert result.exit_code != 0
    assert "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]
