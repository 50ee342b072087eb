"""
A worker process's entry point: ``python -m callhome.workers --config F
--index N --listen FD=DESCRIPTION ...``, started by the main process's
L{callhome.workers.supervisor.WorkerPool}, never by hand.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

from callhome import config as config_module
from callhome.call import record
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
    from twisted.internet.stdio import StandardIO
    from twisted.logger import LogLevel, globalLogBeginner

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
    link = WorkerLink(service.manager, service.control, service.reload_logged, stop)
    service.before_save = link.report

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
