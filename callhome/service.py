"""
The callhome service: listeners plus the manager, as one MultiService.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from twisted.python.failure import Failure

from callhome.config import Config
from callhome.listener import CallHomeFactory, ProxiedCallFactory, with_backlog
from callhome.manager import Manager


class EndpointListener(Service):
    """
    Listens on one endpoint while running.

    @ivar port: the listening port once bound (its C{getHost()} tells the
        address, e.g. for C{tcp:0}).
    """

    def __init__(self, description: str, endpoint: IStreamServerEndpoint, factory: ServerFactory) -> None:
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        """Bind now; a port that cannot be bound stops start-up with the error."""
        super().startService()
        result: list[object] = []
        self.endpoint.listen(self.factory).addBoth(result.append)
        if not result:
            raise RuntimeError(f"listener {self.description} did not bind synchronously")
        outcome = result[0]
        if isinstance(outcome, Failure):
            self.running = False
            outcome.raiseException()
        self.port = outcome  # type: ignore[assignment]

    def stopService(self) -> defer.Deferred[None] | None:
        """Stop accepting calls on this endpoint."""
        super().stopService()
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else None


class CallHomeService(MultiService):
    """
    Listens on every configured endpoint and serves the calls.

    @ivar manager: serves the calls.
    @ivar listeners: one endpoint service per ``listen:`` entry.
    """

    log = Logger(namespace="callhome")

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.manager = Manager(config, reactor)
        self.factory = CallHomeFactory(self.manager)
        for warning in config.warnings:
            self.log.warn("config: {warning}", warning=warning)
        # Registry upkeep: pick up approvals, write status, forget old blocks.
        housekeeping = TimerService(1.0, self._housekeeping)
        housekeeping.clock = reactor
        housekeeping.setServiceParent(self)
        self.listeners: list[EndpointListener] = []
        for description in config.listen:
            factory: ServerFactory = self.factory
            inner = description
            if description.startswith("haproxy:"):
                # Our own PROXY wrapper: admission by the device's address.
                inner = description[len("haproxy:"):]
                factory = ProxiedCallFactory(self.manager)
            endpoint = serverFromString(reactor, with_backlog(inner))
            listener = EndpointListener(description, endpoint, factory)
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def _housekeeping(self) -> None:
        self.manager.registry.tick()
        self.manager.admission.prune()

    def addresses(self) -> list[object]:
        """The bound address of every listener (e.g. to learn a tcp:0 port)."""
        return [l.port.getHost() for l in self.listeners if l.port is not None]

    def startService(self) -> None:
        """Start listening; say where and for how many devices."""
        super().startService()
        self.log.info(
            "callhome listening on {endpoints} for {count} devices; results in {results_dir}",
            endpoints=", ".join(f"{getattr(a, 'host', a)}:{getattr(a, 'port', '')}" for a in self.addresses()),
            count=len(self.config.devices),
            results_dir=str(self.config.results_dir),
        )

    def stopService(self) -> defer.Deferred[None]:
        """Stop accepting calls, then close every open session."""
        stopped = defer.maybeDeferred(super().stopService)
        stopped.addCallback(lambda _: self.manager.close_all())
        stopped.addCallback(lambda _: self.manager.registry.save(force=True))
        stopped.addCallback(lambda _: None)
        return stopped
