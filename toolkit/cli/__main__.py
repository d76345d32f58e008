"""``python -m bisup.cli``: the command line without the installed script (the tests start bridges this way)."""

from bisup.cli import main

main()
