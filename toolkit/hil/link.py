"""``bisup hil --link SCHEDULE``: the link emulator between the board's UART and the host's bridge role.

The host is two things on one UART: the harness (FEED an input, read its REPORT and PROFILE) and the bridge the
board relays to (HELLO, INFER, SPLIT, ANSWER, STATS, ERROR). Only the bridge's traffic crosses the emulated link;
the harness's own frames pass untouched (``LinkEmulator``'s ``spare``), so a lost packet costs the board a resend,
never an input's report.

Time: the link runs on the host's clock (in real time), the board's waits on its own: under QEMU's
``-icount shift=0`` one instruction is a nanosecond of board time, and the board busy-waits for an answer, so
board time passes only as fast as QEMU executes. On a loaded host QEMU runs slower than real time and an emulated
second of link delay costs the board fewer than a second's worth of instructions: its resend timeout is reached
later (in host time) than the schedule assumes, and a slow phase looks faster to the board than it is. On a quiet
host QEMU runs near or above real time. On a real board (``--port``) both clocks are the host's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from bisup.firmware_bridge import framing
from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.link_emulator import End, LinkEmulator, SocketEnd, between
from bisup.hil.target import SocketPort

if TYPE_CHECKING:
    from bisup.firmware_bridge.link_schedule import LinkSchedule
    from bisup.hil.target import BoardLink

HARNESS = {p.MsgType.FEED, p.MsgType.REPORT, p.MsgType.PROFILE}


def lossy_wait(wait_s: float, request_timeout_s: float, retries: int) -> float:
    """How long a board may stay silent while an input is in flight over a lossy link: each resend of a relay is
    itself a frame the host sees only if the link carries it, so every try's timeout may pass unseen."""
    return max(wait_s, (retries + 1) * request_timeout_s)


def harness_frame(frame: bytes) -> bool:
    """A whole frame of the harness's own (FEED, REPORT, PROFILE), not the bridge's."""
    items = framing.FrameReader().feed(frame)
    return len(items) == 1 and isinstance(items[0], bytes) and len(items[0]) > 1 and items[0][1] in HARNESS


@contextlib.contextmanager
def through(link: BoardLink, schedule: LinkSchedule | None,
            progress: Callable[[str], None] = lambda message: None) -> Iterator[BoardLink]:
    """``link`` with its port replaced by the host side of the emulated link (``link`` itself without a schedule);
    the bytes carried each way are said at the end."""
    if schedule is None:
        yield link
        return
    sock = getattr(link.port, "sock", None)
    board = SocketEnd(sock) if sock is not None else End(link.port.fileno())
    emulator = LinkEmulator(schedule, "serial", spare=harness_frame)
    near, _ = between(emulator, board)
    try:
        with emulator:
            yield dataclasses.replace(link, port=SocketPort(near))
        progress("link: " + "; ".join(f"{way} {stats.delivered:,} B delivered, {stats.dropped:,} B dropped"
                                      for way, stats in emulator.totals().items()))
    finally:
        near.close()
