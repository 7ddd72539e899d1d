"""``python -m iotbroker``: the same as the ``iotbroker`` command."""

from iotbroker.cli import console_main

if __name__ == "__main__":
    console_main()
