"""The sending node's publish of a batch (issue 14, i14-ratio8).

nats-py's ``Client.publish`` (2.16.0) frames a message as one ``bytes``:
``f"PUB {subject} {reply} {size}\\r\\n".encode() + payload + b"\\r\\n"`` — two copies of
the payload (~50-100 KB for a node's batch of ~700-1,500 QoS 0 messages) — and puts it
on the client's pending list, which its flusher task hands to the transport with
``writelines``. :func:`publish` puts the same three pieces on that list as three items
(the control line, the payload itself, the CRLF): the bytes on the wire are the same,
in the same order (``writelines`` writes them back to back; nats-py's own priority
commands go in front of the list, never between them), and nats-py's counters, its
pending-size limit and its flusher kick are kept as ``Client._send_publish`` does.
Anything but the plain case (not connected, closed or draining, a payload over the
server's ``max_payload``) goes through ``Client.publish`` itself, which raises or
buffers as before. Used only with the nats-py versions :mod:`natsread
<iotbroker.cluster.natsread>` was tested with and when the module's ``pub_cmd`` frames
as expected (:func:`usable`); ``IOTBROKER_CLUSTER_NATS_READ=nats`` turns it off with
the read path (docs/cluster.md).
"""

from __future__ import annotations

from typing import Any

from nats.aio import client as nats_client
from nats.protocol import command as nats_command

from iotbroker.cluster.natsread import TESTED_VERSIONS

_CRLF = b"\r\n"


def usable() -> bool:
    """The three pieces are what nats-py's own ``publish`` would write."""
    try:
        own = nats_command.pub_cmd("s.t", "", b"xy")
    except Exception:
        return False
    return (getattr(nats_client, "__version__", "") in TESTED_VERSIONS
            and own == b"".join(_pieces("s.t", b"xy")))


def _pieces(subject: str, payload: bytes) -> tuple[bytes, bytes, bytes]:
    return f"PUB {subject}  {len(payload)}\r\n".encode(), payload, _CRLF


async def publish(nc: Any, subject: str, payload: bytes) -> None:
    """``await nc.publish(subject, payload)`` without its copies (module docstring)."""
    size = len(payload)
    if (not subject or not nc.is_connected or nc.is_closed or nc.is_draining_pubs
            or size > nc._max_payload):
        await nc.publish(subject, payload)
        return
    head, _, tail = _pieces(subject, payload)
    pending: list[bytes] = nc._pending
    pending.append(head)
    pending.append(payload)
    pending.append(tail)
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += size
    nc._pending_data_size += len(head) + size + 2
    if nc._max_pending_size > 0 and nc._pending_data_size > nc._max_pending_size:
        await nc._flush_pending(force_flush=True)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()
