"""
The main process's side of ``workers: N``: it starts the worker processes
on the listening sockets it bound, restarts one that dies, keeps the one
table of which process holds which device's session (claims), mirrors the
workers' registry reports, and answers the control plane's questions about
sessions held in a worker (it is the control plane's L{RemoteSessions}).
"""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.endpoints import ProcessEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.logger import eventFromJSON
from twisted.python.failure import Failure

from callhome.control.wire import decode_answer
from callhome.logs import LevelLogger
from callhome.reactor import IServiceReactor
from callhome.workers.channel import Channel, RemoteError

if TYPE_CHECKING:  # pragma: no cover
    from callhome.call.manager import Manager
    from callhome.call.connection import CallConnection

#: seconds before a dead worker is started again (doubling while it keeps dying).
RESPAWN_DELAY = 1.0
RESPAWN_DELAY_MAX = 30.0
#: a worker that ran this long before dying is restarted at once (not backed off).
STABLE_AFTER = 10.0


def _cancel_timer(_: object, timer: IDelayedCall) -> None:
    """A worker ended: its kill timer is not needed any more."""
    if timer.active():
        timer.cancel()


def _field(flattened_key: str) -> str:
    """The field a flattened key ("duration!:.3f") formats."""
    return flattened_key.split("!", 1)[0].split(".", 1)[0].split("[", 1)[0]


@dataclass
class Worker:
    """One worker process as the main process sees it."""

    index: int
    channel: Channel | None = None
    pid: int | None = None
    started: float = 0.0
    #: calls open and handshakes in progress there (reported every second).
    active: int = 0
    handshakes: int = 0
    ended: defer.Deferred[None] = field(default_factory=defer.Deferred)
    delay: float = RESPAWN_DELAY


