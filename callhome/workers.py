"""
More than one core: ``workers: N`` serves calls from N processes.

A Twisted reactor uses one core.  With ``workers: N`` the main process
(the one twistd runs) binds the listeners, opens (and migrates) the
database, serves the API and runs retention, and serves calls itself; it
also starts N-1 worker processes (``python -m callhome.workers``) that
inherit the listening sockets.  Every process accepts from the same
sockets, so the kernel hands each connection to whichever process accepts
first: a busy process takes fewer.

What keeps them one service:

* the store: each process writes its own results, events and device
  status to the same SQLite database (WAL; one writer at a time, the
  others wait up to 30 s), so ``/results`` and ``/events`` see every call;
* a channel per worker (L{Channel}: JSON messages over the worker's
  standard input and output) on which the worker
    - claims a device when it identifies one, and releases it when the call
      ends: the main process keeps one table of who holds which device, so
      ``duplicate_sessions`` holds across processes (a duplicate found in
      another process is refused, or the older session closed, moments
      after the claim);
    - reports, every second, the device statuses and quarantined keys that
      changed (the main process mirrors them for the API) and how many
      calls it has open;
    - forwards its log events, which the main process logs as its own with
      a ``worker`` field;
  and on which the main process asks a worker for its sessions, runs an
  API RPC or disconnect on a session the worker holds, passes on approvals
  and reloads, collects its metrics (added to the main process's own at
  ``/metrics``) and stops it (the same graceful stop as the main's).

A worker that dies is logged and started again (after 1 s, up to 30 s if
it keeps dying); its sessions are gone, and their devices are marked
disconnected.  A worker whose main process is gone stops.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.endpoints import ProcessEndpoint, connectProtocol
from twisted.logger import eventAsJSON, eventFromJSON
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from callhome.call.record import Outcome

from callhome.logs import LevelLogger

if TYPE_CHECKING:  # pragma: no cover
    from callhome.service import CallHomeService
    from callhome.ssh import CallHomeTransport

#: seconds before a dead worker is started again (doubling while it keeps dying).
RESPAWN_DELAY = 1.0
RESPAWN_DELAY_MAX = 30.0
#: a worker that ran this long before dying is restarted at once (not backed off).
STABLE_AFTER = 10.0


class RemoteError(Exception):
    """The other process answered a request with an error."""


class Channel(Int32StringReceiver):
    """
    Requests, answers and notices as JSON messages, both ways.

    A request is ``{"i": id, "m": method, "a": {...}}`` and is answered with
    ``{"i": id, "r": result}`` or ``{"i": id, "e": message}``; a notice is a
    request without an id (no answer).  Methods are looked up in
    C{handlers}; a handler may return a Deferred.
    """

    # An API RPC's reply crosses the channel whole: allow the largest a
    # NETCONF session accepts by default.
    MAX_LENGTH = 1024 * 1024 * 1024
    log = LevelLogger(namespace="callhome.workers")

    def __init__(self, handlers: dict[str, Callable[..., Any]], lost: Callable[[Failure], None] | None = None) -> None:
        self.handlers = handlers
        self.lost = lost
        self._ids = itertools.count(1)
        self._waiting: dict[int, defer.Deferred[Any]] = {}
        self.connected_ = False

    def connectionMade(self) -> None:
        """The other process is there."""
        self.connected_ = True

    def call(self, method: str, **args: Any) -> defer.Deferred[Any]:
        """Ask the other process; fires with its answer (or L{RemoteError})."""
        if not self.connected_:
            return defer.fail(RemoteError("the process is gone"))
        request_id = next(self._ids)
        answer: defer.Deferred[Any] = defer.Deferred()
        self._waiting[request_id] = answer
        self._send({"i": request_id, "m": method, "a": args})
        return answer

    def notify(self, method: str, **args: Any) -> None:
        """Tell the other process something; no answer."""
        if self.connected_:
            self._send({"m": method, "a": args})

    def _send(self, message: dict[str, Any]) -> None:
        self.sendString(json.dumps(message, separators=(",", ":")).encode("utf-8"))

    def stringReceived(self, data: bytes) -> None:
        """One message: an answer to one of ours, or a request or notice."""
        message = json.loads(data)
        if "m" not in message:
            waiting = self._waiting.pop(message["i"], None)
            if waiting is not None:
                if "e" in message:
                    waiting.errback(RemoteError(message["e"]))
                else:
                    waiting.callback(message.get("r"))
            return
        handler = self.handlers.get(message["m"])
        request_id = message.get("i")
        if handler is None:
            result: defer.Deferred[Any] = defer.fail(RemoteError(f"no method {message['m']!r}"))
        else:
            result = defer.maybeDeferred(handler, **message.get("a", {}))
        if request_id is None:
            result.addErrback(lambda f: self.log.failure("notice {method} failed", f, method=message["m"]))
            return

        def failed(failure: Failure) -> None:
            if not failure.check(RemoteError):
                self.log.failure("request {method} failed", failure, method=message["m"])
            self._answer({"i": request_id, "e": f"{type(failure.value).__name__}: {failure.getErrorMessage()}"})

        result.addCallbacks(lambda r: self._answer({"i": request_id, "r": r}), failed)

    def _answer(self, message: dict[str, Any]) -> None:
        if self.connected_:
            self._send(message)

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        """The other process is gone: every question waiting fails."""
        self.connected_ = False
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            answer.errback(RemoteError("the process is gone"))
        if self.lost is not None:
            self.lost(reason)


# --- API responses across the channel ----------------------------------------------------


def encode_response(result: Any) -> dict[str, Any]:
    """An API handler's result (or ApiError) as plain values."""
    from callhome.api import ApiError, Json, Reply

    if isinstance(result, Failure):
        if result.check(ApiError):
            e = result.value
            return {"error": e.status, "message": e.message, "headers": e.headers}
        return {"error": 500, "message": f"internal error in a worker: {type(result.value).__name__} (logged)", "headers": {}}
    if isinstance(result, Reply):
        return {"reply": base64.b64encode(result.body).decode("ascii"), "content_type": result.content_type,
                "status": result.status, "headers": result.headers}
    if isinstance(result, Json):
        return {"json": result.body, "status": result.status}
    return {"json": result, "status": 200}


