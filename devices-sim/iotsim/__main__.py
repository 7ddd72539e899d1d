"""``python -m iotsim``: the same as the ``iotsim`` command."""

from iotsim.cli import main

raise SystemExit(main())
