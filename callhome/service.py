"""
The callhome service: listeners plus the manager, as one MultiService.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from callhome.config import Config
from callhome.listener import CallHomeFactory, with_backlog
from callhome.manager import Manager


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
        self.listeners: list[StreamServerEndpointService] = []
        for description in config.listen:
            endpoint = serverFromString(reactor, with_backlog(description))
            listener = StreamServerEndpointService(endpoint, self.factory)
            # A port we cannot bind must stop start-up, not be logged later.
            listener._raiseSynchronously = True
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def startService(self) -> None:
        """Start listening; say where and for how many devices."""
        super().startService()
        self.log.info(
            "callhome listening on {endpoints} for {count} devices; results in {results_dir}",
            endpoints=", ".join(self.config.listen),
            count=len(self.config.devices),
            results_dir=str(self.config.results_dir),
        )

    def stopService(self) -> defer.Deferred[None]:
        """Stop accepting calls, then close every open session."""
        stopped = defer.maybeDeferred(super().stopService)
        stopped.addCallback(lambda _: self.manager.close_all())
        stopped.addCallback(lambda _: None)
        return stopped
