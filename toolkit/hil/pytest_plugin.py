"""pytest plugin: write your own hardware-in-the-loop tests against a board or QEMU.

Installed with the package (entry point ``pytest11``), shaped like pytest-embedded's ``dut``:

    pytest --bisup-emulate mps2-an386 --bisup-bundle dist/digits.bisup --bisup-remote remote.keras
    pytest --bisup-port /dev/ttyUSB0  --bisup-bundle dist/digits.bisup --bisup-remote remote.keras

    def test_board_keeps_its_promise(bisup_device, bisup_bridge):
        report = bisup_device.run(x_test, y_test)
        assert report.passed and report["offline_agreement"] == 1.0
        assert bisup_bridge.counts["remote"] > 0

Tests that use the fixtures are skipped when no board is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from bisup.firmware_bridge.bundle import Bundle
    from bisup.firmware_bridge.handler import RequestHandler
    from bisup.hil.runner import HilReport


def pytest_addoption(parser: pytest.Parser) -> None:
    from bisup.boards import emulated_names  # TOML files only: pytest loads this plugin at every start-up

    group = parser.getgroup("bisup", "bisup hardware-in-the-loop")
    group.addoption("--bisup-port", help="The board's port as a pyserial URL.")
    group.addoption("--bisup-emulate", choices=emulated_names(),
                    help="Run the firmware in QEMU instead, on a board profile with an [emulation] table.")
    group.addoption("--bisup-bundle", help="The .bisup bundle (or build folder) the board runs.")
    group.addoption("--bisup-remote", help="Remote model for the bridge role.")
    group.addoption("--bisup-timeout", type=float, default=10.0,
                    help="Seconds the board may stay silent before HELLO and while an input is in flight (with "
                         "--bisup-emulate, of the emulated board's own time: QEMU's instruction count).")


def _option(config: pytest.Config, name: str):
    return config.getoption(f"--bisup-{name}")


@pytest.fixture(scope="session")
def bisup_bundle(request: pytest.FixtureRequest) -> Bundle:
    """The bundle under test (``bisup.firmware_bridge.bundle.Bundle``)."""
    from bisup.firmware_bridge.bundle import Bundle

    config = request.config
    if not (_option(config, "port") or _option(config, "emulate")):
        pytest.skip("no board: pass --bisup-port URL or --bisup-emulate mps2-an386")
    if not (_option(config, "bundle") and _option(config, "remote")):
        pytest.fail("--bisup-bundle and --bisup-remote are required with a board")
    return Bundle.load(_option(config, "bundle"))


@pytest.fixture(scope="session")
def bisup_bridge(request: pytest.FixtureRequest, bisup_bundle: Bundle) -> RequestHandler:
    """The bridge role (``RequestHandler``): its ``counts`` say what the board asked for."""
    from bisup.firmware_bridge.remotes import open_remote
    from bisup.hil.runner import bridge_handler

    return bridge_handler(bisup_bundle, open_remote(_option(request.config, "remote")))


@dataclass
class BoardUnderTest:
    """The device under test; ``run`` feeds a labelled set and returns the HIL report."""

    bundle: object
    bridge: object
    port: str | None
    emulate: str | None
    timeout_s: float

    def run(self, x: np.ndarray, y: np.ndarray) -> HilReport:
        """The HIL report (a mapping of the JSON report, with ``passed`` and ``checks``)."""
        from bisup.hil import runner as hil

        return hil.run(self.bundle, np.asarray(x, np.float32), np.asarray(y), self.bridge, self.port, self.emulate,
                       self.timeout_s)


@pytest.fixture
def bisup_device(request: pytest.FixtureRequest, bisup_bundle: Bundle, bisup_bridge: RequestHandler) -> BoardUnderTest:
    config = request.config
    return BoardUnderTest(bisup_bundle, bisup_bridge, _option(config, "port"), _option(config, "emulate"),
                          _option(config, "timeout"))
