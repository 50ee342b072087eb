"""
A NETCONF server for the simulated device.

It speaks base:1.0 and base:1.1 (with the same framers the manager uses) and
implements what the manager's actions send, with RFC semantics:

* RFC 6241: ``get``, ``get-config`` (subtree and XPath filters),
  ``edit-config`` (running and candidate, ``nc:operation`` merge / replace /
  create / delete / remove), ``copy-config``, ``delete-config`` (startup),
  ``lock`` / ``unlock``, ``commit`` (confirmed, with rollback on timeout),
  ``cancel-commit``, ``discard-changes``, ``validate``, ``close-session``,
  ``kill-session``; every other operation gets ``operation-not-supported``.
* RFC 6022: ``get-schema`` and ``/netconf-state`` (capabilities, datastores
  and their locks, schemas, sessions, statistics).
* RFC 5277 / RFC 6470: ``create-subscription`` on the ``NETCONF`` stream with
  filters and replay; ``netconf-config-change``, ``netconf-session-start``
  and ``netconf-session-end`` notifications.

A L{Datastore} is the state of one device and is shared by all its sessions
(one L{NetconfServerProtocol} each): the running, candidate and startup
datastores, locks, a pending confirmed commit, the replay log and the list of
sessions.  Time comes from the datastore's C{clock} (the reactor unless one is
given), so tests drive confirmed-commit timeouts with C{task.Clock}.

This module holds the session protocol (framing, hello, dispatch of RPCs,
replies and errors).  The rest lives beside it and is re-exported here:
L{callhome.simulator.datastore} (the device), L{callhome.simulator.operations}
and L{callhome.simulator.subscriptions} (what a session answers),
L{callhome.simulator.editing}, L{callhome.simulator.filters},
L{callhome.simulator.yang}, L{callhome.simulator.errors},
L{callhome.simulator.times}, L{callhome.simulator.constants} and
L{callhome.simulator.xmltree}.
"""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any, Callable

from lxml import etree
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from callhome.logs import LevelLogger
from callhome.netconf import xml
from callhome.netconf import operations as ops
from callhome.netconf.framing import ChunkedFramer, EndOfMessageFramer, FramingError
from callhome.simulator.constants import (
    CAPABILITY_CANDIDATE,
    CAPABILITY_CONFIRMED_COMMIT,
    CAPABILITY_CONFIRMED_COMMIT_1_0,
    CAPABILITY_INTERLEAVE,
    CAPABILITY_MONITORING,
    CAPABILITY_NOTIFICATION,
    CAPABILITY_ROLLBACK_ON_ERROR,
    CAPABILITY_STARTUP,
    CAPABILITY_VALIDATE,
    CAPABILITY_VALIDATE_1_0,
    CAPABILITY_WITH_DEFAULTS,
    CAPABILITY_WRITABLE_RUNNING,
    CAPABILITY_XPATH,
    DATASTORES,
    DEFAULT_CONFIRM_TIMEOUT,
    MONITORING_NS,
    NETCONF_NOTIFICATIONS_NS,
    NETCONF_NS,
    NETMOD_NOTIFICATION_NS,
    NOTIFICATION_NS,
    STREAM,
    WITH_DEFAULTS_MODES,
    WITH_DEFAULTS_NS,
)
from callhome.simulator.datastore import DEFAULT_DATASTORE, REPLAY_LOG_SIZE, Datastore, Lock, PendingCommit
from callhome.simulator.editing import EDIT_OPERATIONS, edit, validate
from callhome.simulator.errors import RpcError, _bad
from callhome.simulator.filters import _xpath_namespaces, apply_filter, subtree_filter, xpath_filter
from callhome.simulator.operations import _OPERATIONS, SessionOperations
from callhome.simulator.supervision import OPERATION as SUPERVISION_OPERATION
from callhome.simulator.supervision import SessionSupervision
from callhome.simulator.supervision import _Silent as SilentReset
from callhome.simulator.subscriptions import SessionNotifications, Subscription
from callhome.simulator.times import format_time, parse_time
from callhome.simulator.xmltree import _elements, _local, _q, _tag
from callhome.simulator.yang import YANG_DIRECTORY, YangModule, load_module, load_modules