def decode_response(data: dict[str, Any]) -> Any:
    """What L{encode_response} encoded: a result, or raises the ApiError."""
    from callhome.api import ApiError, Json, Reply

    if "error" in data:
        raise ApiError(data["error"], data["message"], data.get("headers") or {})
    if "reply" in data:
        return Reply(base64.b64decode(data["reply"]), data["content_type"], data["status"], data.get("headers") or {})
    return Json(data["json"], data["status"]) if data["status"] != 200 else data["json"]


def _field(flattened_key: str) -> str:
    """The field a flattened key ("duration!:.3f") formats."""
    return flattened_key.split("!", 1)[0].split(".", 1)[0].split("[", 1)[0]


# --- the main process's side --------------------------------------------------------------


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

    def __init__(self, service: "CallHomeService", count: int) -> None:
        self.service = service
        self.reactor = service.reactor
        self.count = count
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
        listeners = {d: l.port.fileno() for d, l in self.service.listeners.items() if l.port is not None}
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: 2}
        argv = [sys.executable, "-m", "callhome.workers", "--config", str(self.service.config.source), "--index", str(index)]
        for number, (description, fd) in enumerate(listeners.items(), start=3):
            child_fds[number] = fd
            argv += ["--listen", f"{number}={description}"]
        # The worker runs the same callhome as this process, installed or not.
        package_root = str(Path(__file__).resolve().parent.parent)
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
        registry = self.service.manager.registry
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
            self.service.manager.registry.mirror(statuses, pending, dropped)

    # --- one session per device, across processes -------------------------------------------

    def _claim(self, worker: Worker, device: str, call: str) -> str:
        """A worker identified C{device}: "ok", or "refuse" (a duplicate, policy reject)."""
        local = self.service.manager.sessions.get(device)
        other = self.owners.get(device)
        if other is not None and other[0] == worker.index:
            other = None  # the worker replaced its own session
        if local is not None or other is not None:
            if self.service.config.duplicate_sessions == "reject":
                return "refuse"
            self.log.warn("device {device} called again (worker {index}): closing its older session "
                          "(duplicate_sessions: replace)", device=device, index=worker.index)
            if local is not None:
                self.service.manager.replace(local)
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

    def claim(self, device: str, call: "CallHomeTransport") -> bool:
        """The main process identified C{device}: is a worker's session in the way?"""
        other = self.owners.get(device)
        if other is None:
            return True
        if self.service.config.duplicate_sessions == "reject":
            return False
        self.log.warn("device {device} called again: closing its session in worker {index} "
                      "(duplicate_sessions: replace)", device=device, index=other[0])
        del self.owners[device]
        self._replace_remote(device, other[0])
        return True

    def release(self, device: str, call_id: str) -> None:
        """The main process's own sessions are in its manager; nothing to do."""

    # --- asked by the API ----------------------------------------------------------------

    def holder(self, device: str) -> Worker | None:
        """The worker holding C{device}'s session, if one does."""
        owner = self.owners.get(device)
        return self.workers.get(owner[0]) if owner is not None else None

    def _ask(self, worker: Worker, method: str, **args: Any) -> defer.Deferred[Any]:
        if worker.channel is None:
            return defer.fail(RemoteError("the worker is not running"))
        return worker.channel.call(method, **args)

    def ask_all(self, method: str, **args: Any) -> defer.Deferred[list[Any]]:
        """Ask every running worker; the answers of those that answered."""
        asked = [self._ask(w, method, **args) for w in list(self.workers.values()) if w.pid is not None]
        gathered = defer.DeferredList(asked, consumeErrors=True)
        return gathered.addCallback(lambda results: [value for ok, value in results if ok])

    def forward(self, device: str, method: str, **args: Any) -> defer.Deferred[Any] | None:
        """Run an API request on the worker holding C{device}'s session (None: no worker does)."""
        worker = self.holder(device)
        if worker is None:
            return None
        return self._ask(worker, method, device=device, **args).addCallback(decode_response)

    def open_calls(self) -> tuple[int, int]:
        """Calls open and handshakes in progress in the workers (as last reported)."""
        workers = list(self.workers.values())
        return sum(w.active for w in workers), sum(w.handshakes for w in workers)

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
        limit = self.service.config.shutdown_grace + 20.0
        for worker in workers:
            if worker.channel is not None:
                worker.channel.notify("stop")
            timer = self.reactor.callLater(limit, self._kill, worker)
            worker.ended.addBoth(lambda _, timer=timer: timer.cancel() if timer.active() else None)
        self._stopped = defer.DeferredList([w.ended for w in workers], consumeErrors=True).addCallback(lambda _: None)
        return self._stopped

    def _kill(self, worker: Worker) -> None:
        if not worker.ended.called and worker.channel is not None and worker.channel.transport is not None:
            self.log.error("worker {index} (pid {pid}) did not stop: killing it", index=worker.index, pid=worker.pid)
            try:
                worker.channel.transport.signalProcess("KILL")  # type: ignore[attr-defined]
            except error.ProcessExitedAlready:
                pass

    def stopService(self) -> defer.Deferred[None]:
        """Stop the workers (if the service has not already)."""
        super().stopService()
        return self.stop_workers()


