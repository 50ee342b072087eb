"""
The NETCONF client protocol (RFC 6241) over any byte transport.

:class:`NetconfSession` is a plain Twisted ``Protocol``: on a call home its
transport is the SSH ``netconf`` subsystem channel, in unit tests a
``StringTransport``.  It sends our hello at once, waits for the device's,
picks the framing both sides support, then matches ``<rpc-reply>`` to the
Deferred that :meth:`NetconfSession.rpc` returned by message-id.

A device that breaks the protocol (bad framing, hostile or malformed XML, a
second hello, a reply to nothing we asked) gets its session closed with a
specific reason in :attr:`NetconfSession.close_reason`; every RPC still
waiting then fails with :class:`SessionClosed`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import AbstractSet, Any, Callable

from lxml import etree
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from callhome.logs import LevelLogger
from callhome.netconf import operations, xml
from callhome.netconf.framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    ChunkedFramer,
    EndOfMessageFramer,
    FramingError,
    OversizedMessage,
)


#: ids of given-up RPCs remembered at most (a late reply to an older one
#: closes the session as a reply to nothing we asked).
MAX_ABANDONED = 1000
#: The empty set every session starts with (see NetconfSession.__init__).
_NONE: frozenset[str] = frozenset()


class SessionClosed(Exception):
    """The NETCONF session ended before the RPC was answered."""


class ReplyTooLarge(Exception):
    """The reply to an RPC was over max_message_size: dropped, the session going on."""


#: how far past max_message_size a reply is still dropped (not the session).
DISCARD_FACTOR = 4

#: the message-id of a reply's head (its first bytes).
_MESSAGE_ID = re.compile(rb"""<(?:\w+:)?rpc-reply\b[^>]*?\bmessage-id\s*=\s*(["'])(.*?)\1""", re.S)


class RPCTimeout(Exception):
    """The device did not answer an RPC in time."""


class HelloTimeout(SessionClosed):
    """
    The device did not send its hello in time: what L{NetconfSession.hello_received}
    fails with then (a kind of L{SessionClosed}, as the session is gone too).
    """


@dataclass(frozen=True)
class RPCReply:
    """
    A successful ``<rpc-reply>``.

    @ivar raw: the reply exactly as the device sent it (what results store).
    @ivar root: the ``<rpc-reply>`` element; for a large reply only its tag
        and attributes (see L{tree}).
    @ivar warnings: ``<rpc-error>`` entries of severity warning.
    @ivar scanned: True when the reply was only checked, not parsed (large).
    """

    message_id: str
    raw: bytes
    root: etree._Element
    warnings: list[xml.RPCError] = field(default_factory=list)
    scanned: bool = False

    @cached_property
    def tree(self) -> etree._Element:
        """The whole parsed reply (parsed now, once, for a large reply)."""
        return xml.parse_message(self.raw) if self.scanned else self.root

    @property
    def ok(self) -> bool:
        """Whether the reply is a bare ``<ok/>``."""
        return self.tree.find(xml.qname("ok")) is not None

    @property
    def data(self) -> etree._Element | None:
        """The ``<data>`` element of a get/get-config reply, if any."""
        return self.tree.find(xml.qname("data"))


NotificationHandler = Callable[[etree._Element, bytes], None]


_FIRST_TAG = re.compile(rb"<\s*(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)")


def operation_name(operation: etree._Element | bytes | str) -> str:
    """The local name of an operation (``get``, ``edit-config``...), for metrics."""
    if isinstance(operation, etree._Element):
        return etree.QName(operation).localname
    text = operation.encode("utf-8") if isinstance(operation, str) else operation
    match = _FIRST_TAG.search(text[:512])
    return match.group(1).decode("ascii", "replace") if match else "unknown"


class NetconfSession(Protocol):
    """
    One NETCONF client session.

    @ivar hello_received: fires with the device's L{xml.Hello} once hellos
        are exchanged; fails if the session ends first.
    @ivar closed: fires with the close reason (a string) when the transport
        is gone.
    """

    log = LevelLogger(namespace="callhome.netconf")

    #: Capabilities we offer; base:1.1 is added when enabled.
    CLIENT_CAPABILITIES = (xml.BASE_1_0,)

    def __init__(
        self,
        clock: IReactorTime,
        *,
        offer_base_1_1: bool = True,
        hello_timeout: float = 30.0,
        rpc_timeout: float = 60.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        on_notification: NotificationHandler | None = None,
        label: str = "",
    ) -> None:
        self.clock = clock
        self.offer_base_1_1 = offer_base_1_1
        self.hello_timeout = hello_timeout
        self.rpc_timeout = rpc_timeout
        self.max_message_size = max_message_size
        self.on_notification = on_notification
        self.label = label
        self.hello: xml.Hello | None = None
        self.close_reason: str | None = None
        #: closes the connection when the session ends it (default: the
        #: transport's loseConnection); a TLS call bounds the close with it.
        self.on_disconnect: Callable[[], None] | None = None
        self.hello_received: defer.Deferred[xml.Hello] = defer.Deferred()
        self._hello_expired = False
        self.closed: defer.Deferred[str] = defer.Deferred()
        self.bytes_received = 0
        #: when the last complete message arrived (persistent idle timeout).
        self.last_message_at = clock.seconds()
        #: message ids of background RPCs awaiting a reply (see L{rpc}).
        # Empty until used (most sessions never use them): a set is 216 bytes.
        self._background: AbstractSet[str] = _NONE
        self._background_replies = 0
        self._framer: EndOfMessageFramer | ChunkedFramer = EndOfMessageFramer(max_message_size)
        self._chunked = False
        self._next_message_id = 1
        self._pending: dict[str, defer.Deferred[RPCReply]] = {}
        # Ids of RPCs we gave up on: a late reply to one is dropped, not
        # treated as a reply to something we never asked.
        self._abandoned: AbstractSet[str] = _NONE
        self._hello_timer: IDelayedCall | None = None
        self._connected = False
        #: told (operation, outcome, seconds) as each RPC ends: outcome is
        #: ok, rpc-error, timeout, closed or cancelled (metrics).
        self.on_rpc_done: Callable[[str, str, float], None] | None = None

    # --- Protocol -------------------------------------------------------------

    def connectionMade(self) -> None:
        """Send our hello and start waiting for the device's."""
        self._connected = True
        capabilities = list(self.CLIENT_CAPABILITIES)
        if self.offer_base_1_1:
            capabilities.append(xml.BASE_1_1)
        assert self.transport is not None  # set by makeConnection
        self.transport.write(EndOfMessageFramer.encode(operations.hello(capabilities)))
        self._hello_timer = self.clock.callLater(self.hello_timeout, self._hello_timed_out)

    def dataReceived(self, data: bytes) -> None:
        """Frame, parse and dispatch what the device sent."""
        if self.close_reason is not None:
            return
        self.bytes_received += len(data)
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        """Feed the current framer and handle the messages it completes."""
        try:
            if isinstance(self._framer, EndOfMessageFramer) and self.hello is None:
                # Stop at the hello: what follows may be chunked.
                messages = self._framer.feed(data, max_messages=1)
            else:
                messages = self._framer.feed(data)
        except FramingError as e:
            # Deliver what arrived intact before the error, then close.
            self._dispatch(e.messages)
            self.abort(f"framing error: {e}")
            return
        self._dispatch(messages)

    def _dispatch(self, messages: list[bytes]) -> None:
        """Handle complete messages in order, the hello first."""
        if not messages:
            return
        # Replies to background RPCs (a keepalive probe) are not activity:
        # idle_timeout must still see a session nobody uses.
        self._background_replies = 0
        try:
            for message in messages:
                if self.close_reason is not None:
                    return
                if self.hello is None:
                    hello_framer = self._framer
                    self._handle_hello_message(message)
                    if self.hello is not None:
                        # Whatever followed the hello goes to the framer now in
                        # use: the chunked one, or the same one continuing.
                        if self._framer is not hello_framer:
                            self._receive(hello_framer.take_remaining())
                        else:
                            self._receive(b"")
                    return
                if isinstance(message, OversizedMessage):
                    self._oversized(message)
                    continue
                self._handle(message)
        finally:
            if self._background_replies < len(messages):
                self.last_message_at = self.clock.seconds()

    def _oversized(self, message: OversizedMessage) -> None:
        """A reply over max_message_size was dropped whole: fail its RPC; the session goes on."""
        found = _MESSAGE_ID.search(message)
        message_id = found.group(2).decode("ascii", "replace") if found else None
        deferred = self._pending.pop(message_id, None) if message_id is not None else None
        reason = f"reply of {message.size} bytes exceeds max_message_size ({self.max_message_size}): dropped"
        self.log.warn("NETCONF session {label}: message-id {id}: {reason}", label=self.label, id=message_id or "?", reason=reason)
        if deferred is not None:
            deferred.errback(ReplyTooLarge(reason))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Fail every pending RPC and report the session closed."""
        self._connected = False
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        if self.close_reason is None:
            self.close_reason = "connection closed"
        error = SessionClosed(self.close_reason)
        pending, self._pending = self._pending, {}
        for deferred in pending.values():
            deferred.errback(error)
        if not self.hello_received.called:
            never = HelloTimeout if self._hello_expired else SessionClosed
            self.hello_received.errback(never(self.close_reason))
        self.closed.callback(self.close_reason)

    # --- our API ------------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The session-id the device gave in its hello."""
        return self.hello.session_id if self.hello else None

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The capabilities the device gave in its hello."""
        return self.hello.capabilities if self.hello else ()

    @property
    def framing(self) -> str:
        """``base:1.1`` (chunked) or ``base:1.0`` (end-of-message)."""
        return "base:1.1" if self._chunked else "base:1.0"

    def rpc(self, operation: etree._Element | bytes | str, timeout: float | None = None, background: bool = False) -> defer.Deferred[RPCReply]:
        """
        Send an operation; return a Deferred for its reply.

        A C{background} RPC (a keepalive probe) is not activity: its reply
        leaves L{last_message_at} alone.

        The Deferred fails with L{xml.RPCError} on an ``rpc-error`` of
        severity error, L{RPCTimeout} after C{timeout} seconds (default: the
        session's), and L{SessionClosed} if the session ends first.
        Cancelling it abandons the RPC.
        """
        if self.hello is None:
            return defer.fail(SessionClosed("no NETCONF session established"))
        if self.close_reason is not None or not self._connected:
            return defer.fail(SessionClosed(self.close_reason or "session closed"))
        message_id = str(self._next_message_id)
        self._next_message_id += 1

        def cancel(deferred: defer.Deferred[RPCReply]) -> None:
            if self._pending.pop(message_id, None) is not None:
                abandoned = self._abandoned if isinstance(self._abandoned, set) else set()
                if len(abandoned) >= MAX_ABANDONED:
                    abandoned.pop()
                abandoned.add(message_id)
                self._abandoned = abandoned

        deferred: defer.Deferred[RPCReply] = defer.Deferred(cancel)
        self._pending[message_id] = deferred
        if background:
            self._background = (self._background if isinstance(self._background, set) else set()) | {message_id}
        self._send(operations.rpc(message_id, operation))
        seconds = self.rpc_timeout if timeout is None else timeout

        def timed_out(failure: Failure) -> Failure:
            failure.trap(defer.CancelledError, defer.TimeoutError)
            if failure.check(defer.TimeoutError):
                raise RPCTimeout(f"no reply to rpc {message_id} within {seconds:g}s")
            return failure

        deferred.addTimeout(seconds, self.clock)
        deferred.addErrback(timed_out)
        if self.on_rpc_done is not None:
            deferred.addBoth(self._report_rpc, operation_name(operation), self.clock.seconds())
        return deferred

    def _report_rpc(self, result: Any, operation: str, started: float) -> Any:
        if isinstance(result, Failure):
            if result.check(xml.RPCError):
                outcome = "rpc-error"
            elif result.check(RPCTimeout):
                outcome = "timeout"
            elif result.check(defer.CancelledError):
                outcome = "cancelled"
            else:
                outcome = "closed"
        else:
            outcome = "ok"
        assert self.on_rpc_done is not None
        self.on_rpc_done(operation, outcome, self.clock.seconds() - started)
        return result

    def close(self, timeout: float = 10.0) -> defer.Deferred[str]:
        """
        End the session politely: ``<close-session>``, then disconnect.

        Returns L{closed}.  The transport is closed whether or not the device
        answers, so a stalled device cannot keep the session open.
        """
        if self._connected and self.hello is not None and self.close_reason is None:
            d = self.rpc(operations.close_session(), timeout=timeout)
            d.addErrback(lambda f: None)
            d.addBoth(lambda _: self._disconnect("closed by manager"))
        elif self._connected:
            self._disconnect("closed by manager")
        return self.closed

    def abort(self, reason: str) -> None:
        """Close the session at once because of C{reason} (logged)."""
        if self.close_reason is not None:
            return
        self.log.warn(
            "closing NETCONF session {label}: {reason}", label=self.label, reason=reason
        )
        self._disconnect(reason)

    # --- internals ---------------------------------------------------------------

    def _disconnect(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if self.transport is not None and self._connected:
            if self.on_disconnect is not None:
                self.on_disconnect()
            else:
                self.transport.loseConnection()

    def _send(self, message: bytes) -> None:
        framer = ChunkedFramer if self._chunked else EndOfMessageFramer
        assert self.transport is not None  # set by makeConnection
        self.transport.write(framer.encode(message))

    def _hello_timed_out(self) -> None:
        self._hello_timer = None
        self._hello_expired = True
        self.abort(f"no hello from the device within {self.hello_timeout:g}s")

    def _parse(self, message: bytes, scan: bool = False) -> etree._Element | None:
        """
        Parse a message (or, with C{scan}, only check it and read its root);
        close the session and return None if it is rejected.
        """
        try:
            return xml.scan_message(message) if scan else xml.parse_message(message)
        except xml.XMLRejected as e:
            self.abort(f"rejected message: {e}")
            return None

    def _handle(self, message: bytes) -> None:
        """Dispatch one message received after the hello."""
        # A large message without an rpc-error needs no tree: check it and
        # read its root only (speed and memory for 50 MB replies).
        scan = len(message) > xml.STREAM_THRESHOLD and not xml.has_rpc_error(message)
        root = self._parse(message, scan)
        if root is None:
            return
        tag = root.tag
        if scan and tag == xml.qname("notification", xml.NOTIFICATION_NS):
            # Handlers read notifications: give them the whole tree.
            root = self._parse(message)
            if root is None:
                return
        if tag == xml.qname("rpc-reply"):
            self._handle_reply(root, message, scan)
        elif tag == xml.qname("notification", xml.NOTIFICATION_NS):
            self._handle_notification(root, message)
        elif tag == xml.qname("hello"):
            self.abort("device sent a second hello")
        else:
            self.abort(f"unexpected message <{xml.local_name(root)}>")

    def _handle_hello_message(self, message: bytes) -> None:
        """Accept the device's hello and choose the framing."""
        root = self._parse(message)
        if root is None:
            return
        try:
            hello = xml.parse_hello(root)
        except xml.XMLRejected as e:
            self.abort(f"bad hello: {e}")
            return
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None
        if not (self.offer_base_1_1 and hello.base_1_1) and xml.BASE_1_0 not in hello.capabilities:
            # The device speaks only base:1.1 and we may not: no common framing.
            self.abort("device offers only base:1.1 and base:1.1 is disabled")
            return
        self.hello = hello
        if self.offer_base_1_1 and hello.base_1_1:
            # A reply over the limit is dropped and its RPC failed, the session
            # going on, up to DISCARD_FACTOR times the limit (then closed).
            self._framer = ChunkedFramer(self.max_message_size, discard_limit=DISCARD_FACTOR * self.max_message_size)
            self._chunked = True
        self.log.debug(
            "NETCONF hello from {label}: session {session_id}, {framing}",
            label=self.label, session_id=hello.session_id, framing=self.framing,
        )
        self.hello_received.callback(hello)

    def _handle_reply(self, root: etree._Element, raw: bytes, scanned: bool = False) -> None:
        message_id = root.get("message-id")
        if message_id is None:
            self.abort("rpc-reply without a message-id")
            return
        deferred = self._pending.pop(message_id, None)
        if message_id in self._background:
            self._background = self._background - {message_id}
            self._background_replies += 1
        if deferred is None:
            if message_id in self._abandoned:
                self._abandoned = self._abandoned - {message_id}
                self.log.info(
                    "late reply to abandoned rpc {message_id} from {label} dropped",
                    message_id=message_id, label=self.label,
                )
                return
            self.abort(f"rpc-reply with unknown message-id {message_id[:64]!r}")
            return
        errors = xml.parse_rpc_errors(root)
        fatal = [e for e in errors if e.severity != "warning"]
        if fatal:
            first = fatal[0]
            first.errors = errors
            first.reply = raw
            deferred.errback(first)
        else:
            deferred.callback(RPCReply(message_id, raw, root, errors, scanned))

    def _handle_notification(self, root: etree._Element, raw: bytes) -> None:
        if self.on_notification is None:
            self.log.info("notification from {label} dropped: nobody subscribed", label=self.label)
            return
        try:
            self.on_notification(root, raw)
        except Exception:
            self.log.failure("notification handler failed for {label}", label=self.label)