__all__ = [
    "CAPABILITY_CANDIDATE",
    "CAPABILITY_CONFIRMED_COMMIT",
    "CAPABILITY_CONFIRMED_COMMIT_1_0",
    "CAPABILITY_INTERLEAVE",
    "CAPABILITY_MONITORING",
    "CAPABILITY_NOTIFICATION",
    "CAPABILITY_ROLLBACK_ON_ERROR",
    "CAPABILITY_STARTUP",
    "CAPABILITY_VALIDATE",
    "CAPABILITY_VALIDATE_1_0",
    "CAPABILITY_WITH_DEFAULTS",
    "CAPABILITY_WRITABLE_RUNNING",
    "CAPABILITY_XPATH",
    "DATASTORES",
    "DEFAULT_CONFIRM_TIMEOUT",
    "DEFAULT_DATASTORE",
    "EDIT_OPERATIONS",
    "MONITORING_NS",
    "NETCONF_NOTIFICATIONS_NS",
    "NETCONF_NS",
    "NETMOD_NOTIFICATION_NS",
    "NOTIFICATION_NS",
    "REPLAY_LOG_SIZE",
    "STREAM",
    "WITH_DEFAULTS_MODES",
    "WITH_DEFAULTS_NS",
    "YANG_DIRECTORY",
    "Datastore",
    "Lock",
    "NetconfServerProtocol",
    "PendingCommit",
    "RpcError",
    "Subscription",
    "YangModule",
    "apply_filter",
    "edit",
    "format_time",
    "load_module",
    "load_modules",
    "parse_time",
    "subtree_filter",
    "validate",
    "xpath_filter",
]

_session_ids = itertools.count(1)


def _peer_host(transport: Any) -> str | None:
    """The manager's IP address, where the transport tells it."""
    try:
        peer = transport.getPeer()
    except Exception:
        return None
    for candidate in (peer, getattr(peer, "address", None)):
        host = getattr(candidate, "host", None)
        if isinstance(host, str):
            try:
                return str(ipaddress.ip_address(host))
            except ValueError:
                continue
    return None


