"""RFC 5277 subscriptions of a session: create-subscription, replay, delivery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxml import etree
from twisted.internet.interfaces import IDelayedCall

from callhome.simulator.constants import NETCONF_NS, NETMOD_NOTIFICATION_NS, NOTIFICATION_NS, STREAM
from callhome.simulator.errors import RpcError, _bad
from callhome.simulator.filters import _check_filter, apply_filter
from callhome.simulator.times import format_time, parse_time
from callhome.simulator.xmltree import _q, _text

if TYPE_CHECKING:
    from callhome.simulator.datastore import Datastore


@dataclass
class Subscription:
    """A session's RFC 5277 subscription."""

    filter: etree._Element | None
    start: float | None
    stop: float | None
    timer: IDelayedCall | None = None


class SessionNotifications:
    """
    The notification side of L{NetconfServerProtocol}: its subscription,
    replay and the ``<notification>`` messages it sends.
    """

    if TYPE_CHECKING:
        datastore: Datastore
        subscription: Subscription | None
        counters: dict[str, int]
        _closing: bool
        _ended: bool
        _held: list[tuple[float, list[etree._Element]]] | None

        def _send(self, message: bytes) -> None: ...

        def _filter(self, operation: etree._Element, namespace: str = NETCONF_NS) -> etree._Element | None: ...

    def _create_subscription(self, operation: etree._Element, after: list) -> None:
        ns = NOTIFICATION_NS
        if self.subscription is not None:
            raise RpcError("in-use", "this session already has a subscription")
        stream = operation.find(_q("stream", ns))
        if stream is not None and _text(stream) != STREAM:
            raise _bad("invalid-value", "stream", f"no stream {_text(stream)!r}: only {STREAM}")
        flt = self._filter(operation, ns)
        _check_filter(flt)
        now = self.datastore.clock.seconds()
        start = self._time(operation, "startTime")
        stop = self._time(operation, "stopTime")
        if stop is not None and start is None:
            raise _bad("missing-element", "startTime", "stopTime needs a startTime")
        if start is not None and start > now:
            raise _bad("invalid-value", "startTime", "startTime is in the future")
        if start is not None and stop is not None and stop < start:
            raise _bad("invalid-value", "stopTime", "stopTime is earlier than startTime")
        subscription = Subscription(flt, start, stop)
        replay = [(t, e) for t, e in self.datastore.replay_log if start is not None and t >= start and (stop is None or t <= stop)]
        self.subscription = subscription
        # Replayed events follow the <ok/>; live ones cannot interleave
        # before then (everything here runs in one reactor turn).
        after.append(lambda: self._replay(subscription, replay))
        return None

    def _time(self, operation: etree._Element, name: str) -> float | None:
        element = operation.find(_q(name, NOTIFICATION_NS))
        if element is None:
            return None
        try:
            return parse_time(_text(element))
        except ValueError:
            raise _bad("invalid-value", name, f"{_text(element)!r} is not a date-and-time") from None

    def _replay(self, subscription: Subscription, replay: list[tuple[float, etree._Element]]) -> None:
        if self.subscription is not subscription:
            return
        for when, event in replay:
            self._deliver(subscription, when, event)
        if subscription.start is not None:
            self._send_notification(self.datastore.clock.seconds(), [etree.Element(_q("replayComplete", NETMOD_NOTIFICATION_NS), nsmap={None: NETMOD_NOTIFICATION_NS})])
        if subscription.stop is not None:
            delay = subscription.stop - self.datastore.clock.seconds()
            if delay <= 0:
                self._complete(subscription)
            else:
                subscription.timer = self.datastore.clock.callLater(delay, self._complete, subscription)

    def _complete(self, subscription: Subscription) -> None:
        """stopTime reached: notificationComplete ends the subscription."""
        if self.subscription is not subscription:
            return
        subscription.timer = None
        self.subscription = None
        self._send_notification(self.datastore.clock.seconds(), [etree.Element(_q("notificationComplete", NETMOD_NOTIFICATION_NS), nsmap={None: NETMOD_NOTIFICATION_NS})])

    def _unsubscribe(self) -> None:
        subscription, self.subscription = self.subscription, None
        if subscription is not None and subscription.timer is not None and subscription.timer.active():
            subscription.timer.cancel()

    def deliver(self, when: float, event: etree._Element) -> None:
        """Send a live event if this session subscribed to it."""
        subscription = self.subscription
        if subscription is None or self._ended or self._closing:
            return
        if subscription.stop is not None and when > subscription.stop:
            return
        self._deliver(subscription, when, event)

    def _deliver(self, subscription: Subscription, when: float, event: etree._Element) -> None:
        selected = apply_filter([event], subscription.filter)
        if selected:
            self._send_notification(when, selected)

    def _send_notification(self, when: float, content: list[etree._Element]) -> None:
        if self._held is not None:
            self._held.append((when, content))
            return
        ns = NOTIFICATION_NS
        notification = etree.Element(_q("notification", ns), nsmap={None: ns})
        etree.SubElement(notification, _q("eventTime", ns)).text = format_time(when)
        for element in content:
            notification.append(element)
        self.counters["out-notifications"] += 1
        self.datastore.statistics["out-notifications"] += 1
        self._send(etree.tostring(notification, xml_declaration=True, encoding="UTF-8"))
