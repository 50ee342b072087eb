"""
O-RAN M-plane supervision (``o-ran-supervision``), as an O-RU does it: the
controller calls ``supervision-watchdog-reset`` before the supervision
timer (notification interval + guard timer overhead) runs out; the O-RU
raises ``supervision-notification`` every interval while supervised; a
timer that runs out is "loss of supervision": the O-RU drops the session.

``--supervision-mode`` makes a misbehaving O-RU for tests: ``error``
(an rpc-error), ``silent`` (never answers), ``past`` (next-update-at in
the past).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lxml import etree

from callhome.simulator.errors import RpcError, _bad
from callhome.simulator.times import format_time
from callhome.simulator.xmltree import _q, _text

if TYPE_CHECKING:
    from callhome.simulator.datastore import Datastore

ORAN_SUPERVISION_NS = "urn:o-ran:supervision:1.0"

#: the operation entry the session's dispatch table gains.
OPERATION = {
    _q("supervision-watchdog-reset", ORAN_SUPERVISION_NS): (
        "_supervision_watchdog_reset",
        frozenset({_q(t, ORAN_SUPERVISION_NS) for t in ("supervision-notification-interval", "guard-timer-overhead")}),
    ),
}


class SessionSupervision:
    """The watchdog of one session (a mixin of the simulator's NETCONF session)."""

    if TYPE_CHECKING:
        datastore: Datastore
        session_id: int
        transport: Any

    _watchdog: Any = None
    _heartbeat: Any = None

    def _supervision_watchdog_reset(self, operation: etree._Element, after: list) -> etree._Element | None:
        datastore = self.datastore
        mode = datastore.supervision_mode
        if mode == "error":
            raise RpcError("operation-failed", "watchdog reset refused (simulated)", type="application")
        if mode == "silent":
            raise _Silent()
        interval = self._uint(operation, "supervision-notification-interval", 60)
        guard = self._uint(operation, "guard-timer-overhead", 10)
        clock = datastore.clock
        now = clock.seconds()
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = clock.callLater(interval + guard, self._lost_supervision, interval + guard)
        # The notifications keep their own beat: a reset does not restart it.
        if self._heartbeat is None or not self._heartbeat.active():
            self._heartbeat = clock.callLater(interval, self._supervision_notification, interval)
        datastore.supervision_resets += 1
        output = etree.Element(_q("next-update-at", ORAN_SUPERVISION_NS), nsmap={None: ORAN_SUPERVISION_NS})
        output.text = format_time(now - 3600 if mode == "past" else now + interval)
        return output

    @staticmethod
    def _uint(operation: etree._Element, name: str, default: int) -> int:
        element = operation.find(_q(name, ORAN_SUPERVISION_NS))
        if element is None:
            return default
        text = _text(element)
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise _bad("invalid-value", name, f"{name} must be a uint16 above 0")
        return int(text)

    def _supervision_notification(self, interval: int) -> None:
        event = etree.Element(_q("supervision-notification", ORAN_SUPERVISION_NS), nsmap={None: ORAN_SUPERVISION_NS})
        self.datastore.notify(event)
        self._heartbeat = self.datastore.clock.callLater(interval, self._supervision_notification, interval)

    def _lost_supervision(self, after: float) -> None:
        """The timer ran out: loss of supervision; the O-RU drops the session."""
        self._watchdog = None
        self.datastore.supervision_lost += 1
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        if self.transport is not None:
            self.transport.loseConnection()

    def _stop_supervision(self) -> None:
        for timer in (self._watchdog, self._heartbeat):
            if timer is not None and timer.active():
                timer.cancel()
        self._watchdog = self._heartbeat = None


class _Silent(Exception):  # noqa: N818 - a signal, not an error
    """The simulated O-RU does not answer this reset at all."""
