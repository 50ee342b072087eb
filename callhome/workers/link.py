"""
A worker process's side of ``workers: N``: its end of the channel.

It is the worker manager's L{Cluster} (claims and releases go to the main
process), it reports the registry's changes every second, it forwards its
log events, and it answers what the main process asks by running the same
control-plane operations the API runs (never an HTTP resource).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer
from twisted.logger import eventAsJSON
from twisted.python.failure import Failure

from callhome.call.record import Outcome
from callhome.control.operations import ControlPlane
from callhome.control.wire import encode_answer
from callhome.logs import LevelLogger
from callhome.call.registry import EnrollmentError
from callhome.workers.channel import Channel

if TYPE_CHECKING:  # pragma: no cover
    from callhome.call.manager import Manager
    from callhome.call.connection import CallConnection


class WorkerLink:
    """
    A worker process's end of the channel.

    @ivar reload: re-reads the config (when the main process did).
    @ivar stop: stops this process gracefully.
    """

    log = LevelLogger(namespace="callhome.workers")

    def __init__(
        self, manager: "Manager", control: ControlPlane, reload: Callable[[str], Any], stop: Callable[[], None],
    ) -> None:
        self.manager = manager
        self.control = control
        self.reload = reload
        self.stop = stop
        self.channel = Channel(self._handlers(), lost=self._lost)
        manager.cluster = self

    def _handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "sessions": self.control.local_sessions,
            "session": lambda device: self.control.local_session(device),
            "rpc": self.rpc,
            "disconnect": self.disconnect,
            "api_disconnect": self.api_disconnect,
            "approve": self.approve,
            "reload": lambda: self.reload("main process"),
            "metrics": self.control.metrics.samples,
            "stop": self.stop,
        }

    def _lost(self, reason: Failure) -> None:
        # The main process is gone: so are the API and the supervision.
        self.log.warn("the main process is gone: stopping")
        self.stop()

    def forward_log(self, event: dict[str, Any]) -> None:
        """A log observer: our events go to the main process's log."""
        if self.channel.connected_:
            self.channel.notify("log", event=eventAsJSON(event))

    # --- Cluster ---------------------------------------------------------------------------

    def claim(self, device: str, call: "CallConnection") -> bool:
        """Tell the main process; a refusal closes the call when it comes back."""
        assert call.call is not None
        answer = self.channel.call("claim", device=device, call=call.call.id)

        def verdict(result: str) -> None:
            if result == "refuse" and self.manager.sessions.get(device) is call and call.call is not None:
                reason = f"device {device} already has a session in another worker (duplicate_sessions: reject)"
                call.call.end(Outcome.DUPLICATE_REFUSED, reason)
                self.manager.disconnect(call, reason)

        answer.addCallbacks(verdict, lambda f: None)
        return True

    def release(self, device: str, call_id: str) -> None:
        """The call ended here."""
        self.channel.notify("release", device=device, call=call_id)

    def report(self) -> None:
        """Every second: what changed in the registry, and the calls open here."""
        statuses, pending, dropped = self.manager.registry.changes()
        self.channel.notify("report", statuses=statuses, pending=pending, dropped=dropped,
                            active=len(self.manager.active), handshakes=self.manager.admission.pending)

    # --- asked by the main process -------------------------------------------------------

    def rpc(self, device: str, content_type: str, body: str) -> defer.Deferred[dict[str, Any]]:
        """An API RPC on a session held here."""
        d = defer.maybeDeferred(self.control.rpc_here, device, content_type, base64.b64decode(body))
        return d.addBoth(encode_answer)

    def api_disconnect(self, device: str) -> defer.Deferred[dict[str, Any]]:
        """An API disconnect of a session held here."""
        return defer.maybeDeferred(self.control.disconnect_here, device).addBoth(encode_answer)

    def disconnect(self, device: str, reason: str, outcome: str | None = None) -> bool:
        """Close C{device}'s session here (replaced elsewhere)."""
        call = self.manager.sessions.get(device)
        if call is None:
            return False
        if outcome == Outcome.REPLACED:
            self.manager.replace(call)
        else:
            self.manager.disconnect(call, reason)
        return True

    def approve(self, fingerprint: str, name: str, group: str | None, approved_at: float) -> None:
        """An approval the main process made and stored."""
        try:
            self.manager.registry.enroll(fingerprint, name, group, approved_at)
        except EnrollmentError as e:
            self.log.error("cannot apply the approval of {name}: {error}", name=name, error=e)
