"""
The callhome service: listeners, the manager, the store and the API, as
one MultiService; live reload and graceful shutdown.

Reload (SIGHUP or ``POST /reload``) re-reads the config file: a bad one is
refused, logged, and the running config kept; a good one is applied to new
calls (devices, credentials, chains, policies) and listeners are added or
removed, while open sessions stay up (except those of devices no longer
listed).

Stop (SIGTERM, SIGINT): stop accepting calls, give running chains
C{shutdown_grace} seconds to finish, send ``close-session`` to every
session, write the store, exit 0.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from typing import Any, Callable, cast

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IFileDescriptor, IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import ServerFactory
from twisted.python.failure import Failure

from callhome import config as config_module
from callhome import logs, operator_view
from callhome.actions.chains import Chains, build_chains
from callhome.logs import LevelLogger
from callhome.config import Config
from callhome.control.api import api_site
from callhome.control.errors import ReloadRefused
from callhome.control.operations import ControlPlane
from callhome.call.listener import CallHomeFactory, ProxiedCallFactory, with_backlog
from callhome.call.manager import Manager
from callhome.metrics import Metrics
from callhome.reactor import IServiceReactor
from callhome.call.registry import Registry
from callhome.storage.store import Store
from callhome.tls.factory import TlsCalls
from callhome.workers.supervisor import WorkerPool
from callhome.cluster import joining as cluster
from callhome.cluster.node import ClusterNode

#: seconds between retention passes over the store.
RETENTION_INTERVAL = 3600.0

#: the prefix of a TLS listener's key in L{CallHomeService.listeners} (and in
#: the sockets workers inherit): "tls tcp:4335".  A space: no endpoint has one.
TLS_KEY = "tls "


def listener_keys(config: Config) -> list[str]:
    """Every call-home listener a config asks for: ``listen`` as written, ``listen_tls`` prefixed with L{TLS_KEY}."""
    return [*config.listen, *(TLS_KEY + d for d in config.listen_tls)]


class EndpointListener(Service):
    """
    Listens on one endpoint while running.

    @ivar endpoint: where to listen (L{None} for an L{AdoptedListener}, which
        accepts on an inherited socket instead).
    @ivar port: the listening port once bound (its C{getHost()} tells the
        address, e.g. for C{tcp:0}).
    """

    def __init__(self, description: str, endpoint: IStreamServerEndpoint | None, factory: IProtocolFactory) -> None:
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        """Bind now; a port that cannot be bound stops start-up with the error."""
        super().startService()
        assert self.endpoint is not None  # only an AdoptedListener has none, and it binds its own way
        result: list[IListeningPort | Failure] = []
        self.endpoint.listen(self.factory).addBoth(result.append)
        if not result:
            raise RuntimeError(f"listener {self.description} did not bind synchronously")
        outcome = result[0]
        if isinstance(outcome, Failure):
            self.running = False
            outcome.raiseException()
        self.port = outcome

    def stopService(self) -> defer.Deferred[None] | None:
        """Stop accepting on this endpoint (connections already made stay)."""
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        # maybeDeferred's overloads cannot say "Deferred[T] or T gives Deferred[T]".
        return cast("defer.Deferred[None]", defer.maybeDeferred(port.stopListening))


class AdoptedListener(EndpointListener):
    """
    Accepts on a listening socket inherited from the main process (a
    worker process of ``workers: N``).
    """

    def __init__(self, description: str, fd: int, reactor: IServiceReactor, factory: IProtocolFactory) -> None:
        super().__init__(description, None, factory)
        self.fd = fd
        self.reactor = reactor

    def startService(self) -> None:
        """Accept on the inherited socket (the reactor takes its own copy)."""
        Service.startService(self)
        with socket.socket(fileno=os.dup(self.fd)) as probe:
            family = probe.family
        # Any protocol factory will do (a haproxy: listener's is a
        # WrappingFactory); IReactorSocket's signature says ServerFactory.
        self.port = self.reactor.adoptStreamPort(self.fd, family, cast(ServerFactory, self.factory))
        os.close(self.fd)


@dataclass(frozen=True)
class WorkerRole:
    """What makes a service a worker process: its number and the sockets it inherited."""

    index: int
    #: listen description -> inherited file descriptor.
    inherited: dict[str, int]


class CallHomeService(MultiService):
    """
    Listens on every configured endpoint and serves the calls.

    @ivar manager: serves the calls.
    @ivar listeners: endpoint description -> its listener, one per ``listen:`` entry.
    @ivar api: the management API's listener, if enabled.
    @ivar store: the database.
    """

    log = LevelLogger(namespace="callhome")

    def __init__(
        self, config: Config, reactor: IServiceReactor, handle_signals: bool = False, worker: WorkerRole | None = None,
        chains: Chains | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.handle_signals = handle_signals
        self.worker = worker
        self.stopping = False
        self._stopped: defer.Deferred[None] | None = None
        self._signalled = False
        #: called before each housekeeping save (a worker reports its changes).
        self.before_save: Callable[[], None] | None = None
        logs.set_level(config.log_level)
        # Built before anything opens: a bad step stops start-up (ConfigError).
        chains = chains if chains is not None else build_chains(config)
        database = cluster.database_for(config)
        # On PostgreSQL this instance registers its name first (a taken one is refused).
        instance = cluster.register(database, config)
        self.store = Store(database, reactor, durable=config.store.durable, instance=instance)
        # The main process reconciles results_dir with the table for every process.
        snapshot = self.store.open(config.results_dir if worker is None else None)
        self.metrics = Metrics()
        registry = Registry(config, reactor, store=self.store, snapshot=snapshot)
        self.manager = Manager(config, reactor, registry=registry, store=self.store, metrics=self.metrics, chains=chains)
        self.factory = CallHomeFactory(self.manager)
        #: TLS calls (``listen_tls``), built with the config's identities.
        self.tls_calls = TlsCalls(self.manager)
        self.tls_factory = CallHomeFactory(self.manager, self.tls_calls, transport="tls")
        for warning in config.warnings:
            self.log.warn("config: {warning}", warning=warning)
        # Registry upkeep: pick up approvals, write status, forget old blocks.
        self._timer(1.0, self._housekeeping)
        if worker is None:  # the main process prunes for every process
            self._timer(RETENTION_INTERVAL, self._retention)
        self.listeners: dict[str, EndpointListener] = {}
        for key in listener_keys(config):
            self._add_listener(key)
        #: the operations the API and the worker link expose.
        self.control = ControlPlane(self.manager, self.store, self.metrics, service=self)
        #: devices that did not call, webhook alerts.
        self.operator = operator_view.attach(self, config, self.manager, self.store, self.metrics, reactor, worker is None)
        self.pool: WorkerPool | None = None
        #: this instance's part in a cluster (PostgreSQL store), else None.
        self.cluster: ClusterNode | None = None
        if instance is not None:
            self.cluster = cluster.join(self.store, self.manager, self.control, config, reactor, self.operator.expectations)
            self.cluster.setServiceParent(self)
        if worker is None and config.workers > 1:
            # After the listeners: it starts once they are bound.
            self.pool = WorkerPool(reactor, self.manager, config.workers, self.listening_sockets)
            self.pool.setServiceParent(self)
            self.manager.cluster = self.pool
            self.control.remote = self.pool
        self.api: EndpointListener | None = None
        if config.api.listen is not None and worker is None:
            endpoint = serverFromString(reactor, config.api.listen)
            self.api = EndpointListener(config.api.listen, endpoint, api_site(self.control, config.api.token))
            self.api.setServiceParent(self)

    @property
    def expectations(self) -> Any:
        """The devices expected to call (the main process only)."""
        return self.operator.expectations

    def _timer(self, interval: float, work: Callable[[], Any]) -> None:
        timer = TimerService(interval, work)
        timer.clock = self.reactor
        timer.setServiceParent(self)

    def _listener(self, key: str) -> EndpointListener:
        """The listener for a L{listener_keys} entry: an SSH or (prefixed) a TLS endpoint."""
        tls = key.startswith(TLS_KEY)
        description = key[len(TLS_KEY):] if tls else key
        calls = self.tls_factory if tls else self.factory
        factory: IProtocolFactory = calls
        inner = description
        if description.startswith("haproxy:"):
            # Our own PROXY wrapper: admission by the device's address.
            inner = description[len("haproxy:"):]
            factory = ProxiedCallFactory(self.manager, calls)
        if self.worker is not None:
            return AdoptedListener(key, self.worker.inherited[key], self.reactor, factory)
        endpoint = serverFromString(self.reactor, with_backlog(inner))
        return EndpointListener(key, endpoint, factory)

    def _add_listener(self, description: str) -> EndpointListener:
        listener = self._listener(description)
        listener.setServiceParent(self)
        self.listeners[description] = listener
        return listener

    def _housekeeping(self) -> None:
        if self.before_save is not None:
            self.before_save()
        self.manager.registry.tick()
        self.manager.admission.prune()

    def _retention(self) -> defer.Deferred[int] | None:
        store = self.config.store
        if store.retention_days is None and store.retention_per_device is None:
            return None
        pruned = self.store.prune(store.retention_days, store.retention_per_device)

        def report(count: int) -> int:
            if count:
                self.log.info("retention: deleted {count} old results", count=count)
            return count

        pruned.addCallback(report)
        pruned.addErrback(lambda f: self.log.failure("retention pass failed", f))
        return pruned

    def addresses(self) -> list[object]:
        """The bound address of every call-home listener (e.g. to learn a tcp:0 port)."""
        return [l.port.getHost() for l in self.listeners.values() if l.port is not None]

    def listening(self) -> list[str]:
        """The call-home endpoints bound now (their descriptions)."""
        return [d for d, l in self.listeners.items() if l.port is not None]

    def listening_sockets(self) -> dict[str, int]:
        """Each bound call-home listener's socket, for worker processes to inherit."""
        # Every port they bind is a file descriptor (tcp.Port, unix.Port,
        # adopted): IListeningPort does not say so.
        return {d: cast(IFileDescriptor, l.port).fileno() for d, l in self.listeners.items() if l.port is not None}

    def api_address(self) -> object | None:
        """The API's bound address, if it listens."""
        return self.api.port.getHost() if self.api is not None and self.api.port is not None else None

    # --- start -------------------------------------------------------------------------

    def startService(self) -> None:
        """Start listening; say where and for how many devices."""
        super().startService()
        if self.worker is not None:
            self.log.info("worker {index} accepting calls on {endpoints}", index=self.worker.index,
                          endpoints=", ".join(_show(a) for a in self.addresses()))
            self.manager.event("started", f"worker {self.worker.index} started")
            return
        api = self.api_address()
        self.log.info(
            "callhome listening on {endpoints} for {count} devices; results in {results_dir}; "
            "database {database}; API {api}{workers}",
            endpoints=", ".join(_show(a) for a in self.addresses()),
            count=len(self.manager.registry.devices()),
            results_dir=str(self.config.results_dir),
            database=self.store.where,
            api=_show(api) if api is not None else "off",
            workers=(f"; {self.config.workers} processes" if self.config.workers > 1 else "")
            + (f"; cluster instance {self.store.instance}" if self.cluster is not None else ""),
        )
        if self.cluster is not None and self.config.cluster.advertise is None and api is not None:
            cluster.advertise(self.store, api)
        self.manager.event("started", "service started")
        if self.handle_signals:
            # After the reactor's own handlers are in place, or they would
            # replace ours: twistd re-raises SIGTERM after the reactor
            # stops (exit status 143); ours stops the reactor gracefully
            # and lets twistd exit 0.
            self.reactor.callWhenRunning(self._install_signal_handlers)

    def _install_signal_handlers(self) -> None:
        def stop(number: int, frame: Any) -> None:
            self.reactor.callFromThread(self._stop_on_signal, signal.Signals(number).name)

        def reload(number: int, frame: Any) -> None:
            self.reactor.callFromThread(self.reload_logged, "SIGHUP")

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _stop_on_signal(self, name: str) -> None:
        if self._signalled:
            # A second signal (a process group's, a second Ctrl-C): the stop is under way.
            self.log.info("{signal}: already stopping", signal=name)
            return
        self._signalled = True
        self.log.info("{signal}: stopping gracefully (grace {grace:g}s)", signal=name, grace=self.config.shutdown_grace)
        if self.reactor.running:
            self.reactor.stop()

    # --- reload ---------------------------------------------------------------------------

    def reload_logged(self, why: str) -> dict[str, Any] | None:
        """Reload, logging a refusal instead of raising it."""
        try:
            return self.reload(why)
        except ReloadRefused as e:
            self.log.error("reload ({why}) refused, running config kept: {error}", why=why, error=str(e))
            return None

    def reload(self, why: str = "request") -> dict[str, Any]:
        """
        Re-read the config file and apply it; return what changed.

        @raises ReloadRefused: the config is bad or a new listener cannot
            bind; nothing was changed.
        """
        if self.stopping:
            raise ReloadRefused("the service is stopping")
        try:
            new = config_module.load(self.config.source)
            chains = build_chains(new)
        except config_module.ConfigError as e:
            raise self._refused(f"config error: {e}") from None
        except OSError as e:
            raise self._refused(f"cannot read {self.config.source}: {e.strerror}") from None
        old = self.config
        wanted = listener_keys(new)
        added = [d for d in wanted if d not in self.listeners]
        removed = [d for d in self.listeners if d not in wanted]
        processes = old.workers > 1 or self.worker is not None
        if processes:
            # The worker processes inherited the listening sockets when they
            # started: listeners change with a restart.
            added, removed = [], []
        bound: list[EndpointListener] = []
        for description in added:
            listener = self._listener(description)
            try:
                listener.setServiceParent(self)  # binds now: the service is running
            except Exception as e:
                for done in [listener, *bound]:
                    if done.running:
                        done.stopService()
                    done.disownServiceParent()
                raise self._refused(f"cannot listen on {description}: {e}") from None
            bound.append(listener)
        # From here on nothing can fail: apply it all.
        for listener in bound:
            self.listeners[listener.description] = listener
        for description in removed:
            listener = self.listeners.pop(description)
            listener.stopService()
            listener.disownServiceParent()
        for warning in new.warnings:
            self.log.warn("config: {warning}", warning=warning)
        self.config = new
        logs.set_level(new.log_level)
        self.manager.reconfigure(new, chains)
        self.tls_calls.reconfigure(new)
        restart = [
            key for key, changed in (
                ("api", old.api != new.api),
                ("store.database", old.store.location != new.store.location),
                ("cluster", old.cluster != new.cluster),
                ("log", old.log_format != new.log_format),
                ("listen", processes and listener_keys(old) != listener_keys(new)),
                ("workers", old.workers != new.workers),
            ) if changed
        ]
        if self.pool is not None:
            self.pool.tell_all("reload")
        summary = {
            "listeners_added": added,
            "listeners_removed": removed,
            "devices": len(self.manager.registry.devices()),
            "chains": sorted(new.chains),
            "needs_restart": restart,
        }
        self.log.info(
            "config reloaded ({why}): {devices} devices, listeners +{added} -{removed}{restart}",
            why=why, devices=summary["devices"], added=added or "[]", removed=removed or "[]",
            restart=f"; {', '.join(restart)} changed: takes effect after a restart" if restart else "",
        )
        self.manager.event("reload", f"config reloaded ({why})", data=summary)
        return summary

    def _refused(self, why: str) -> ReloadRefused:
        """Record a refused reload as an event; the error to raise."""
        self.manager.event("reload-refused", why)
        return ReloadRefused(why)

    # --- stop ------------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop accepting calls, let running chains finish (up to
        C{shutdown_grace}), close every session with close-session, write
        the store, then stop the API.  Asked again (a second signal, a
        test's cleanup), it returns the stop already under way.
        """
        if self._stopped is not None:
            return self._stopped
        self.stopping = True
        stops = [defer.maybeDeferred(l.stopService) for l in self.listeners.values()]
        # The workers stop the same way, at the same time.
        workers = self.pool.stop_workers() if self.pool is not None else None
        stopped: defer.Deferred[Any] = defer.DeferredList(stops, consumeErrors=True)
        stopped.addCallback(lambda _: self._wait_for_chains())
        stopped.addCallback(lambda _: self.manager.close_all())
        stopped.addCallback(lambda _: self.manager.drained(timeout=10.0))
        if workers is not None:
            stopped.addCallback(lambda _: workers)
        stopped.addErrback(lambda f: self.log.failure("error while closing sessions", f))
        # Whatever happened above, what is queued is written.
        stopped.addBoth(lambda _: self._final_write())
        stopped.addBoth(lambda result: self._stop_rest(result))
        self._stopped = stopped
        return stopped

    def _wait_for_chains(self) -> defer.Deferred[None] | None:
        running = list(self.manager.running)
        if not running:
            return None
        grace = self.config.shutdown_grace
        self.log.info("waiting up to {grace:g}s for {count} running chains", grace=grace, count=len(running))
        # Not DeferredList.addTimeout: cancelling the list would cancel the
        # chains themselves; a chain still running after the grace period
        # ends when close-session closes its session.
        waiting: defer.Deferred[None] = defer.Deferred()
        finished = defer.DeferredList(running, consumeErrors=True)
        timer = self.reactor.callLater(grace, self._grace_over, waiting, grace)

        def over(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not waiting.called:
                waiting.callback(None)

        finished.addBoth(over)
        return waiting

    def _grace_over(self, waiting: defer.Deferred[None], grace: float) -> None:
        self.log.warn(
            "{count} chains still running after {grace:g}s (shutdown_grace): closing their sessions",
            count=len(self.manager.running), grace=grace,
        )
        waiting.callback(None)

    def _final_write(self) -> defer.Deferred[None]:
        self.manager.registry.save()
        who = f"worker {self.worker.index}" if self.worker is not None else "service"
        self.manager.event("stopped", f"{who} stopped", counts=dict(self.manager.counts))
        return self.store.close()

    def _stop_rest(self, result: Any) -> defer.Deferred[Any]:
        if isinstance(result, Failure):
            self.log.failure("error while stopping", result)
        # The timers and the API; listeners are stopped already.
        rest = [s for s in self if s not in self.listeners.values() and s.running]
        Service.stopService(self)
        return defer.DeferredList([defer.maybeDeferred(s.stopService) for s in reversed(rest)], consumeErrors=True)


def _show(address: Any) -> str:
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else str(address)