# --- a worker process's side ------------------------------------------------------------------


class WorkerLink:
    """
    A worker process's end of the channel: its L{Cluster} (claims and
    releases go to the main process) and the handlers of what the main
    process asks.
    """

    log = LevelLogger(namespace="callhome.workers")

    def __init__(self, service: "CallHomeService", stop: Callable[[], None]) -> None:
        self.service = service
        self.stop = stop
        self.channel = Channel(self._handlers(), lost=self._lost)
        service.manager.cluster = self
        service.before_save = self.report

    def _handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "sessions": self.sessions,
            "session": self.session,
            "rpc": self.rpc,
            "disconnect": self.disconnect,
            "api_disconnect": self.api_disconnect,
            "approve": self.approve,
            "reload": self.reload,
            "metrics": self.service.metrics.samples,
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

    def claim(self, device: str, call: "CallHomeTransport") -> bool:
        """Tell the main process; a refusal closes the call when it comes back."""
        assert call.call is not None
        call_id = call.call.id
        answer = self.channel.call("claim", device=device, call=call_id)

        def verdict(result: str) -> None:
            if result == "refuse" and self.service.manager.sessions.get(device) is call and call.call is not None:
                reason = f"device {device} already has a session in another worker (duplicate_sessions: reject)"
                call.call.end(Outcome.DUPLICATE_REFUSED, reason)
                self.service.manager.disconnect(call, reason)

        answer.addCallbacks(verdict, lambda f: None)
        return True

    def release(self, device: str, call_id: str) -> None:
        """The call ended here."""
        self.channel.notify("release", device=device, call=call_id)

    def report(self) -> None:
        """Every second: what changed in the registry, and the calls open here."""
        manager = self.service.manager
        statuses, pending, dropped = manager.registry.changes()
        self.channel.notify("report", statuses=statuses, pending=pending, dropped=dropped,
                            active=len(manager.active), handshakes=manager.admission.pending)

    # --- asked by the main process -------------------------------------------------------

    def sessions(self) -> list[dict[str, Any]]:
        """The calls open here."""
        from callhome.api import session_info

        return [session_info(c, capabilities=False) for c in list(self.service.manager.active)]

    def session(self, device: str) -> dict[str, Any] | None:
        """The session of C{device} here, with its capabilities."""
        from callhome.api import session_info

        call = self.service.manager.sessions.get(device)
        return session_info(call) if call is not None else None

    def rpc(self, device: str, content_type: str, body: str) -> defer.Deferred[dict[str, Any]]:
        """An API RPC on a session held here."""
        from callhome.api import ManagementApi

        api = ManagementApi(self.service)
        d = defer.maybeDeferred(api.run_rpc, device, content_type, base64.b64decode(body))
        return d.addBoth(encode_response)

    def api_disconnect(self, device: str) -> defer.Deferred[dict[str, Any]]:
        """An API disconnect of a session held here."""
        from callhome.api import ManagementApi

        api = ManagementApi(self.service)
        return defer.maybeDeferred(api.run_disconnect, device).addBoth(encode_response)

    def disconnect(self, device: str, reason: str, outcome: str | None = None) -> bool:
        """Close C{device}'s session here (replaced elsewhere)."""
        call = self.service.manager.sessions.get(device)
        if call is None:
            return False
        if outcome == "replaced":
            self.service.manager.replace(call)
        else:
            self.service.manager.disconnect(call, reason)
        return True

    def approve(self, fingerprint: str, name: str, group: str | None, approved_at: float) -> None:
        """An approval the main process made and stored."""
        from callhome.registry import EnrollmentError

        try:
            self.service.manager.registry.enroll(fingerprint, name, group, approved_at)
        except EnrollmentError as e:
            self.log.error("cannot apply the approval of {name}: {error}", name=name, error=e)

    def reload(self) -> dict[str, Any] | None:
        """The main process reloaded the config: so do we."""
        return self.service.reload_logged("main process")


