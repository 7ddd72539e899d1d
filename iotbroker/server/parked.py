"""What a connection knows of being parked (server/parking.py, ``limits.park_idle_after``):
the states of ``ClientProtocol.parked_fd`` besides a parked socket's descriptor, and
the peer address of a parked socket. Its own module so that transport.py, which needs
these, does not import parking.py, which knows connections (no import cycle in
server/, not even for typing: tests/test_architecture.py). Compiled with mypyc: the
constants are ``Final``, so the compiled transport.py and parking.py read them as
literals (issue 19, the per-packet ``write_pending``).
"""

from __future__ import annotations

import socket
from typing import Final

__all__ = ["ABORT_ON_ADOPT", "ADOPTING", "NOT_PARKED", "peername"]

#: ``ClientProtocol.parked_fd`` values besides a parked socket's descriptor (≥ 0).
NOT_PARKED: Final = -1
#: Being re-adopted: ``connect_accepted_socket`` has not called ``connection_made`` yet.
ADOPTING: Final = -2
#: Being re-adopted, and aborted meanwhile: abort the new transport at once.
ABORT_ON_ADOPT: Final = -3


def peername(fd: int) -> object:
    """The peer address of a parked socket (for log lines), or None."""
    sock = socket.socket(fileno=fd)
    try:
        return sock.getpeername()
    except OSError:
        return None
    finally:
        sock.detach()
