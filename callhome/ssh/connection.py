"""
The SSH connection service of a call and its one session channel, which
runs the ``netconf`` subsystem (RFC 6242 §3) and carries a
:class:`~callhome.netconf.session.NetconfSession`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, TypedDict, Unpack

from twisted.conch.ssh import channel, common, connection
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from callhome.call.record import CallRecord, CallState
from callhome.logs import conch_logger
from callhome.netconf.session import NetconfSession


if TYPE_CHECKING:  # pragma: no cover
    from twisted.conch.interfaces import IConchUser

    from callhome.config import NetconfSettings


class CallSide(Protocol):
    """
    What the connection and its channel need of the call's transport
    (L{callhome.ssh.transport.CallHomeTransport}), named here so this
    module does not import the transport that imports it.
    """

    call: CallRecord | None
    handler: Any

    def fail(self, reason: str) -> None:
        """End the call now with C{reason}."""

    def hang_up(self) -> None:
        """End the call once its NETCONF session is over."""

    def authenticated(self) -> None:
        """Userauth succeeded."""

    def netconf_started(self, session: NetconfSession) -> None:
        """The device's hello arrived."""

    def stop_keepalive(self) -> None:
        """The call ended: no more keepalives."""


class ChannelOptions(TypedDict, total=False):
    """The arguments of conch's C{SSHChannel} a L{NetconfChannel} passes on (it sets the window itself)."""

    remoteWindow: int
    remoteMaxPacket: int
    conn: connection.SSHConnection | None
    data: bytes | None
    avatar: "IConchUser | None"


class CallHomeConnection(connection.SSHConnection):
    """The SSH connection service: opens the one NETCONF channel."""

    _log = conch_logger("callhome.ssh.conch")

    def __init__(self, call_transport: CallSide) -> None:
        super().__init__()
        self.call_transport = call_transport

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> int:
        """Answer the device's keepalives (keepalive@openssh.com and kin) with success."""
        return 1 if requestType.startswith(b"keepalive@") else 0

    def serviceStopped(self) -> None:
        """The call ended: no more keepalives."""
        self.call_transport.stop_keepalive()
        super().serviceStopped()

    def send_global_request(self, payload: bytes, on_answer: Callable[[], None]) -> None:
        """
        Send a prebuilt SSH_MSG_GLOBAL_REQUEST with want-reply set;
        C{on_answer} runs when the device answers, success or failure.

        For keepalives: conch's C{sendGlobalRequest} gives a Deferred per
        request, and OpenSSH answers keepalive@openssh.com with a failure,
        so every keepalive built a L{Failure} as well.  Here the answer is
        one call.  Requests and answers stay in order in conch's queue.
        """
        assert self.transport is not None
        self.transport.sendPacket(connection.MSG_GLOBAL_REQUEST, payload)
        self.deferreds["global"].append(on_answer)

    def _global_answer(self, what: str) -> bool:
        """An answer to a global request arrived: True if it was one of ours (handled here)."""
        queue = self.deferreds["global"]
        if not queue:
            self.call_transport.fail(f"the device sent a global request {what} for nothing we asked")
            return True
        if isinstance(queue[0], defer.Deferred):
            return False
        queue.pop(0)()
        return True

    def ssh_REQUEST_SUCCESS(self, packet: bytes) -> None:
        """A global request succeeded."""
        if not self._global_answer("success"):
            super().ssh_REQUEST_SUCCESS(packet)

    def ssh_REQUEST_FAILURE(self, packet: bytes) -> None:
        """A global request failed (OpenSSH's answer to a keepalive)."""
        if not self._global_answer("failure"):
            super().ssh_REQUEST_FAILURE(packet)

    def _cleanupGlobalDeferreds(self) -> None:
        """The connection stopped: errback conch's Deferreds; our answer callbacks are dropped."""
        self.deferreds["global"] = [d for d in self.deferreds["global"] if isinstance(d, defer.Deferred)]
        super()._cleanupGlobalDeferreds()

    def serviceStarted(self) -> None:
        """Authenticated: open the session channel for NETCONF."""
        super().serviceStarted()
        self.call_transport.authenticated()
        record = self.call_transport.call
        assert record is not None and record.device is not None
        device = record.device
        settings = self.call_transport.handler.netconf_settings(device)
        self.openChannel(NetconfChannel(self.call_transport, settings, conn=self))