def main(argv: list[str] | None = None) -> None:
    """A worker process: ``python -m callhome.workers --config F --index N --listen FD=DESC ...``."""
    parser = argparse.ArgumentParser(description="A callhome worker process (started by the main process).")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listen", action="append", default=[], help="FD=DESCRIPTION of an inherited listening socket")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO
    from twisted.logger import LogLevel, globalLogBeginner

    from callhome import config as config_module
    from callhome.call import record
    from callhome.service import CallHomeService, WorkerRole

    record.set_worker(args.index)
    config = config_module.load(args.config)
    inherited = {}
    for entry in args.listen:
        number, _, description = entry.partition("=")
        inherited[description] = int(number)
    stopping: list[bool] = []

    def stop() -> None:
        if not stopping and reactor.running:  # type: ignore[attr-defined]
            stopping.append(True)
            reactor.stop()  # type: ignore[attr-defined]

    service = CallHomeService(config, reactor, worker=WorkerRole(args.index, inherited))
    link = WorkerLink(service, stop)

    def observer(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.info:
            link.forward_log(event)

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False, discardBuffer=True)
    StandardIO(link.channel, reactor=reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # type: ignore[attr-defined]
    # A stop signal (systemd signals every process of the unit) stops
    # gracefully, once, like the main process's stop notice; reloads are
    # the main process's to order.
    signal.signal(signal.SIGTERM, lambda number, frame: reactor.callFromThread(stop))  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, lambda number, frame: reactor.callFromThread(stop))  # type: ignore[attr-defined]
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    link.channel.notify("ready", pid=os.getpid())
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
