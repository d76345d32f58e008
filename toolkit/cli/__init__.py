"""The ``bisup`` command line (click): one module per command group, options only; the work is in the
library rooms (``bisup.export``, ``bisup.calibration``, ...) and the tables in ``tables``. Heavy imports
(TensorFlow) happen inside commands.
"""

from bisup.cli import calibrate, examples, export, flash, flywheel, hil, link, serve  # noqa: F401  (registers commands)
from bisup.cli.common import EXIT_INTERNAL, main

__all__ = ["EXIT_INTERNAL", "main"]