def _avatar_username(transport: Any) -> str | None:
    """The SSH user, if the conch avatar behind the channel records one."""
    avatar = getattr(getattr(transport, "session", None), "avatar", None)
    name = getattr(avatar, "username", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return name if isinstance(name, str) and name else None


class NetconfServerProtocol(SessionOperations, SessionNotifications, SessionSupervision, Protocol):
    """
    One NETCONF server session of a device (a L{Datastore}).

    @cvar username: the user named in notifications and ``/netconf-state``.
    @ivar counters: this session's RFC 6022 counters.
    """

    log = LevelLogger(namespace="callhome.simulator")
    username = "admin"

    def __init__(self, datastore: Datastore, offer_base_1_1: bool = True) -> None:
        self.datastore = datastore
        self.offer_base_1_1 = offer_base_1_1
        self.session_id = next(_session_ids)
        self._framer: EndOfMessageFramer | ChunkedFramer = EndOfMessageFramer()
        self._hello_done = False
        self._closing = False
        self._ended = False
        self._end_reason = "dropped"
        # Notifications raised while this session's own rpc is answered wait
        # for its reply.
        self._held: list[tuple[float, list[etree._Element]]] | None = None
        self.rpcs_answered = 0
        self.subscription: Subscription | None = None
        self.login_time = datastore.clock.seconds()
        self.source_host: str | None = None
        self.counters = dict.fromkeys(("in-rpcs", "in-bad-rpcs", "out-rpc-errors", "out-notifications"), 0)

    @property
    def capabilities(self) -> list[str]:
        """What the hello offers (1.0 variants on a base:1.0-only device)."""
        base_1_1 = self.offer_base_1_1
        offered = [xml.BASE_1_0] + ([xml.BASE_1_1] if base_1_1 else [])
        offered += [
            CAPABILITY_WRITABLE_RUNNING,
            CAPABILITY_CANDIDATE,
            CAPABILITY_CONFIRMED_COMMIT if base_1_1 else CAPABILITY_CONFIRMED_COMMIT_1_0,
            CAPABILITY_ROLLBACK_ON_ERROR,
            CAPABILITY_VALIDATE if base_1_1 else CAPABILITY_VALIDATE_1_0,
            CAPABILITY_STARTUP,
            CAPABILITY_XPATH,
            CAPABILITY_WITH_DEFAULTS,
            CAPABILITY_NOTIFICATION,
            CAPABILITY_INTERLEAVE,
            CAPABILITY_MONITORING,
        ]
        return offered + [module.capability for module in self.datastore.modules]

    def describe(self, parent: etree._Element, namespace: str) -> None:
        """Add RFC 6470 common-session-parms (username, session-id, source-host)."""
        etree.SubElement(parent, _q("username", namespace)).text = self.username
        etree.SubElement(parent, _q("session-id", namespace)).text = str(self.session_id)
        if self.source_host:
            etree.SubElement(parent, _q("source-host", namespace)).text = self.source_host

    # --- Protocol ----------------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Send our hello at once, as RFC 6241 §8.1 asks."""
        self.login_time = self.datastore.clock.seconds()
        self.source_host = _peer_host(self.transport)
        self.username = _avatar_username(self.transport) or self.username
        assert self.transport is not None  # set by makeConnection
        self.transport.write(EndOfMessageFramer.encode(ops.hello(self.capabilities, self.session_id)))
        self.datastore.session_started(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Release what the session held and tell the other sessions."""
        self._end("closed" if self._closing else self._end_reason)

    def _end(self, reason: str, killed_by: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self._unsubscribe()
        self._stop_supervision()
        self.datastore.session_ended(self, reason, killed_by)

    def kill(self, killed_by: int | None = None) -> None:
        """End this session at once (kill-session): locks, commit, transport."""
        self._end("killed", killed_by)
        if self.transport is not None:
            self.transport.loseConnection()


    def dataReceived(self, data: bytes) -> None:
        """Frame and answer the manager's messages."""
        try:
            framer = self._framer
            if not self._hello_done:
                # Until the hello, framing is base:1.0 (RFC 6242 §4.1).
                assert isinstance(framer, EndOfMessageFramer)
                messages = framer.feed(data, max_messages=1)
            else:
                messages = framer.feed(data)
        except FramingError as e:
            self.log.warn("framing error from manager: {error}", error=e)
            assert self.transport is not None
            self.transport.loseConnection()
            return
        for message in messages:
            if self._closing or self._ended:
                return
            if not self._hello_done:
                self._hello(message)
                return
            self._rpc(message)

    def _parse(self, message: bytes) -> etree._Element | None:
        """Parse a message from the manager; hang up on a bad one."""
        try:
            return xml.parse_message(message)
        except xml.XMLRejected as e:
            self.log.warn("bad message from manager: {error}", error=e)
            assert self.transport is not None
            self.transport.loseConnection()
            return None

    def _hello(self, message: bytes) -> None:
        hello = self._parse(message)
        if hello is None:
            self.datastore.statistics["in-bad-hellos"] += 1
            self._end_reason = "bad-hello"
            return
        capabilities = {(c.text or "").strip() for c in hello.iter(xml.qname("capability"))}
        self._hello_done = True
        old = self._framer
        assert isinstance(old, EndOfMessageFramer)  # the hello's framing is base:1.0
        if self.offer_base_1_1 and xml.BASE_1_1 in capabilities:
            self._framer = ChunkedFramer()
        rest = old.take_remaining()
        if rest or self._framer is not old:
            self.dataReceived(rest)

    @property
    def chunked(self) -> bool:
        """Whether the session uses base:1.1 framing."""
        return isinstance(self._framer, ChunkedFramer)

    def _send(self, message: bytes) -> None:
        framer = ChunkedFramer if self.chunked else EndOfMessageFramer
        assert self.transport is not None
        self.transport.write(framer.encode(message))

    # --- rpcs ------------------------------------------------------------------------------

    def _rpc(self, message: bytes) -> None:
        """Answer one message after the hello."""
        if self._closing or self._ended:
            return
        self.counters["in-rpcs"] += 1
        self.datastore.statistics["in-rpcs"] += 1
        try:
            request = xml.parse_message(message)
        except xml.XMLRejected as e:
            self._malformed(f"the message is not acceptable XML: {e}")
            return
        if request.tag != _q("rpc"):
            self._malformed(f"expected an <rpc>, got <{_local(request)}>")
            return
        nsmap: dict[str | None, str] = {None: NETCONF_NS}
        nsmap.update(_xpath_namespaces(request))
        reply = etree.Element(_q("rpc-reply"), nsmap=nsmap)
        # RFC 6241 §4.2: every attribute of <rpc>, message-id included.
        for name, value in request.attrib.items():
            reply.set(name, value)
        after: list[Callable[[], None]] = []
        self._held = []
        try:
            if request.get("message-id") is None:
                raise RpcError("missing-attribute", "the rpc has no message-id", type="rpc", info=[("bad-attribute", "message-id"), ("bad-element", "rpc")])
            operations = _elements(request)
            if not operations:
                raise RpcError("operation-not-supported", "operation (none) is not supported")
            operation = operations[0]
            known = _OPERATIONS.get(_tag(operation)) or SUPERVISION_OPERATION.get(_tag(operation))
            if known is None:
                raise RpcError("operation-not-supported", f"operation {_local(operation)} is not supported")
            method, parameters = known
            for parameter in _elements(operation):
                if parameter.tag not in parameters:
                    raise _bad("unknown-element", _local(parameter), f"unexpected parameter <{_local(parameter)}> of {_local(operation)}")
            try:
                result = getattr(self, method)(operation, after)
            except SilentReset:
                # A simulated O-RU that never answers this rpc (notifications still flow).
                waiting, self._held = list(self._held or []), None
                for when, content in waiting:
                    self._send_notification(when, content)
                return
            except RpcError:
                raise
            except Exception as e:
                # A bug here must not leave the manager waiting for a reply.
                self.log.failure("simulator failed on {operation}", operation=_local(operation))
                raise RpcError("operation-failed", f"internal error: {e}", type="application") from None
        except RpcError as e:
            self.counters["out-rpc-errors"] += 1
            self.datastore.statistics["out-rpc-errors"] += 1
            if e.tag in ("missing-attribute", "operation-not-supported", "unknown-element", "malformed-message"):
                self.counters["in-bad-rpcs"] += 1
                self.datastore.statistics["in-bad-rpcs"] += 1
            reply.append(e.element())
        else:
            if result is None:
                etree.SubElement(reply, _q("ok"))
            else:
                reply.append(result)
        self._send(etree.tostring(reply, xml_declaration=True, encoding="UTF-8"))
        self.rpcs_answered += 1
        held, self._held = self._held or [], None
        for action in after:
            action()
        for when, content in held:
            self._send_notification(when, content)
        if self._closing:
            self.transport.loseConnection()

    def _malformed(self, reason: str) -> None:
        """
        RFC 6241: malformed-message is base:1.1 only; a base:1.0 session is
        closed as before.
        """
        self.log.warn("bad message from manager: {error}", error=reason)
        self.counters["in-bad-rpcs"] += 1
        self.datastore.statistics["in-bad-rpcs"] += 1
        if not self.chunked:
            assert self.transport is not None
            self.transport.loseConnection()
            return
        reply = etree.Element(_q("rpc-reply"), nsmap={None: NETCONF_NS})
        reply.append(RpcError("malformed-message", reason, type="rpc").element())
        self.counters["out-rpc-errors"] += 1
        self.datastore.statistics["out-rpc-errors"] += 1
        self._send(etree.tostring(reply, xml_declaration=True, encoding="UTF-8"))
