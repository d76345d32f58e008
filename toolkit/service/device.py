"""``bisup device``: a device without a board, over a serial link or MQTT, as a summary a user reads.

The bundle's model runs in TFLM (the stored arena, no search), the int8 threshold decides, and unsure
inputs go over the link with the same state machine as the C library (``VirtualDevice``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from bisup.firmware_bridge.mqtt_link import Broker, DeviceLink
from bisup.firmware_bridge.serial_bridge import BridgeError, port_problem
from bisup.firmware_bridge.virtual_device import SerialLink

Progress = Callable[[str], None]


def open_link(serial_url: str | None, broker: Broker | None, device_id: str):
    """The device's link, closed on exit: MQTT when a broker is given, otherwise the serial URL."""
    if broker is not None:
        return contextlib.closing(DeviceLink(broker, device_id))
    import serial

    try:
        port = serial.serial_for_url(serial_url, baudrate=921600, timeout=0.05)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise BridgeError(port_problem(serial_url, exc)) from None
    return contextlib.closing(SerialLink(port))


def run(bundle_path: str | Path, data_path: str | Path, serial_url: str | None, broker: Broker | None,
        device_id: str, timeout_ms: int, retries: int, hello_timeout_s: float, progress: Progress) -> dict:
    """Greet the bridge, run every input as deployed, and return the summary `bisup device` prints (a
    multi-exit deployment adds its exits, device MACs and bytes sent)."""
    from bisup.deployment import open_deployment

    deployment = open_deployment(bundle_path)
    x, y = deployment.load_data(Path(data_path))
    with open_link(serial_url, broker, device_id) as link:
        unit = deployment.device(link, device_id, timeout_ms / 1000, retries)
        reply = unit.hello(hello_timeout_s)
        if reply.model_hash != deployment.model_hash:
            progress("warning: the bridge serves a different model (hash mismatch); answers may not fit")
        return deployment.run_device(unit, x, y)


