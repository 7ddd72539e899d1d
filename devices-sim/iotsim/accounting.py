"""The final cross-check: every published message against every subscriber that should
have received it.

For each accounting subscriber (monitor or dashboard) and each (source, QoS) stream
whose topic its filters match, the sequence numbers sent at or after the subscriber's
first SUBACK arrived are expected once each (earlier ones are ``before_subscribe``: a
subscription does not reach back in time). The effective QoS of a delivery is
``min(published QoS, granted QoS)`` (MQTT 5.0 §3.8.4).

What each QoS allows, and so what counts as a *violation*:

* a missing message is allowed when the delivery QoS is 0 (at most once, §4.3.1:
  ``lost_allowed_qos0``), when the publisher never got its PUBACK/PUBREC
  (``lost_unconfirmed``: the broker may not have it), or when the subscriber could not
  have received it (``lost_excused``, below); otherwise it is ``lost_confirmed``, a
  violation (MQTT 5.0 §4.3.2, §4.3.3);
* excused, at delivery QoS 1/2, is only what a subscriber without a session missed: for
  each time a subscriber lost its connection and its session went with it (a clean
  session, or a persistent one the broker no longer had when it came back), the messages
  of each stream from just after the last one it had received in order on that stream
  (the rest were in flight and died with the connection) until its next SUBACK arrived
  (or the end, if it never subscribed again). A persistent session that was present
  again is owed everything published while it was away (§4.1, §4.4): those messages
  are ``backlog``, expected and never excused;
* a duplicate is allowed when the message was published at QoS 1 (the publisher may
  re-send it with DUP and the broker treats it as new) or delivered at QoS 1; any other
  duplicate is a violation (QoS 0 is at most once, QoS 2 exactly once, §4.3.3);
* out-of-order arrivals (a sequence number lower than one already seen, same stream)
  are reported, not judged: MQTT orders per topic and QoS only without faults (§4.6);
* wills: every connection of a will-bearing device that ended without DISCONNECT is
  one expected will per matching subscriber (MQTT 5.0 §3.1.2.5, 3.1.1 §3.1.2.5: the
  server publishes it when the network connection closes without DISCONNECT, whoever
  closed it). Each is *owed* (a spec-following broker must deliver it; missing = a
  violation) unless excused, and the report says why:
  ``not_subscribed`` (the subscriber never got a SUBACK granting its filters),
  ``before_subscribe`` (the subscriber had no SUBACK yet), ``broker_outage`` (the device
  did not close the connection and an accounting subscriber lost its own connection
  unprovoked within :data:`OUTAGE_WINDOW_NS`: the broker itself went away, and a broker
  that crashed cannot have published the wills of that moment), ``subscriber_away`` (the
  subscriber was disconnected within :data:`WILL_MARGIN_NS` of the connection's end: the
  will may have been published while nobody listened). A will received more
  often than it was expected (owed or excused) is ``unexpected``, a violation.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from iotsim.stats import Stats, StreamRec, SubscriberRec
from iotsim.topics import matches_any

_QOS_KEYS = ("expected", "delivered", "lost", "lost_allowed_qos0", "lost_unconfirmed",
             "lost_excused", "lost_confirmed", "duplicated", "duplicated_violation",
             "out_of_order", "before_subscribe", "backlog")

#: How long after a connection ended its will may still be on its way (ns).
WILL_MARGIN_NS = 2_000_000_000
#: Device and subscriber connections lost this close together: the broker went away.
OUTAGE_WINDOW_NS = 1_000_000_000
#: How many excused wills the report lists one by one.
EXCUSED_LISTED = 100

#: A gap in a subscriber's presence: (last in-order seq per stream when it went, when
#: it subscribed again or ``None``, when it went, whether its session was kept).
_Gap = tuple[dict[int, int], int | None, int, bool]


def _timeline(sub: SubscriberRec) -> tuple[int | None, list[_Gap]]:
    """The first SUBACK's time and the gaps after it, from the subscriber's events."""
    events = sorted([(t, 1, i) for i, (t, _r) in enumerate(sub.ups)]
                    + [(t, 0, i) for i, (t, _l) in enumerate(sub.downs)])
    first: int | None = None
    gaps: list[_Gap] = []
    down: tuple[int, dict[int, int]] | None = None
    for t, kind, i in events:
        if kind == 1:
            if first is None:
                first = t
            elif down is not None:
                gaps.append((down[1], t, down[0], sub.ups[i][1]))
            down = None
        elif first is not None and down is None:  # the first down of a gap counts
            down = sub.downs[i]
    if down is not None:
        gaps.append((down[1], None, down[0], False))
    return first, gaps


def _missing(arr: bytearray | None, lo: int, hi: int) -> int:
    """How many of the sequence numbers ``lo..hi`` never arrived."""
    if hi < lo:
        return 0
    if arr is None:
        return hi - lo + 1
    n = len(arr)
    inside = arr[lo : min(hi, n - 1) + 1].count(0) if lo < n else 0
    return inside + max(0, hi - max(lo, n) + 1)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _judge(sub: SubscriberRec, first: int | None, gaps: list[_Gap], key: int,
           stream: StreamRec, b: Counter[str]) -> int:
    """Add one (subscriber, stream) pair to its QoS bucket; unknown sequence numbers."""
    dq = min(stream.qos, sub.qos)
    n = stream.sent
    start = stream.first_sent_at_or_after(first) if first is not None else n + 1
    start = min(start, n + 1)
    arr = sub.seen.get(key)
    unknown = 0
    if arr is not None and len(arr) > n + 1:
        tail = arr[n + 1 :]
        unknown = len(tail) - tail.count(0)
    b["before_subscribe"] += start - 1
    expected = n - start + 1
    if expected <= 0:
        return unknown
    zeros = _missing(arr, start, n)
    got = expected - zeros
    b["expected"] += expected
    b["delivered"] += got
    b["lost"] += zeros
    excused: list[tuple[int, int]] = []
    for last, back, went, kept in gaps:
        back_seq = stream.first_sent_at_or_after(back) if back is not None else n + 1
        if kept:  # a persistent session came back: all of it is owed
            b["backlog"] += max(0, min(n, back_seq - 1)
                                - max(start, stream.first_sent_at_or_after(went)) + 1)
        else:
            excused.append((max(start, last.get(key, 0) + 1), min(n, back_seq - 1)))
    if zeros:
        if dq == 0:
            b["lost_allowed_qos0"] += zeros
        else:
            windows = _merge(excused)
            in_windows = sum(_missing(arr, lo, hi) for lo, hi in windows)
            unconfirmed = 0
            unconfirmed_in_windows = 0
            for s in stream.unconfirmed:
                if start <= s <= n and (arr is None or s >= len(arr) or arr[s] == 0):
                    unconfirmed += 1
                    if any(lo <= s <= hi for lo, hi in windows):
                        unconfirmed_in_windows += 1
            b["lost_unconfirmed"] += unconfirmed
            b["lost_excused"] += in_windows - unconfirmed_in_windows
            b["lost_confirmed"] += zeros - unconfirmed - (in_windows - unconfirmed_in_windows)
    if arr is not None:
        dups = sum(arr[start : n + 1]) - got
        if dups:
            b["duplicated"] += dups
            if stream.qos != 1 and dq != 1:
                b["duplicated_violation"] += dups
    b["out_of_order"] += sub.ooo.get(key, 0)
    return unknown


def analyse(stats: Stats) -> dict[str, Any]:
    """The ``messages``, ``wills`` and ``violations`` sections of the report."""
    by_qos = {q: Counter({k: 0 for k in _QOS_KEYS}) for q in range(3)}
    streams = stats.streams
    unknown = 0
    foreign = 0
    for sub in stats.subscribers:
        foreign += sub.foreign
        filters = sub.filters
        first, gaps = _timeline(sub)
        for key, stream in streams.items():
            if matches_any(filters, stream.topic):
                unknown += _judge(sub, first, gaps, key, stream,
                                  by_qos[min(stream.qos, sub.qos)])
        unknown += sum(1 for key in sub.seen if key not in streams)

    wills = _judge_wills(stats)

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
        "before_subscribe": total["before_subscribe"],
        "backlog": total["backlog"],
        "foreign": foreign,
        "subscribers": len(stats.subscribers),
        "faulted_subscribers": sum(1 for s in stats.subscribers if s.faulted),
        "unsubscribed_subscribers": sum(1 for s in stats.subscribers if not s.ups),
        "by_qos": {str(q): dict(by_qos[q]) for q in range(3)},
    }
    return {"messages": messages, "wills": wills, "violations": violations,
            "ok": not any(violations.values())}


def _away(first: int | None, gaps: list[_Gap], lo: int, hi: int) -> bool:
    """The subscriber was not subscribed at some moment of ``lo..hi`` (ns)."""
    if first is None or first > lo:
        return True
    return any(went <= hi and (back is None or back >= lo) for _, back, went, _k in gaps)


def _will_excuse(first: int | None, gaps: list[_Gap], when: int, cause: str,
                 drops: list[int]) -> str | None:
    """Why a subscriber need not have received the will of a connection that ended
    at ``when`` for ``cause``; None when it is owed."""
    if first is None:
        return "not_subscribed"
    if first > when:
        return "before_subscribe"
    if cause != "client_abort" and any(abs(t - when) <= OUTAGE_WINDOW_NS for t in drops):
        return "broker_outage"
    if _away(first, gaps, when, when + WILL_MARGIN_NS):
        return "subscriber_away"
    return None


def _judge_wills(stats: Stats) -> dict[str, Any]:
    """The ``wills`` section: expected, owed, excused (by reason, and listed), received,
    missing (owed and never received: a violation) and unexpected."""
    ends: dict[int, list[tuple[int, str]]] = {}
    for source, when, cause in stats.will_ends:
        ends.setdefault(source, []).append((when, cause))
    drops = sorted(stats.subscriber_drops)
    out: Counter[str] = Counter({"expected": 0, "owed": 0, "received": 0, "missing": 0,
                                 "unexpected": 0})
    excused: Counter[str] = Counter()
    missing_by_cause: Counter[str] = Counter()
    listed: list[dict[str, str]] = []
    for sub in stats.subscribers:
        first, gaps = _timeline(sub)
        for source, topic in stats.will_topics.items():
            if not matches_any(sub.filters, topic):
                continue
            events = ends.get(source, [])
            # Older workers' exports may lack the events: fall back to the count.
            expected = max(stats.wills_expected.get(source, 0), len(events))
            owed_causes: list[str] = []
            for when, cause in events:
                why = _will_excuse(first, gaps, when, cause, drops)
                if why is None:
                    owed_causes.append(cause)
                    continue
                excused[why] += 1
                if len(listed) < EXCUSED_LISTED:
                    listed.append({"topic": topic, "subscriber": sub.name,
                                   "connection_end": cause, "reason": why})
            owed = len(owed_causes) + max(0, expected - len(events))
            got = sub.wills.get(source, 0)
            out["expected"] += expected
            out["owed"] += owed
            out["received"] += got
            missing = max(0, owed - got)
            out["missing"] += missing
            for cause in owed_causes[len(owed_causes) - missing:] if missing else ():
                missing_by_cause[cause] += 1
            out["unexpected"] += max(0, got - expected)
    return {**dict(out), "excused": dict(excused), "excused_list": listed,
            "missing_by_connection_end": dict(missing_by_cause)}
