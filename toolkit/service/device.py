"""``bisup device``: a device without a board, over a serial link or MQTT, as a summary a user reads.

The bundle's model runs in TFLM (the stored arena, no search), the int8 threshold decides, and unsure
inputs go over the link with the same state machine as the C library (``VirtualDevice``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from bisup.firmware_bridge.mqtt_link import Broker, DeviceLink, deployment_name, request_topic
from bisup.firmware_bridge.serial_bridge import BridgeError, port_problem
from bisup.firmware_bridge.virtual_device import DeviceTimeout, SerialLink

Progress = Callable[[str], None]


def open_link(serial_url: str | None, broker: Broker | None, device_id: str, deployment: str = ""):
    """The device's link, closed on exit: MQTT (on ``deployment``'s topics) when a broker is given, otherwise the
    serial URL."""
    if broker is not None:
        return contextlib.closing(DeviceLink(broker, device_id, deployment))
    import serial

    try:
        port = serial.serial_for_url(serial_url, baudrate=921600, timeout=0.05)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise BridgeError(port_problem(serial_url, exc)) from None
    return contextlib.closing(SerialLink(port))


def run(bundle_path: str | Path, data_path: str | Path, serial_url: str | None, broker: Broker | None,
        device_id: str, timeout_ms: int, retries: int, hello_timeout_s: float, progress: Progress,
        topic_deployment: str | None = None) -> dict:
    """Greet the bridge, run every input as deployed, and return the summary `bisup device` prints (a
    multi-exit deployment adds its exits, device MACs and bytes sent). Over MQTT the device asks the bridges of
    ``topic_deployment``, by default the deployment named after its bundle's model hash, as its bridge's is."""
    from bisup.deployment import open_deployment

    deployment = open_deployment(bundle_path)
    x, y = deployment.load_data(Path(data_path))
    route = topic_deployment or deployment_name(deployment.model_hash)
    with open_link(serial_url, broker, device_id, route) as link:
        unit = deployment.device(link, device_id, timeout_ms / 1000, retries)
        try:
            reply = unit.hello(hello_timeout_s)
        except DeviceTimeout as exc:
            if broker is None:
                raise
            raise DeviceTimeout(f"{exc} Over MQTT: no bridge serves deployment {route!r} (topic "
                                f"{request_topic(device_id, route)}); start `bisup bridge` with this bundle, or give "
                                "both the same --deployment") from None
        if reply.model_hash != deployment.model_hash:
            progress("warning: the bridge serves a different model (hash mismatch); answers may not fit")
        return deployment.run_device(unit, x, y)


