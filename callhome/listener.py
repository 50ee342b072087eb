"""
The call-home listener: a ServerFactory whose protocol is an SSH *client*.

Each ``listen:`` entry is a Twisted server endpoint string, so ``tcp:4334``,
``tcp6:port=4334:interface=\\:\\:`` and ``haproxy:tcp:4334`` (PROXY protocol)
all work through ``serverFromString``.
"""

from __future__ import annotations

import re

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, ServerFactory

from callhome.manager import Manager

#: A reconnect storm overflows the kernel's default accept queue of 50.
DEFAULT_BACKLOG = 1024


class CallHomeFactory(ServerFactory):
    """Builds one L{CallHomeTransport} per accepted call."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        """
        A new call: we are the SSH client on it (RFC 8071 §3.1 C1-C3).
        A call admission refuses gets a protocol that hangs up at once (not
        None: wrapping factories such as haproxy's cannot handle None).
        """
        source = getattr(addr, "host", str(addr))
        if not self.manager.admit(source):
            return Refused()
        call = self.manager.new_call()
        call.factory = self
        return call


class Refused(Protocol):
    """A connection admission control refused: closed as soon as it is made."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """Add a backlog to a TCP endpoint string that does not set one."""
    if "backlog=" in description:
        return description
    if re.match(r"^(haproxy:)?(tcp6?|tcp)(:|$)", description):
        return f"{description}:backlog={backlog}"
    return description
