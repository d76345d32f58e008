"""The ``bisup`` entry point: batch commands run in a forked child, so a crash in native code is one line.

TensorFlow's converter and the TFLM interpreter are C++; on some models they die with SIGSEGV or
SIGABRT, which no Python ``except`` can catch, and the shell then prints only "Segmentation fault".
The parent forks before anything heavy is imported (no threads exist yet, so the fork is safe),
waits, and turns a child killed by such a signal into one ``Error:`` line naming the signal and the
step it died in (the last progress line the child printed). Long-running services (bridge, broker,
device) are not forked: they handle their own signals.

Signals: SIGTERM and SIGHUP sent to the parent are passed on to the child; Ctrl-C reaches the child
directly from the terminal (same process group), so the parent ignores SIGINT rather than deliver it
twice. In the child SIGTERM and SIGHUP unwind the stack as Ctrl-C does, so every ``finally`` runs: an
emulated board's QEMU is stopped and temporary folders are removed rather than left behind when a CI job
or ``timeout`` ends ``bisup hil``; the exit code stays 128 + the signal. The child leaves with ``os._exit``
once the command is done (see ``_leave``). Set ``BISUP_NO_FORK=1`` to run in one process (e.g. under a
debugger).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

GUARDED = frozenset({"export", "exits", "calibrate", "retrain", "demo", "hil", "digits", "bundle"})
EXIT_CRASH = 70  # EX_SOFTWARE, as for an internal error
_USER_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL}


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def crash_line(command: str, signum: int) -> str:
    """What a user reads when the child died of ``signum``."""
    name = signal.Signals(signum).name
    return (f"Error: bisup {command} crashed in native code ({name}) during the last step printed above; this is a "
            "fault in TensorFlow's converter or the TFLM interpreter on this model, not something bisup can catch "
            "in Python. Simplify or replace the layer that step names, or report it with the model "
            "(BISUP_DEBUG=1 adds a Python stack dump).")


_PASSED_ON = {signal.SIGTERM, signal.SIGHUP}


def _wait(pid: int) -> int:
    """The child's status; SIGTERM and SIGHUP are passed on, SIGINT reaches it from the terminal. They were
    blocked over the fork (``main``), so one sent before this point waits for the handler instead of killing
    the parent and leaving the child running."""
    forward = lambda signum, frame: os.kill(pid, signum)  # noqa: E731
    for signum in _PASSED_ON:
        signal.signal(signum, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)
    return os.waitpid(pid, 0)[1]


def _unwind(signum: int, frame: object) -> NoReturn:
    """The child's SIGTERM and SIGHUP: leave through the stack, as Ctrl-C's KeyboardInterrupt does."""
    raise SystemExit(128 + signum)


def _run(cli: Callable[..., None], args: list[str]) -> int:
    """The command's exit code (click ends every command with SystemExit); a message given as the code is
    printed, as the interpreter would."""
    try:
        cli(args=args, prog_name="bisup")
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    return 0


def _leave(code: int) -> NoReturn:
    """End the child without the interpreter's teardown. With TensorFlow loaded, unloading its modules and
    collecting their objects takes 4-6 s on a busy machine after the work is done and the files are written.
    What teardown does that matters still happens: non-daemon threads are joined, atexit handlers (temporary
    files, logging) run and the standard streams are flushed."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``bisup`` with ``argv`` (default: the command line), forking for the batch commands."""
    from bisup.cli import main as cli

    args = list(sys.argv[1:] if argv is None else argv)
    command = _command(args)
    if command not in GUARDED or os.environ.get("BISUP_NO_FORK") or not hasattr(os, "fork"):
        cli(args=args, prog_name="bisup")
        return
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, _PASSED_ON)  # until each side has its handlers
    pid = os.fork()
    if pid == 0:
        if os.environ.get("BISUP_DEBUG"):
            import faulthandler

            faulthandler.enable()
        for signum in _PASSED_ON:
            signal.signal(signum, _unwind)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)
        _leave(_run(cli, args))
    status = _wait(pid)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum not in _USER_SIGNALS:
            print(crash_line(command, signum), file=sys.stderr)
            sys.exit(EXIT_CRASH)
        sys.exit(128 + signum)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
