"""
What the control plane needs from around it: the sessions other processes
or instances hold (L{RemoteSessions}: the worker pool and the cluster
implement it), and the service it controls (L{ServiceControl}).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer


class RemoteSessions(Protocol):
    """Sessions held by other processes serving the same devices."""

    def holds(self, device: str) -> bool:
        """Whether another process holds C{device}'s session."""

    def session(self, device: str) -> defer.Deferred[Any]:
        """That session's info (L{session_info}), or None."""

    def sessions(self) -> defer.Deferred[list[list[dict[str, Any]]]]:
        """Every other process's open calls, one list per process."""

    def rpc(self, device: str, content_type: str, body: bytes) -> defer.Deferred[Any]:
        """Run L{ControlPlane.rpc_here} where the session is."""

    def disconnect(self, device: str) -> defer.Deferred[Any]:
        """Run L{ControlPlane.disconnect_here} where the session is."""

    def approved(self, fingerprint: str, name: str, group: str | None, approved_at: float) -> None:
        """Tell the others about an approval made (and stored) here."""

    def metrics(self) -> defer.Deferred[list[Any]]:
        """The others' metric samples (L{Metrics.samples})."""

    def open_calls(self) -> tuple[int, int]:
        """Calls open and handshakes in progress elsewhere."""

    def processes(self) -> list[dict[str, Any]]:
        """The other processes: index and pid."""


class ServiceControl(Protocol):
    """What the control plane needs of the service around it."""

    stopping: bool

    def listening(self) -> list[str]:
        """The call-home endpoints bound now."""

    def reload(self, why: str) -> dict[str, Any]:
        """Re-read the config; raises L{ReloadRefused}."""
