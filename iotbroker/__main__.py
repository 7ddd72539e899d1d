"""``python -m iotbroker``: the same as the ``iotbroker`` command."""

import sys

from iotbroker.cli import main

if __name__ == "__main__":
    sys.exit(main())
