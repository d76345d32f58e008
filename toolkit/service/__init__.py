"""The long-running services: the bridge, the virtual device and the local mosquitto broker."""
