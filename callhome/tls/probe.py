"""
Keepalives for persistent TLS sessions, at the NETCONF level.

RFC 8071 §7 asks for TLS heartbeats (RFC 6520); OpenSSL 3 removed them.
So a held TLS session is checked the way any NETCONF client can: every
``tls.probe_interval`` seconds a ``<get>`` with an empty subtree filter,
which selects nothing (RFC 6241 §6.4.2) and which every server answers,
with ``<data/>`` or an ``<rpc-error>``; either proves the device alive.
After ``tls.probe_max_missed`` unanswered probes the call is ended.  TCP
keepalive is switched on as well, for the dead peer a NAT forgot.
"""

from __future__ import annotations

from typing import Callable

from lxml import etree
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from callhome.netconf import xml
from callhome.netconf.session import NetconfSession, RPCReply, RPCTimeout, SessionClosed
from callhome.timerwheel import Job, wheel_for


def probe_operation() -> etree._Element:
    """``<get><filter type="subtree"/></get>``: asks for nothing, answered by everyone."""
    op = etree.Element(xml.qname("get"), nsmap={None: xml.NETCONF_NS})
    etree.SubElement(op, xml.qname("filter"), type="subtree")
    return op

class Probe:
    """
    Probes one NETCONF session and counts the unanswered probes.

    @ivar missed: probes in a row that went unanswered.
    @ivar sent: probes sent in all.
    """

    def __init__(
        self, session: NetconfSession, clock: IReactorTime, interval: float, max_missed: int,
        on_dead: Callable[[str], None],
    ) -> None:
        self.session = session
        self.interval = interval
        self.max_missed = max_missed
        self.on_dead = on_dead
        self.missed = 0
        self.sent = 0
        self._outstanding: defer.Deferred[RPCReply] | None = None
        self.clock = clock
        self._job: Job | None = None

    def start(self) -> None:
        """Start probing, the first after C{interval}."""
        # One timer for every session's keepalives (callhome.timerwheel).
        self._job = wheel_for(self.clock).every(self.interval, self._tick)

    def stop(self) -> None:
        """Stop probing (the call ended)."""
        if self._job is not None:
            self._job.stop()
            self._job = None

    def _tick(self) -> None:
        if self.missed >= self.max_missed:
            self.stop()
            self.on_dead(f"no answer to {self.missed} NETCONF keepalive probes in {self.missed * self.interval:g}s")
            return
        if self._outstanding is not None:
            return  # the last probe is still within its time: counted when it gives up
        self.sent += 1
        # A probe gives up just before the next is due, so a slow device is
        # counted missed once per interval, never twice.
        d = self.session.rpc(probe_operation(), timeout=self.interval * 0.9, background=True)
        self._outstanding = d
        d.addCallbacks(self._answered, self._failed)

    def _answered(self, _: object) -> None:
        self._outstanding = None
        self.missed = 0

    def _failed(self, failure: Failure) -> None:
        self._outstanding = None
        if failure.check(xml.RPCError):
            self.missed = 0  # an rpc-error is an answer
        elif failure.check(RPCTimeout):
            self.missed += 1
        elif failure.check(SessionClosed):
            self.stop()
