"""
``oran-supervision``: O-RAN M-plane supervision of an O-RU that called home.

An O-RU expects its NETCONF client to call ``supervision-watchdog-reset``
(module ``o-ran-supervision``) before its supervision timer, the
notification interval plus the guard timer overhead, runs out; otherwise
it goes into "loss of supervision".  The step subscribes to the O-RU's
``supervision-notification`` (saved like any notification), resets the
watchdog at once, and then again every interval minus a margin for as long
as the session lasts.  A reset that fails (an rpc-error, no answer within
the guard time), comes late, or is answered with a ``next-update-at`` in
the past marks the device ``supervision-failed`` with an event; the
session stays up (the O-RU decides what loss of supervision means).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from lxml import etree
from twisted.internet import defer

from callhome.actions import ActionConfigError, ActionContext
from callhome.netconf import operations as ops
from callhome.netconf import xml

ORAN_SUPERVISION_NS = "urn:o-ran:supervision:1.0"
_N = "{%s}" % ORAN_SUPERVISION_NS


def parse_time(text: str) -> float:
    """An RFC 3339 date-and-time (``yang:date-and-time``), in seconds since the epoch."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


class SupervisionFailed(Exception):
    """A watchdog reset did not do its job."""


def _seconds(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= 65535:
        raise ActionConfigError(f"must be a whole number of seconds from {minimum} to 65535", key=key)
    return value


class OranSupervision:
    """``oran-supervision: {supervision_notification_interval, guard_timer_overhead, margin, subscribe}``."""

    name = "oran-supervision"

    def __init__(self, supervision_notification_interval: int = 60, guard_timer_overhead: int = 10,
                 margin: int | None = None, subscribe: bool = True) -> None:
        self.interval = _seconds(supervision_notification_interval, "supervision_notification_interval")
        self.guard = _seconds(guard_timer_overhead, "guard_timer_overhead")
        # Reset well before the O-RU expects it: a tenth of the interval, 1 s at least.
        self.margin = _seconds(margin, "margin", 0) if margin is not None else max(1, self.interval // 10)
        if self.margin >= self.interval:
            raise ActionConfigError("must be shorter than the notification interval", key="margin")
        if not isinstance(subscribe, bool):
            raise ActionConfigError("must be true or false", key="subscribe")
        self.subscribe = subscribe

    def reset_operation(self) -> etree._Element:
        """The ``supervision-watchdog-reset`` rpc with this step's intervals."""
        op = etree.Element(_N + "supervision-watchdog-reset", nsmap={None: ORAN_SUPERVISION_NS})
        etree.SubElement(op, _N + "supervision-notification-interval").text = str(self.interval)
        etree.SubElement(op, _N + "guard-timer-overhead").text = str(self.guard)
        return op

    async def __call__(self, context: ActionContext) -> str | None:
        """
        Subscribe, reset once, then keep resetting in the background.  A
        failed reset is an alarm, not a failed step: the session stays, and
        the next reset is tried on time.
        """
        session = context.session
        if not any(c.startswith(ORAN_SUPERVISION_NS) for c in session.capabilities):
            raise SupervisionFailed("the device does not announce o-ran-supervision in its hello")
        if self.subscribe:
            session.on_notification = context.notifications
            subtree = etree.Element(xml.qname("filter"), type="subtree")
            etree.SubElement(subtree, _N + "supervision-notification", nsmap={None: ORAN_SUPERVISION_NS})
            try:
                await session.rpc(ops.create_subscription(flt=subtree))
            except xml.RPCError as e:
                context.log.warn("oran-supervision: {device} refused the subscription to supervision-notification ({error}); "
                                 "resetting anyway", device=context.device.name, error=e)
        supervisor = Supervisor(self, context)
        try:
            next_update: str | None = await self.reset(context)
        except SupervisionFailed as e:
            next_update = None
            supervisor.alarm(str(e))
        supervisor.next_update = next_update
        supervisor.start()
        return next_update

    async def reset(self, context: ActionContext) -> str:
        """One watchdog reset; the O-RU's next-update-at, checked."""
        try:
            reply = await context.session.rpc(self.reset_operation(), timeout=float(self.guard))
        except xml.RPCError as e:
            raise SupervisionFailed(f"supervision-watchdog-reset refused: {e}") from None
        except Exception as e:
            raise SupervisionFailed(f"supervision-watchdog-reset not answered: {type(e).__name__}: {e}") from None
        text = reply.root.findtext(".//" + _N + "next-update-at")
        if not text:
            raise SupervisionFailed("supervision-watchdog-reset answered without next-update-at")
        try:
            when = parse_time(text)
        except ValueError:
            raise SupervisionFailed(f"next-update-at is not a date-and-time: {text[:60]!r}") from None
        if when < context.clock.seconds() - 1:
            raise SupervisionFailed(f"next-update-at {text} is in the past")
        return text.strip()


class Supervisor:
    """The resets after the first, every interval minus the margin, until the session ends."""

    def __init__(self, action: OranSupervision, context: ActionContext) -> None:
        self.action = action
        self.context = context
        #: what the O-RU last said it expects (None: no reset has worked yet).
        self.next_update: str | None = None
        self.failing = False
        self.timer: Any = None

    def start(self) -> None:
        """Arm the next reset; stop when the session closes."""
        self._arm()
        self.context.session.closed.addBoth(self._stop)

    def _arm(self) -> None:
        self.timer = self.context.clock.callLater(self.action.interval - self.action.margin, self._tick)

    def _stop(self, result: Any) -> Any:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        return result

    def _tick(self) -> None:
        self.timer = None
        context = self.context
        if self.next_update is not None:
            late = context.clock.seconds() - parse_time(self.next_update)
            if late > 0:
                self.alarm(f"watchdog reset {late:.1f}s late (next-update-at was {self.next_update})")
        d = defer.Deferred.fromCoroutine(self.action.reset(context))
        d.addCallbacks(self._reset, self._failed)

    def _reset(self, next_update: str) -> None:
        self.next_update = next_update
        if self.failing:
            self.failing = False
            if self.context.alarm is not None:
                self.context.alarm("supervision-restored", f"supervision of {self.context.device.name} works again")
        if self.context.session.close_reason is None:
            self._arm()

    def _failed(self, failure: Any) -> None:
        self.alarm(failure.getErrorMessage())
        if self.context.session.close_reason is None:
            self._arm()

    def alarm(self, message: str) -> None:
        """The O-RU is not supervised as it should be: the device is marked, an event recorded."""
        self.failing = True
        self.context.log.warn("oran-supervision of {device}: {message}", device=self.context.device.name, message=message)
        if self.context.alarm is not None:
            self.context.alarm("supervision-failed", message)
