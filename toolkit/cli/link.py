"""``bisup link``: an emulated link between a device and the bridge, played from a schedule."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import click

from bisup.cli.common import main, progress

SCHEDULE_HELP = """\b
SCHEDULE: one phase a line, from its start time on; '#' starts a comment:
    # start  bandwidth  round-trip  loss
    0s       2Mbps      20ms        0%
    30s      20kbps     150ms       1%
    60s      outage
    75s      2kbps      600ms       5%
    120s     end
Times in ms, s or min; bandwidth in bps, kbps or Mbps (bits per second); loss a percentage.
Without an 'end' line the last phase lasts for ever (after 'end' it goes on too)."""


@main.command(epilog=SCHEDULE_HELP)
@click.argument("schedule", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--serial", "device_port",
              help="Serial: the device's port (a device path such as /dev/ttyUSB0), or `pty` to make one a "
                   "`bisup device --serial PATH` opens. The bridge side is always a new pty, printed at start.")
@click.option("--mqtt", "broker_url", help="MQTT: the broker behind the proxy (mqtt://host:port); devices connect "
                                          "to --listen instead, bridges to the broker directly.")
@click.option("--listen", default="127.0.0.1:0", show_default=True,
              help="--mqtt: where the proxy listens (HOST:PORT; port 0: any free one, printed at start).")
@click.option("--baud", default=921600, show_default=True, help="--serial: the device port's baud rate.")
@click.option("--time-scale", default=1.0, show_default=True,
              help="Play the schedule this many times faster than real time (bandwidth times it, delays divided).")
@click.option("--packet-bytes", default=64, show_default=True,
              help="The link's packet: the unit a loss takes (serial: dropped; MQTT/TCP: resent after a timeout).")
@click.option("--seed", default=0, show_default=True, help="Seed for the losses.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this many seconds [default: until Ctrl-C].")
@click.option("--json", "as_json", is_flag=True, help="Print the byte counts on exit as JSON.")
def link(schedule: Path, device_port: str | None, broker_url: str | None, listen: str, baud: int, time_scale: float,
         packet_bytes: int, seed: int, duration: float | None, as_json: bool) -> None:
    """Put a link you control between a device and the bridge: bandwidth, delay, loss and outages
    change over time as SCHEDULE says, on real bytes and in real time (or --time-scale faster).

    \b
    Serial (--serial): a byte stream with no retransmission, as a UART or a radio serial bridge.
      A chunk takes 8 x bytes / bandwidth on the line, then half the round trip; each packet is
      lost with the phase's probability (the frame's CRC fails, the device resends after its
      timeout); in an outage every byte is dropped.
        bisup link wifi-to-lora.txt --serial /dev/ttyUSB0
        bisup bridge --serial <the printed pty> --bundle ... --remote ...
    MQTT (--mqtt): a TCP proxy in front of the broker. Same bandwidth and delay; TCP never loses
      bytes, so a lost packet is resent after max(2 x rtt, 200 ms) and later bytes wait behind it;
      in an outage bytes are held (the connection stays) and leave when the link returns.
        bisup link wifi-to-lora.txt --mqtt mqtt://127.0.0.1:1883 --listen 127.0.0.1:1884
        bisup device --mqtt mqtt://127.0.0.1:1884 ...

    Each direction queues at most 256 KiB: past it a serial line drops what comes (counted as
    overflow, as a radio's full transmit buffer would) and an MQTT line stops reading the sender
    until half has drained (TCP's flow control holds it), so a flooding device cannot grow memory.

    On exit (Ctrl-C or --duration) prints the bytes each way: sent, delivered, dropped (serial loss,
    outages and overflow), overflow, packets resent and bytes held by an outage (MQTT).
    """
    from bisup.firmware_bridge.link_schedule import LinkSchedule

    if (device_port is None) == (broker_url is None):
        raise click.UsageError("give exactly one of --serial (the device's port) and --mqtt (the broker)")
    plan = LinkSchedule.read(schedule)
    opened = (_serial(plan, device_port, baud, time_scale, packet_bytes, seed) if device_port
              else _mqtt(plan, broker_url, listen, time_scale, packet_bytes, seed))
    with opened as emulator:
        progress(f"playing {schedule} at {time_scale:g}x: " + "; ".join(
            f"{start:g} s {phase.describe()}" for start, _, phase in plan.spans()))
        _wait(duration)
    totals = {way: asdict(stats) for way, stats in emulator.totals().items()}
    if as_json:
        click.echo(json.dumps(totals, indent=2))
        return
    for way, stats in totals.items():
        click.echo(f"{way:<5} " + ", ".join(f"{name} {value:,}" for name, value in stats.items()))


@contextlib.contextmanager
def _serial(plan: object, device_port: str, baud: int, time_scale: float, packet_bytes: int,
            seed: int) -> Iterator[object]:
    from bisup.firmware_bridge.link_emulator import End, emulated_pty, open_serial

    with contextlib.ExitStack() as stack:
        device = None if device_port == "pty" else End(stack.enter_context(open_serial(device_port, baud)).fileno())
        pty = stack.enter_context(emulated_pty(plan, time_scale, seed, device, packet_bytes))
        if pty.device_path:
            progress(f"device side: bisup device --serial {pty.device_path} ...")
        progress(f"bridge side: bisup bridge --serial {pty.bridge_path} ...")
        yield pty.emulator


@contextlib.contextmanager
def _mqtt(plan: object, broker_url: str, listen: str, time_scale: float, packet_bytes: int,
          seed: int) -> Iterator[object]:
    from bisup.firmware_bridge.link_emulator import LinkError, tcp_proxy
    from bisup.firmware_bridge.mqtt_link import Broker

    broker = Broker.from_url(broker_url)
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise LinkError(f"--listen {listen!r} is not HOST:PORT (e.g. 127.0.0.1:1884; port 0: any free one)")
    with tcp_proxy(plan, (broker.host, broker.port), time_scale, host, int(port), seed, packet_bytes) as proxy:
        scheme = "mqtts" if broker.tls else "mqtt"
        progress(f"devices: --mqtt {scheme}://{proxy.address[0]}:{proxy.address[1]} (to {broker.url}); "
                 f"bridges: --mqtt {broker.url}")
        yield proxy.emulator


def _wait(duration: float | None) -> None:
    """Until ``duration`` seconds pass or SIGINT/SIGTERM arrives."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait(duration)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
