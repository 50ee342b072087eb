"""
The call-home listener: a ServerFactory whose protocol is a *client*: an
SSH client on ``listen:`` endpoints, a TLS client on ``listen_tls:`` ones.

Each entry is a Twisted server endpoint string, so ``tcp:4334``,
``tcp6:port=4334:interface=\\:\\:`` and ``haproxy:tcp:4334`` (PROXY protocol)
all work through ``serverFromString``.  The listener admits the
connection and asks its C{calls} builder for the call: the transport is
chosen here, by the port the device dialled, and nowhere else.
"""

from __future__ import annotations

import re
from typing import Any, Callable, cast

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
# HAProxyProtocolWrapper is not exported by twisted.protocols.haproxy; its
# public wrapper (the haproxy: endpoint) builds the call at accept time,
# before the PROXY header names the device (docs/DESIGN.md).  We reuse only
# its header parser, driven by hand.
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from callhome.call.manager import Manager

#: Builds the protocol of one admitted call (and tracks the call).
CallBuilder = Callable[[], Protocol]

#: A reconnect storm overflows the kernel's default accept queue of 50.
DEFAULT_BACKLOG = 1024


class CallHomeFactory(ServerFactory):
    """
    Builds one call per accepted connection: by default an SSH call
    (L{callhome.ssh.transport.CallHomeTransport}); with C{calls} and
    C{transport} set, whatever that builder makes (a TLS call).
    """

    # The service logs where it listens; Twisted's "Starting factory" line
    # would be an info line that log.level cannot silence.
    noisy = False

    def __init__(self, manager: Manager, calls: CallBuilder | None = None, transport: str = "ssh") -> None:
        self.manager = manager
        self.transport = transport
        self.calls: CallBuilder = calls if calls is not None else self._ssh_call

    def _ssh_call(self) -> Protocol:
        call = self.manager.new_call()
        call.factory = self
        return call

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """
        A new call: we are the client on it (RFC 8071 §3.1 C1-C3, §4.1 S1-S3).
        A call admission refuses gets a protocol that hangs up at once (not
        None: wrapping factories such as haproxy's cannot handle None).
        """
        source = getattr(addr, "host", str(addr))
        if not self.manager.admit(source, self.transport):
            return Refused()
        return self.calls()


class Refused(Protocol):
    """A connection admission control refused: closed as soon as it is made."""

    def connectionMade(self) -> None:
        """Hang up at once."""
        assert self.transport is not None
        self.transport.loseConnection()


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """Add a backlog to a TCP endpoint string that does not set one."""
    if "backlog=" in description:
        return description
    if re.match(r"^(haproxy:)?(tcp6?|tcp)(:|$)", description):
        return f"{description}:backlog={backlog}"
    return description


class ProxiedCall(ProtocolWrapper):
    """
    A connection behind a PROXY-protocol load balancer (``haproxy:``).

    Twisted's own wrapper builds the wrapped protocol when the connection is
    accepted, before the PROXY header says who the device is; admission
    would then count and block the balancer's address.  This one reads the
    header first, admits the call by the device's real address, and only
    then builds the call and hands it the connection.
    """

    wrappedProtocol: Any

    def __init__(self, factory: "ProxiedCallFactory") -> None:
        super().__init__(factory, Protocol())
        # The parser is driven by hand and never registers with a factory:
        # sharing ours is safe, though it is no WrappingFactory of parsers.
        self._proxy = HAProxyProtocolWrapper(cast("WrappingFactory[HAProxyProtocolWrapper]", factory), self.wrappedProtocol)
        self._admitted = False
        self._header_timer: Any = None

    def makeConnection(self, transport: Any) -> None:
        """Hold the connection; the call is built once the header is read."""
        Protocol.makeConnection(self, transport)
        self._proxy.transport = transport
        self.factory.registerProtocol(self)
        # Not yet admitted, so not yet bounded by admission: a header that
        # never comes must not hold the connection.
        manager = self.factory.manager
        self._header_timer = manager.clock.callLater(manager.config.ssh.handshake_timeout, transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        """Before admission: the PROXY header; after: the call's bytes."""
        if self._admitted:
            self.wrappedProtocol.dataReceived(data)
            return
        header_parser = self._proxy
        captured: list[bytes] = []
        header_parser.wrappedProtocol = _Capture(captured)
        header_parser.dataReceived(data)  # an invalid header: it hangs up
        # _proxyInfo (private) is set once the whole header is parsed: the
        # wrapper has no public "header complete" signal but this.
        if header_parser._proxyInfo is None:
            return  # not complete yet, or refused
        if self._header_timer is not None and self._header_timer.active():
            self._header_timer.cancel()
        if header_parser._proxyInfo.source is None:
            self._health_check()
            return
        source = header_parser.getPeer()
        manager = self.factory.manager
        calls = self.factory.wrappedFactory
        if not manager.admit(getattr(source, "host", str(source)), calls.transport):
            assert self.transport is not None  # set by makeConnection
            self.transport.loseConnection()
            return
        self._admitted = True
        call = calls.calls()
        self.wrappedProtocol = call
        call.makeConnection(self)
        if captured:
            call.dataReceived(b"".join(captured))

    def _health_check(self) -> None:
        """
        A PROXY v2 LOCAL header (v1: ``PROXY UNKNOWN``): the balancer's own
        connection, its health check (HAProxy's ``check-send-proxy``), not a
        device.  Not admitted, not a call, not a failure: closed quietly.
        """
        manager = self.factory.manager
        manager.health_checks += 1
        # Debug only: a balancer checks every few hundred milliseconds.
        manager.log.debug("PROXY health check from the load balancer (LOCAL header): answered by closing")
        assert self.transport is not None  # set by makeConnection
        self.transport.loseConnection()

    def getPeer(self) -> Any:
        """The device's address from the PROXY header."""
        return self._proxy.getPeer()

    def getHost(self) -> Any:
        """Our address as the device reached it, from the PROXY header."""
        return self._proxy.getHost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Pass the end on to the call, if one was built."""
        if self._header_timer is not None and self._header_timer.active():
            self._header_timer.cancel()
        if self._admitted:
            super().connectionLost(reason)
        else:
            self.factory.unregisterProtocol(self)


class _Capture(Protocol):
    """Collects the bytes that followed the PROXY header in the same read."""

    def __init__(self, into: list[bytes]) -> None:
        self.into = into

    def dataReceived(self, data: bytes) -> None:
        self.into.append(data)


class ProxiedCallFactory(WrappingFactory[ProxiedCall]):
    """The factory for ``haproxy:`` listeners: L{ProxiedCall} per connection."""

    protocol = ProxiedCall
    noisy = False
    wrappedFactory: CallHomeFactory

    def __init__(self, manager: Manager, calls: CallHomeFactory | None = None) -> None:
        super().__init__(calls if calls is not None else CallHomeFactory(manager))
        self.manager = manager

    def buildProtocol(self, addr: IAddress | None) -> ProxiedCall:
        """Accept now; admission waits for the PROXY header."""
        return ProxiedCall(self)
