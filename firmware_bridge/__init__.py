"""Wire protocol, host bridge (serial, MQTT), remote-model backends and the C device library.

Populated by the protocol and bridge work; it never imports ``toolkit``.
"""
