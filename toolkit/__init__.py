"""The bisup toolkit: the command line and its Python API.

Import the pieces directly, e.g. ``from bisup.export.single import export``. This package uses
``converters``, ``firmware_bridge`` and ``boards``; none of them imports it.
"""
