"""``bisup.firmware_bridge``: everything a device and the host's bridge share, without TensorFlow.

The wire protocol (``protocol``, ``framing``, ``golden``; PROTOCOL.md), the bridge (``handler``, ``relay``,
``serial_bridge``, ``mqtt_bridge``, ``resilience``), remote models (``remotes``, ``remote_registry``,
``net_remotes``), bundles and model images (``bundle``, ``image``), the virtual devices (``virtual_device``,
``exits_device``) and what a bridge observes (``events``, ``metrics``, ``drift``, ``collect``); ``c/`` is the
C device library (``C_LIBRARY``). It imports only TensorFlow-free parts of ``bisup.converters``, and never the
toolkit.
"""

from pathlib import Path

C_LIBRARY = Path(__file__).resolve().parent / "c"  # the C device library: protocol, app step, image, exits
