"""
What the manager, the control plane and the worker link need of a call's
connection, whatever its transport: an SSH call
(L{callhome.ssh.transport.CallHomeTransport}) and a TLS call
(L{callhome.tls.call.TlsCall}) both are one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from callhome.call.record import CallRecord
    from callhome.netconf.session import NetconfSession


class CallConnection(Protocol):
    """
    One call's connection.

    @ivar call: its record (set once the connection is made).
    @ivar session: its NETCONF session, once the device's hello is in.
    @ivar keepalive: what keeps a held session checked (SSH keepalives, TLS probes), if running.
    @ivar bytes_received: bytes read from the device so far (wire bytes).
    """

    call: "CallRecord | None"
    session: "NetconfSession | None"
    keepalive: Any
    bytes_received: int

    def hang_up(self) -> None:
        """Close the connection now (the session, if any, is over)."""

    def start_keepalive(self, interval: float, max_missed: int) -> None:
        """Persistent mode: check the held session every C{interval}; end it after C{max_missed} misses."""
