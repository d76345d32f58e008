"""Hardware in the loop: the runner on a board's serial port or in QEMU, and its pytest plugin."""
