"""``python -m iotsim``: the same as the ``iotsim`` command."""

from iotsim.launcher import main

raise SystemExit(main())