class NetconfChannel(channel.SSHChannel):
    """
    A session channel running the ``netconf`` subsystem (RFC 6242 §3).

    The channel is the NetconfSession's transport: C{write} and
    C{loseConnection} are the channel's own.
    """

    name = b"session"
    _log = conch_logger("callhome.ssh.conch")

    #: A larger window than conch's default lets big replies stream without
    #: waiting for a window adjust every 128 KiB.
    WINDOW = 2 * 1024 * 1024

    def __init__(self, call_transport: CallSide, settings: "NetconfSettings", **kwargs: Unpack[ChannelOptions]) -> None:
        super().__init__(localWindow=self.WINDOW, localMaxPacket=32768, **kwargs)
        self.call_transport = call_transport
        self.settings = settings
        self.session: NetconfSession | None = None
        # A device may send its hello before it answers the subsystem
        # request (conch's own server does); keep those bytes for the session.
        self._early: list[bytes] = []

    def channelOpen(self, specificData: bytes) -> None:
        """Ask for the netconf subsystem."""
        assert self.conn is not None  # the connection opened this channel
        d = self.conn.sendRequest(self, b"subsystem", common.NS(b"netconf"), wantReply=True)
        d.addCallbacks(self._subsystem_started, self._subsystem_refused)

    def openFailed(self, reason: Failure | BaseException) -> None:
        """
        The device would not open a session channel, or the connection
        ended before it did: conch passes a Failure for a refusal but a bare
        C{ConnectionLost} from C{serviceStopped}.
        """
        error = reason.value if isinstance(reason, Failure) else reason
        if isinstance(error, ConnectionLost):
            self.call_transport.fail("connection lost while opening the session channel")
            return
        self.call_transport.fail(f"device refused the session channel: {error}")

    def _subsystem_started(self, _: object) -> None:
        assert self.call_transport.call is not None
        self.call_transport.call.advance(CallState.HELLO)
        device = self.call_transport.call.device
        self.session = NetconfSession(
            self.call_transport.handler.clock,
            offer_base_1_1=self.settings.offer_base_1_1,
            hello_timeout=self.settings.hello_timeout,
            rpc_timeout=self.settings.rpc_timeout,
            max_message_size=self.settings.max_message_size,
            label=device.name if device else self.call_transport.call.peer,
        )
        self.session.hello_received.addCallbacks(
            lambda hello: self.call_transport.netconf_started(self.session),
            lambda failure: None,  # the session's close reason says why
        )
        self.session.makeConnection(self)
        early, self._early = b"".join(self._early), []
        if early:
            self.session.dataReceived(early)

    def _subsystem_refused(self, failure: Failure) -> None:
        self.call_transport.fail("device refused the netconf subsystem")

    def dataReceived(self, data: bytes) -> None:
        """NETCONF bytes from the device."""
        if self.session is not None:
            self.session.dataReceived(data)
        elif sum(map(len, self._early)) + len(data) <= self.settings.max_message_size:
            self._early.append(data)
        else:
            self.call_transport.fail("device sent too much before the netconf subsystem started")

    def extReceived(self, dataType: int, data: bytes) -> None:
        """stderr of the subsystem: not NETCONF; ignored."""

    def eofReceived(self) -> None:
        """The device will send nothing more: close the channel."""
        self.loseConnection()

    def loseConnection(self) -> None:
        """The session is over: close the channel and hang up the call."""
        super().loseConnection()
        self.call_transport.hang_up()

    def closed(self) -> None:
        """The channel is gone: end the session, then the whole call."""
        if self.session is not None:
            session, self.session = self.session, None
            session.connectionLost(Failure(ConnectionDone("channel closed")))
            if self.call_transport.call is not None:
                self.call_transport.call.note(session.close_reason)
        self.call_transport.hang_up()
