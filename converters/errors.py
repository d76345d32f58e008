"""The one exception type the converters raise for bad input; its message is the user's error."""


class ConversionError(ValueError):
    """A model, calibration set or graph the exporter cannot turn into a board-ready model.

    The message is a single line that names the bad input and, where there is one, the fix.
    """
