"""Routing: accepted PUBLISH → retained store and matching sessions; SUBSCRIBE and
UNSUBSCRIBE on behalf of a session.

Rules implemented here (MQTT 3.1.1 §3.3, §3.8, §3.10, §4.7; MQTT 5.0 §3.3, §3.8,
§3.10, §4.8):

* a retained PUBLISH replaces the stored message for its topic [MQTT-3.3.1-5]; an
  empty retained payload deletes it [MQTT-3.3.1-10], [MQTT-3.3.1-11];
* live deliveries to existing subscriptions carry RETAIN=0 [MQTT-3.3.1-9], unless
  the subscription asked for Retain As Published (MQTT 5.0) [MQTT-3.3.1-13];
* granted QoS is ``min(publish QoS, subscription QoS)`` [MQTT-3.8.4-6];
* overlapping subscriptions of one client yield one message at the highest QoS
  carrying every matching Subscription Identifier [MQTT-3.3.4-2], [MQTT-3.3.4-3];
* No Local subscriptions do not receive their own client's messages [MQTT-3.8.3-3];
* a shared subscription group receives each message once, by one member
  (MQTT 5.0 §4.8.2); retained messages are not sent to shared subscriptions
  [MQTT-3.8.4-? §4.8.2];
* a new subscription receives the matching retained messages (retain handling 0, or
  1 when the subscription is new) [MQTT-3.3.1-6], [MQTT-3.3.1-10];
* a subscription that replaces one on the same filter keeps the flow of messages
  [MQTT-3.8.4-3].

Authorisation is not decided here: every delivery goes through
:meth:`Session.deliver <iotbroker.core.session.Session.deliver>`, which asks the ACL's
read decision (issue 12); only the choice of a shared-group member asks it first, so
that the message goes to a member that may read it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Sequence
from typing import Final

from iotbroker.codec.packets import Subscription
from iotbroker.core.retained import RetainedStore
from iotbroker.core.session import Session
from iotbroker.core.sessions import SessionRegistry
from iotbroker.core.subscriptions import Matches, SubscriptionEntry, SubscriptionTrie
from iotbroker.core.topics import parse_shared, validate_topic_filter
from iotbroker.errors import ProtocolViolation
from iotbroker.message import Delivery, Message
from iotbroker.metrics import Metrics
from iotbroker.storage.base import ChangeBatch

# The reason codes (codec/enums.py ReasonCode) as ``Final`` literals: mypyc inlines
# them, where a plain module global is a dict lookup each time it is read (twice in
# each publish; tests/core/test_router_no_subscriber.py checks they are the enum's).
_SUCCESS: Final = 0x00  # ReasonCode.SUCCESS
_NO_MATCHING_SUBSCRIBERS: Final = 0x10  # ReasonCode.NO_MATCHING_SUBSCRIBERS
_QUOTA_EXCEEDED: Final = 0x97  # ReasonCode.QUOTA_EXCEEDED
_NO_SUBSCRIPTION_EXISTED: Final = 0x11  # ReasonCode.NO_SUBSCRIPTION_EXISTED
#: MQTT 3.1.1 SUBACK return code for a refused filter (§3.9.3).
_V3_SUBACK_FAILURE = 0x80


def copy_for(
    message: Message,
    entries: Sequence[SubscriptionEntry],
    client_id: str,
    copies: list[Delivery | None] | None = None,
    share_group: str | None = None,
    *,
    on_subscribe: bool = False,
) -> Delivery | None:
    """One client's copy of ``message``, given the subscriptions of that client that
    match it: the one place where subscription options shape a delivery.

    * No Local: nothing for the client that published it [MQTT-3.8.3-3] (not
      applied to retained messages sent on subscribe, which were published before);
    * QoS: the highest of the matching subscriptions [MQTT-3.3.4-2], at most the
      message's [MQTT-3.8.4-6];
    * RETAIN: 1 for a retained message sent because of a new subscription
      [MQTT-3.3.1-8]; on a live delivery 0 [MQTT-3.3.1-9] unless a subscription asked
      for Retain As Published [MQTT-3.3.1-12], [MQTT-3.3.1-13];
    * every matching Subscription Identifier [MQTT-3.3.4-3].

    ``copies`` (indexed ``qos * 2 + retain``) shares one immutable Delivery between
    recipients whose copy is the same; None builds a new one. Returns None when the
    client gets nothing. The ACL read decision is the session's
    (:meth:`Session.deliver <iotbroker.core.session.Session.deliver>`).
    """
    origin = message.origin
    if len(entries) == 1:
        entry = entries[0]
        if entry.no_local and client_id == origin and not on_subscribe:
            return None
        qos = entry.qos if entry.qos < message.qos else message.qos
        retain = on_subscribe or (message.retain and entry.retain_as_published)
        sub_id = entry.subscription_identifier
        if sub_id is not None:
            return Delivery(message, qos, retain, (sub_id,), share_group)
    else:
        qos = -1
        retain = False
        ids: list[int] = []
        for entry in entries:
            if entry.no_local and client_id == origin and not on_subscribe:
                continue
            qos = max(qos, entry.qos)
            retain = retain or entry.retain_as_published
            if entry.subscription_identifier is not None:
                ids.append(entry.subscription_identifier)
        if qos < 0:
            return None
        qos = min(qos, message.qos)
        retain = on_subscribe or (retain and message.retain)
        if ids:
            return Delivery(message, qos, retain, tuple(ids), share_group)
    if copies is None:
        return Delivery(message, qos, retain, (), share_group)
    index = qos * 2 + 1 if retain else qos * 2
    copy = copies[index]
    if copy is None:
        copy = copies[index] = Delivery(message, qos, retain)
    return copy


class _EveryGroup:
    """The :data:`EVERY_GROUP` container: holds every (group, filter)."""

    __slots__ = ()

    def __contains__(self, item: object) -> bool:
        return True


#: ``Router.publish(..., shared=EVERY_GROUP)``: every matching shared group gets the
#: message, without asking :attr:`Router.share_pick`.
EVERY_GROUP: Container[tuple[str, str]] = _EveryGroup()

#: ``(message, share group, filter without the $share prefix, this process's members)``
#: -> deliver to one of them here (True), or another process takes it (False).
SharePick = Callable[[Message, str, str, list[SubscriptionEntry]], bool]


class RemoteTargets:
    """The non-shared subscribers of one topic as parallel lists (client ids, each
    one's matching entries), in ``Matches.direct``'s order: what
    :meth:`Router.publish_remote` needs of a ``trie.match`` for a plain message from
    another cluster node (cluster/wire.py ``route_named``, which keeps one per name
    id while the trie's ``version`` is the same). Indexed lists, not the dict: no
    ``direct.items()`` iteration per message (issue 14). ``plain``: per client,
    whether its copy of such a message is always the plain one (one matching
    subscription, without No Local or a Subscription Identifier: QoS 0, RETAIN 0, no
    ids, whatever the origin), built without :func:`copy_for`; ``one_plain``:
    ``plain[0]`` of a single client. Never mutated."""

    __slots__ = ("client_ids", "entries", "one_plain", "plain")

    def __init__(self, matches: Matches) -> None:
        direct = matches.direct
        self.client_ids: list[str] = list(direct)
        self.entries: list[list[SubscriptionEntry]] = list(direct.values())
        self.plain: list[bool] = [
            len(es) == 1 and not es[0].no_local and es[0].subscription_identifier is None
            for es in self.entries]
        self.one_plain = len(self.plain) == 1 and self.plain[0]


class Router:
    """Publishes messages to sessions and manages their subscriptions."""

    def __init__(
        self,
        registry: SessionRegistry,
        trie: SubscriptionTrie,
        retained: RetainedStore,
        batch: ChangeBatch,
        metrics: Metrics,
        *,
        shared_strategy: str = "round-robin",
        max_retained: int = 0,
    ) -> None:
        self.registry = registry
        self.trie = trie
        self.retained = retained
        self.batch = batch
        self.metrics = metrics
        self.shared_strategy = shared_strategy
        #: Retained messages kept at most (0 = no limit).
        self.max_retained = max_retained
        self._group_cursor: dict[tuple[str, str], int] = {}
        self._group_sticky: dict[tuple[str, str], str] = {}
        #: Set by a room that shares groups with other processes (the cluster,
        #: docs/cluster.md "Shared subscriptions across nodes"): asked, for a message
        #: published here, whether a matching shared group takes it here at all.
        self.share_pick: SharePick | None = None

    # ---------------------------------------------------------------- publish
    def publish(self, message: Message, now: float,
                shared: Container[tuple[str, str]] | None = None,
                matches: Matches | None = None) -> int:
        """Route one accepted message; returns the MQTT 5.0 reason code of its
        acknowledgement (§3.4.2.1): 0x00, 0x10 No Matching Subscribers when no session
        took it, 0x97 Quota Exceeded when it should have been retained and
        ``mqtt.max_retained_messages`` is reached (it is still delivered).

        ``shared``: None for a message published here (every matching shared group,
        unless :attr:`share_pick` gives it to another process); else the (group,
        filter) pairs that take it here (:data:`EVERY_GROUP`: all, asking nobody).
        ``matches``: ``self.trie.match(message.topic)`` if the caller has it (taken at
        the trie's current ``version``: another node's batch, cluster/wire.py)."""
        code = _SUCCESS
        if message.retain and not self._store_retained(message):
            code = _QUOTA_EXCEEDED
        if message.expired(now):
            self.metrics.messages_expired += 1
            return code or _NO_MATCHING_SUBSCRIBERS
        if matches is None:
            trie = self.trie
            if not len(trie):
                # No subscription at all on this process (a cluster node whose
                # publishers' subscribers are all on other nodes): nothing to look up
                # nor allocate per message (issue 14). Retained and expired messages
                # were handled above, and no shared group can pick it.
                return code or _NO_MATCHING_SUBSCRIBERS
            matches = trie.match(message.topic)
        direct = matches.direct
        if not direct and not matches.shared:  # nobody here matches (EMPTY_MATCHES)
            return code or _NO_MATCHING_SUBSCRIBERS
        sessions = self.registry.sessions
        delivered = 0
        # Recipients whose copy is the same (QoS, RETAIN, no subscription identifier)
        # share one Delivery: it is immutable, and a fan-out then builds one, not one
        # per subscriber.
        # (One recipient, the common case, needs no list: issue 19, objects per message.)
        copies: list[Delivery | None] | None = (
            [None, None, None, None, None, None] if len(direct) > 1 else None)
        for client_id, entries in direct.items():
            session = sessions.get(client_id)
            if session is None:
                continue
            delivery = copy_for(message, entries, client_id, copies)
            if delivery is not None and session.deliver(delivery, now):
                delivered += 1
        if matches.shared:
            pick = self.share_pick if shared is None else None
            for group, topic_filter, members in matches.shared:
                if pick is not None:
                    if not pick(message, group, topic_filter, members):
                        delivered += 1  # another process's member takes it
                        continue
                elif shared is not None and (group, topic_filter) not in shared:
                    continue
                if self._deliver_shared(group, topic_filter, members, message, now):
                    delivered += 1
        return code or (_SUCCESS if delivered else _NO_MATCHING_SUBSCRIBERS)

    def publish_many(self, messages: list[Message], now: float,
                     shared: Container[tuple[str, str]] | None = None) -> None:
        """:meth:`publish` each of ``messages`` in order, with the same ``shared``
        (another node's batch: one call per part, the loop compiled)."""
        publish = self.publish
        for message in messages:
            publish(message, now, shared)

    def publish_matched(self, messages: list[Message], matches: list[Matches], now: float,
                        shared: Container[tuple[str, str]] | None = None) -> None:
        """:meth:`publish_many` given each message's ``self.trie.match`` (taken at
        the trie's current ``version``)."""
        publish = self.publish
        for k, message in enumerate(messages):  # (zip() is not compiled: slower)
            publish(message, now, shared, matches[k])

    def publish_remote(self, message: Message, now: float, targets: RemoteTargets) -> None:
        """Cross-node only (cluster/wire.py ``route_named``): what
        ``publish(message, now, NO_GROUPS, matches)`` does for a *plain* message
        another node forwarded (a NAMED part's: QoS 0, RETAIN 0, no expiry, no
        properties) given ``RemoteTargets(matches)``: nothing retained or expired to
        handle, no shared group takes it here (the sender's node picked the groups'
        members), so only the direct subscribers get it: in the same order, the same
        copies (:func:`copy_for`: No Local [MQTT-3.8.3-3], subscription identifiers
        [MQTT-3.3.4-3], overlapping subscriptions merged [MQTT-3.3.4-2]), each
        through ``Session.deliver``. No reason code (nobody acknowledges it here)."""
        client_ids = targets.client_ids
        n = len(client_ids)
        if n == 0:
            return
        sessions = self.registry.sessions
        entries = targets.entries
        if n == 1:  # the common case: no copies list (as publish)
            client_id = client_ids[0]
            session = sessions.get(client_id)
            if session is not None:
                if targets.one_plain:  # copy_for's copy of it, without the call
                    session.deliver(Delivery(message, 0, False, (), None), now)
                    return
                delivery = copy_for(message, entries[0], client_id, None)
                if delivery is not None:
                    session.deliver(delivery, now)
            return
        plain = targets.plain
        copies: list[Delivery | None] = [None, None, None, None, None, None]
        for k in range(n):
            client_id = client_ids[k]
            session = sessions.get(client_id)
            if session is None:
                continue
            if plain[k]:  # copy_for's shared copy (QoS 0, RETAIN 0), without the call
                delivery = copies[0]
                if delivery is None:
                    delivery = copies[0] = Delivery(message, 0, False)
            else:
                delivery = copy_for(message, entries[k], client_id, copies)
                if delivery is None:
                    continue
            session.deliver(delivery, now)

    def _store_retained(self, message: Message) -> bool:
        """Set or clear the retained message of its topic; False when the retained
        store is full (``mqtt.max_retained_messages``, counted)."""
        if message.payload:
            limit = self.max_retained
            if limit and len(self.retained) >= limit and message.topic not in self.retained:
                self.metrics.retained_dropped += 1
                return False
            self.retained.set(message)
            if not message.topic.startswith("$SYS/"):  # broker state: never restored
                self.batch.put_retained(message)
        elif self.retained.delete(message.topic) and not message.topic.startswith("$SYS/"):
            self.batch.delete_retained(message.topic)
        return True

    def _deliver_shared(
        self,
        group: str,
        topic_filter: str,
        members: list[SubscriptionEntry],
        message: Message,
        now: float,
    ) -> bool:
        """Give the message to one member of a shared subscription group (§4.8.2)."""
        sessions = self.registry.sessions
        candidates: list[tuple[Session, Delivery]] = []
        for entry in members:
            session = sessions.get(entry.client_id)
            if session is None:
                continue
            delivery = copy_for(message, (entry,), entry.client_id, None, group)
            if delivery is None or not session.may_receive(message.topic):
                continue
            candidates.append((session, delivery))
        if not candidates:
            return False
        online = [c for c in candidates if c[0].attached_to is not None] or candidates
        key = (group, topic_filter)
        strategy = self.shared_strategy
        if strategy == "random":
            session, delivery = random.choice(online)
        elif strategy == "least-inflight":
            session, delivery = min(online, key=lambda c: len(c[0].inflight) + len(c[0].queue))
        elif strategy == "sticky":
            sticky = self._group_sticky.get(key)
            chosen = next((c for c in online if c[0].client_id == sticky), None)
            if chosen is None:
                chosen = online[0]
                self._group_sticky[key] = chosen[0].client_id
            session, delivery = chosen
        else:
            cursor = self._group_cursor.get(key, 0)
            session, delivery = online[cursor % len(online)]
            self._group_cursor[key] = cursor + 1
        return session.deliver(delivery, now)

    def redistribute(self, session: Session, now: float) -> int:
        """Hand a departing shared-subscription member's unacknowledged messages to
        the other online members of the same group (MQTT 5.0 §4.8.2): the messages
        are taken out of ``session`` so they are not delivered twice. Returns how
        many moved."""
        groups = {e.share_group for e in session.subscriptions.values() if e.share_group}
        if not groups:
            return 0
        sessions = self.registry.sessions
        client_id = session.client_id

        def new_home(delivery: Delivery) -> bool:
            # Only a group's copy moves; one from the client's own subscription stays
            # with its session (it is re-sent on resume [MQTT-4.4.0-1]).
            own_group = delivery.share_group
            if own_group is None or own_group not in groups:
                return False
            for group, topic_filter, members in self.trie.match(delivery.message.topic).shared:
                if group != own_group or all(m.client_id != client_id for m in members):
                    continue
                others = [
                    m for m in members
                    if m.client_id != client_id
                    and (other := sessions.get(m.client_id)) is not None
                    and other.attached_to is not None
                ]
                if others and self._deliver_shared(
                    group, topic_filter, others, delivery.message, now
                ):
                    return True
            return False

        return session.hand_over(new_home)

    # -------------------------------------------------------------- subscribe
    def subscribe(
        self,
        session: Session,
        subscriptions: list[Subscription],
        subscription_identifier: int | None,
        granted_qos_limit: int,
        now: float,
        check: Callable[[Subscription], int | None] | None = None,
    ) -> tuple[list[int], list[Delivery]]:
        """Add or replace subscriptions; returns the SUBACK codes in order
        [MQTT-3.8.4-7] and the retained messages to send after the SUBACK.

        ``check`` may refuse a filter by returning a failure code (0x80 / v5 code).
        """
        codes: list[int] = []
        retained: list[Delivery] = []
        for sub in subscriptions:
            try:
                group, plain = parse_shared(sub.topic_filter)
                validate_topic_filter(plain)
            except ProtocolViolation as exc:
                v5 = session.protocol_version == 5
                codes.append(exc.reason_code if v5 else _V3_SUBACK_FAILURE)
                continue
            if check is not None:
                refused = check(sub)
                if refused is not None:
                    codes.append(refused)
                    continue
            qos = min(sub.qos, granted_qos_limit)
            entry = SubscriptionEntry(
                client_id=session.client_id,
                # one string per filter, shared by its subscribers (issue 19)
                topic_filter=(self.trie.held_filter(sub.topic_filter) if group is None
                              else sub.topic_filter),
                qos=qos,
                no_local=sub.no_local,
                retain_as_published=sub.retain_as_published,
                retain_handling=sub.retain_handling,
                subscription_identifier=subscription_identifier,
                share_group=group,
            )
            replaced = session.remember_subscription(entry)
            self.trie.add(entry, replaced)
            is_new = replaced is None
            codes.append(qos)
            if group is not None:
                continue  # no retained messages for shared subscriptions
            if sub.retain_handling == 0 or (sub.retain_handling == 1 and is_new):
                for msg in self.retained.match(plain, now):
                    copy = copy_for(msg, (entry,), session.client_id, on_subscribe=True)
                    if copy is not None:
                        retained.append(copy)
        return codes, retained

    def unsubscribe(self, session: Session, topic_filters: list[str]) -> list[int]:
        """Remove subscriptions; MQTT 5.0 codes 0x00 or 0x11 No Subscription Existed."""
        codes: list[int] = []
        for topic_filter in topic_filters:
            removed = session.forget_subscription(topic_filter)
            if removed is None:
                codes.append(_NO_SUBSCRIPTION_EXISTED)
                continue
            self.trie.remove(removed)
            codes.append(_SUCCESS)
        return codes
