"""The final cross-check: every published message against every subscriber that should
have received it.

For each accounting subscriber (monitor or dashboard) and each (source, QoS) stream
whose topic its filters match, every sequence number ``1..sent`` is expected once. The
effective QoS of a delivery is ``min(published QoS, granted QoS)`` (MQTT 5.0 §3.8.4).

What each QoS allows, and so what counts as a *violation*:

* a missing message is allowed when the delivery QoS is 0, when the publisher never got
  its PUBACK/PUBREC (``unconfirmed``: the broker may not have it), or when the
  subscriber itself was hit by a fault (``excused``); otherwise it is ``lost_confirmed``,
  a violation (MQTT 5.0 §4.3.2, §4.3.3);
* a duplicate is allowed when the message was published at QoS 1 (the publisher may
  re-send it with DUP and the broker treats it as new) or delivered at QoS 1; any other
  duplicate is a violation (QoS 0 is at most once, QoS 2 exactly once, §4.3.3);
* out-of-order arrivals (a sequence number lower than one already seen, same stream)
  are reported, not judged: MQTT orders per topic and QoS only without faults (§4.6);
* wills: every connection of a will-bearing device that ended without DISCONNECT is
  one expected will per matching subscriber; missing or unexpected wills are violations.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from iotsim.stats import Stats
from iotsim.topics import matches_any

_QOS_KEYS = ("expected", "delivered", "lost", "lost_allowed_qos0", "lost_unconfirmed",
             "lost_excused", "lost_confirmed", "duplicated", "duplicated_violation",
             "out_of_order")


def analyse(stats: Stats) -> dict[str, Any]:
    """The ``messages``, ``wills`` and ``violations`` sections of the report."""
    by_qos = {q: Counter({k: 0 for k in _QOS_KEYS}) for q in range(3)}
    streams = stats.streams
    unknown = 0
    foreign = 0
    for sub in stats.subscribers:
        foreign += sub.foreign
        filters = sub.filters
        for key, stream in streams.items():
            if not matches_any(filters, stream.topic):
                continue
            dq = min(stream.qos, sub.qos)
            b = by_qos[dq]
            n = stream.sent
            arr = sub.seen.get(key)
            if arr is None:
                zeros, arrivals = n, 0
            else:
                view = arr[1 : n + 1]
                zeros = view.count(0) + (n - len(view))
                arrivals = sum(view)
                if any(arr[n + 1 :]):
                    unknown += len(arr[n + 1 :]) - arr[n + 1 :].count(0)
            got = n - zeros
            b["expected"] += n
            b["delivered"] += got
            b["lost"] += zeros
            if zeros:
                if dq == 0:
                    b["lost_allowed_qos0"] += zeros
                else:
                    unconfirmed = sum(1 for s in stream.unconfirmed
                                      if arr is None or s >= len(arr) or arr[s] == 0)
                    b["lost_unconfirmed"] += unconfirmed
                    rest = zeros - unconfirmed
                    b["lost_excused" if sub.faulted else "lost_confirmed"] += rest
            dups = arrivals - got
            if dups:
                b["duplicated"] += dups
                if stream.qos != 1 and dq != 1:
                    b["duplicated_violation"] += dups
            b["out_of_order"] += sub.ooo.get(key, 0)
        unknown += sum(1 for key in sub.seen if key not in streams)

    wills = Counter({"expected": 0, "received": 0, "missing": 0, "unexpected": 0})
    for sub in stats.subscribers:
        for source, topic in stats.will_topics.items():
            if not matches_any(sub.filters, topic):
                continue
            exp = stats.wills_expected.get(source, 0)
            got = sub.wills.get(source, 0)
            wills["expected"] += exp
            wills["received"] += got
            if not sub.faulted:
                wills["missing"] += max(0, exp - got)
            wills["unexpected"] += max(0, got - exp)

    total: Counter[str] = Counter()
    for bucket in by_qos.values():
        total.update(bucket)
    unconfirmed_now = sum(len(s.unconfirmed) for s in streams.values())
    published_acked = sum(s.sent for s in streams.values() if s.qos) - unconfirmed_now
    violations = {
        "lost_confirmed": total["lost_confirmed"],
        "duplicated_violation": total["duplicated_violation"],
        "wills_missing": wills["missing"],
        "wills_unexpected": wills["unexpected"],
        "unknown_sequence_numbers": unknown,
    }
    messages = {
        "published": stats.published,
        "published_by_qos": {str(q): sum(s.sent for s in streams.values() if s.qos == q)
                             for q in range(3)},
        "confirmed": published_acked,
        "unconfirmed": unconfirmed_now,
        "expected": total["expected"],
        "delivered": total["delivered"],
        "received": sum(s.received for s in stats.subscribers),
        "lost": total["lost"],
        "duplicated": total["duplicated"],
        "out_of_order": total["out_of_order"],
        "foreign": foreign,
        "subscribers": len(stats.subscribers),
        "faulted_subscribers": sum(1 for s in stats.subscribers if s.faulted),
        "by_qos": {str(q): dict(by_qos[q]) for q in range(3)},
    }
    return {"messages": messages, "wills": dict(wills), "violations": violations,
            "ok": not any(violations.values())}
