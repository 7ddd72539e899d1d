"""The ``iotsim`` command's entry point: says plainly when the ``sim`` extra is missing.

The broker does not need ``rich``, so it is installed by the ``sim`` extra only
(``pip install 'iotbroker[sim]'``); without it the command stops with that hint instead
of a traceback. Everything else is :mod:`iotsim.cli`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

MISSING_EXTRA = (
    "iotsim: the device simulator needs the 'sim' extra (rich is not installed): "
    "pip install 'iotbroker[sim]' (from a checkout: pip install -e '.[sim]')"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iotsim`` console script and of ``python -m iotsim``."""
    try:
        import rich  # noqa: F401, PLC0415
    except ImportError:
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    from iotsim.cli import main as cli_main  # noqa: PLC0415

    return cli_main(argv)
