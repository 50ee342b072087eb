"""
A worker process's entry point: ``python -m callhome.workers --config F
--index N --listen FD=DESCRIPTION ...``, started by the main process's
L{callhome.workers.supervisor.WorkerPool}, never by hand.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any, cast

from callhome import config as config_module
from callhome.call import record
from callhome.reactor import IServiceReactor
from callhome.service import CallHomeService, WorkerRole
from callhome.workers.link import WorkerLink


def main(argv: list[str] | None = None) -> None:
    """A worker process: ``python -m callhome.workers --config F --index N --listen FD=DESC ...``."""
    parser = argparse.ArgumentParser(description="A callhome worker process (started by the main process).")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listen", action="append", default=[], help="FD=DESCRIPTION of an inherited listening socket")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.base import ReactorBase
    from twisted.internet.stdio import StandardIO
    from twisted.logger import ILogObserver, LogLevel, globalLogBeginner

    # The global reactor's declared type names only some of what it provides.
    service_reactor = cast(IServiceReactor, reactor)
    record.set_worker(args.index)
    config = config_module.load(args.config)
    inherited = {}
    for entry in args.listen:
        number, _, description = entry.partition("=")
        inherited[description] = int(number)
    stopping: list[bool] = []

    def stop() -> None:
        if not stopping and reactor.running:
            stopping.append(True)
            reactor.stop()

    service = CallHomeService(config, service_reactor, worker=WorkerRole(args.index, inherited))
    link = WorkerLink(service.manager, service.control, service.reload_logged, stop)
    service.before_save = link.report

    def observer(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.info:
            link.forward_log(event)

    # Any callable taking an event is an observer; ILogObserver cannot say so of a function.
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, observer)], redirectStandardIO=False, discardBuffer=True)
    StandardIO(link.channel, reactor=reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    # A stop signal (systemd signals every process of the unit) stops
    # gracefully, once, like the main process's stop notice; reloads are
    # the main process's to order.
    signal.signal(signal.SIGTERM, lambda number, frame: service_reactor.callFromThread(stop))
    signal.signal(signal.SIGINT, lambda number, frame: service_reactor.callFromThread(stop))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    link.channel.notify("ready", pid=os.getpid())
    # Every reactor Twisted ships is a ReactorBase; IReactorCore.run takes no arguments.
    cast(ReactorBase, reactor).run(installSignalHandlers=False)
