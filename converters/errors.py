"""The project's one error base, and the converters' own error.

``BisupError`` is the root of every error a user can fix, in every package (converters, boards,
firmware_bridge, toolkit), so the CLI maps exactly one type to one ``Error:`` line. It lives here,
in the lowest layer, because every other package may import ``converters`` and this module imports
nothing.
"""


class BisupError(Exception):
    """Bad input or a missing prerequisite the user can fix. The first line of the message names the
    input and, where there is one, the fix; further lines (a log tail) are detail."""


class ConversionError(BisupError, ValueError):
    """A model, calibration set or graph the exporter cannot turn into a board-ready model."""