class WorkerPool(Service):
    """
    Starts and supervises the worker processes of the main process, and
    keeps the one table of which process holds which device's session.

    @ivar owners: device name -> (worker index, call id) of sessions held
        by workers (the main process's own are in its manager's sessions).
    """

    log = LevelLogger(namespace="callhome.workers")

    def __init__(self, reactor: IServiceReactor, manager: "Manager", count: int, sockets: Callable[[], dict[str, int]]) -> None:
        self.reactor = reactor
        self.manager = manager
        self.count = count
        self.sockets = sockets
        self.workers: dict[int, Worker] = {}
        self.owners: dict[str, tuple[int, str]] = {}
        self.stopping = False
        self._stopped: defer.Deferred[None] | None = None

    # --- processes ---------------------------------------------------------------------

    def startService(self) -> None:
        """Start the N-1 worker processes on the bound listeners."""
        super().startService()
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int, delay: float = RESPAWN_DELAY) -> None:
        worker = self.workers[index] = Worker(index, started=self.reactor.seconds(), delay=delay)
        listeners = self.sockets()
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: 2}
        argv = [sys.executable, "-m", "callhome.workers", "--config", str(self.manager.config.source), "--index", str(index)]
        for number, (description, fd) in enumerate(listeners.items(), start=3):
            child_fds[number] = fd
            argv += ["--listen", f"{number}={description}"]
        # The worker runs the same callhome as this process, installed or not.
        package_root = str(Path(__file__).resolve().parent.parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        channel = Channel(self._handlers(worker), lost=lambda reason: self._lost(worker, reason))
        worker.channel = channel
        endpoint = ProcessEndpoint(self.reactor, sys.executable, argv, env=env, childFDs=child_fds)
        connectProtocol(endpoint, channel).addErrback(lambda f: self._lost(worker, f))

    def _handlers(self, worker: Worker) -> dict[str, Callable[..., Any]]:
        return {
            "ready": lambda pid: self._ready(worker, pid),
            "claim": lambda device, call: self._claim(worker, device, call),
            "release": lambda device, call: self._release(worker, device, call),
            "report": lambda **report: self._report(worker, **report),
            "log": lambda event: self._log(worker, event),
        }

    def _ready(self, worker: Worker, pid: int) -> None:
        worker.pid = pid
        self.log.info("worker {index} (pid {pid}) serving", index=worker.index, pid=pid)

    def _lost(self, worker: Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is not worker:
            return
        del self.workers[worker.index]
        held = [name for name, (index, _) in self.owners.items() if index == worker.index]
        registry = self.manager.registry
        for name in held:
            del self.owners[name]
            device = registry.device(name)
            if device is not None:
                registry.transition(device, "disconnected", error=f"worker {worker.index} ended")
        worker.ended.callback(None)
        if self.stopping:
            return
        ran = self.reactor.seconds() - worker.started
        delay = RESPAWN_DELAY if ran >= STABLE_AFTER else min(worker.delay * 2, RESPAWN_DELAY_MAX)
        self.log.error(
            "worker {index} (pid {pid}) ended unexpectedly ({why}); {sessions} sessions lost; starting it again in {delay:g}s",
            index=worker.index, pid=worker.pid, why=reason.getErrorMessage(), sessions=len(held), delay=delay,
        )
        self.reactor.callLater(delay, self._respawn, worker.index, delay)

    def _respawn(self, index: int, delay: float) -> None:
        if not self.stopping and index not in self.workers:
            self._spawn(index, delay)

    def _log(self, worker: Worker, event: str) -> None:
        entry = eventFromJSON(event)
        entry["worker"] = worker.index
        entry["log_namespace"] = f"worker{worker.index}/{entry.get('log_namespace', '-')}"
        flattened = entry.get("log_flattened") or {}
        # Twisted's flattened values ignore format specs ({duration:.3f}):
        # format from the fields themselves when they all came across.
        if all(_field(key) in entry and not isinstance(entry[_field(key)], dict) for key in flattened):
            entry.pop("log_flattened", None)
        self.log.observer(entry)

    def _report(self, worker: Worker, statuses: list[dict[str, Any]], pending: list[dict[str, Any]],
                dropped: list[str], active: int, handshakes: int) -> None:
        worker.active, worker.handshakes = active, handshakes
        if statuses or pending or dropped:
            self.manager.registry.mirror(statuses, pending, dropped)

    # --- one session per device, across processes -------------------------------------------

    def _claim(self, worker: Worker, device: str, call: str) -> str:
        """A worker identified C{device}: "ok", or "refuse" (a duplicate, policy reject)."""
        local = self.manager.sessions.get(device)
        other = self.owners.get(device)
        if other is not None and other[0] == worker.index:
            other = None  # the worker replaced its own session
        if local is not None or other is not None:
            if self.manager.config.duplicate_sessions == "reject":
                return "refuse"
            self.log.warn("device {device} called again (worker {index}): closing its older session "
                          "(duplicate_sessions: replace)", device=device, index=worker.index)
            if local is not None:
                self.manager.replace(local)
            elif other is not None:
                self._replace_remote(device, other[0])
        self.owners[device] = (worker.index, call)
        return "ok"

    def _release(self, worker: Worker, device: str, call: str) -> None:
        if self.owners.get(device) == (worker.index, call):
            del self.owners[device]

    def _replace_remote(self, device: str, index: int) -> None:
        worker = self.workers.get(index)
        if worker is not None and worker.channel is not None:
            worker.channel.notify("disconnect", device=device, reason="replaced by a new call from the same device", outcome="replaced")

    def claim(self, device: str, call: "CallConnection") -> bool:
        """The main process identified C{device}: is a worker's session in the way?"""
        other = self.owners.get(device)
        if other is None:
            return True
        if self.manager.config.duplicate_sessions == "reject":
            return False
        self.log.warn("device {device} called again: closing its session in worker {index} "
                      "(duplicate_sessions: replace)", device=device, index=other[0])
        del self.owners[device]
        self._replace_remote(device, other[0])
        return True

    def release(self, device: str, call_id: str) -> None:
        """The main process's own sessions are in its manager; nothing to do."""

    # --- RemoteSessions: what the control plane asks ---------------------------------------

    def holder(self, device: str) -> Worker | None:
        """The worker holding C{device}'s session, if one does."""
        owner = self.owners.get(device)
        return self.workers.get(owner[0]) if owner is not None else None

    def holds(self, device: str) -> bool:
        """Whether a worker holds C{device}'s session."""
        return self.holder(device) is not None

    def _ask(self, worker: Worker | None, method: str, **args: Any) -> defer.Deferred[Any]:
        if worker is None or worker.channel is None:
            return defer.fail(RemoteError("the worker is not running"))
        return worker.channel.call(method, **args)

    def ask_all(self, method: str, **args: Any) -> defer.Deferred[list[Any]]:
        """Ask every running worker; the answers of those that answered."""
        asked = [self._ask(w, method, **args) for w in list(self.workers.values()) if w.pid is not None]
        gathered = defer.DeferredList(asked, consumeErrors=True)
        return gathered.addCallback(lambda results: [value for ok, value in results if ok])

    def session(self, device: str) -> defer.Deferred[Any]:
        """The session of C{device} in the worker holding it."""
        return self._ask(self.holder(device), "session", device=device)

    def sessions(self) -> defer.Deferred[list[Any]]:
        """Every worker's open calls."""
        return self.ask_all("sessions")

    def rpc(self, device: str, content_type: str, body: bytes) -> defer.Deferred[Any]:
        """An API RPC, run by the worker holding the session."""
        asked = self._ask(self.holder(device), "rpc", device=device, content_type=content_type,
                          body=base64.b64encode(body).decode("ascii"))
        return asked.addCallback(decode_answer)

    def disconnect(self, device: str) -> defer.Deferred[Any]:
        """An API disconnect, run by the worker holding the session."""
        return self._ask(self.holder(device), "api_disconnect", device=device).addCallback(decode_answer)

    def approved(self, fingerprint: str, name: str, group: str | None, approved_at: float) -> None:
        """An approval made (and stored) here: every worker enrolls the key too."""
        self.tell_all("approve", fingerprint=fingerprint, name=name, group=group, approved_at=approved_at)

    def metrics(self) -> defer.Deferred[list[Any]]:
        """Every worker's metric samples."""
        return self.ask_all("metrics")

    def open_calls(self) -> tuple[int, int]:
        """Calls open and handshakes in progress in the workers (as last reported)."""
        workers = list(self.workers.values())
        return sum(w.active for w in workers), sum(w.handshakes for w in workers)

    def processes(self) -> list[dict[str, Any]]:
        """The worker processes by index, with their pids."""
        return [{"index": w.index, "pid": w.pid} for w in sorted(self.workers.values(), key=lambda w: w.index)]

    def tell_all(self, method: str, **args: Any) -> None:
        """Tell every worker something (an approval, a reload)."""
        for worker in self.workers.values():
            if worker.channel is not None:
                worker.channel.notify(method, **args)

    # --- stop ----------------------------------------------------------------------------

    def stop_workers(self) -> defer.Deferred[None]:
        """Ask every worker to stop gracefully; fires when all have ended (killed if they hang)."""
        if self._stopped is not None:
            return self._stopped
        self.stopping = True
        workers = list(self.workers.values())
        limit = self.manager.config.shutdown_grace + 20.0
        for worker in workers:
            if worker.channel is not None:
                worker.channel.notify("stop")
            timer = self.reactor.callLater(limit, self._kill, worker)
            worker.ended.addBoth(_cancel_timer, timer)
        self._stopped = defer.DeferredList([w.ended for w in workers], consumeErrors=True).addCallback(lambda _: None)
        return self._stopped

    def _kill(self, worker: Worker) -> None:
        if not worker.ended.called and worker.channel is not None and worker.channel.transport is not None:
            self.log.error("worker {index} (pid {pid}) did not stop: killing it", index=worker.index, pid=worker.pid)
            try:
                # The channel's transport is the process ProcessEndpoint spawned.
                cast(IProcessTransport, worker.channel.transport).signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

    def stopService(self) -> defer.Deferred[None]:
        """Stop the workers (if the service has not already)."""
        super().stopService()
        return self.stop_workers()
