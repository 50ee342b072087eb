"""
twistd integration: ``twistd -n callhome -c etc/config.yaml``.
"""

from __future__ import annotations

import sys
from typing import Any, cast

from twisted.logger import ILogObserver
from twisted.python import usage

from callhome import config as config_module
from callhome.actions.chains import build_chains
from callhome.logs import json_observer
from callhome.reactor import IServiceReactor
from callhome.service import CallHomeService
from callhome.storage.store import StoreError


class Options(usage.Options):
    """Command-line options of ``twistd callhome``."""

    synopsis = "[-c CONFIG]"
    longdesc = (
        "NETCONF Call Home manager (RFC 8071): accepts SSH call-home "
        "connections, identifies each device by its host key and runs its "
        "action chain.  SIGHUP reloads the config; SIGTERM stops gracefully."
    )
    optParameters = [
        ["config", "c", "etc/config.yaml", "Path to the YAML configuration file."],
    ]

    def postOptions(self) -> None:
        """Load and check the config now, so errors stop start-up cleanly."""
        try:
            self["parsed"] = config_module.load(self["config"])
            self["chains"] = build_chains(self["parsed"])
        except config_module.ConfigError as e:
            # twistd prints a UsageError as one line, without a traceback.
            raise usage.UsageError(f"config error: {e}") from None


class _Service(CallHomeService):
    """The service as twistd runs it: a JSON log observer if configured."""

    def setServiceParent(self, parent: Any) -> Any:
        """twistd's application takes our log observer, when the config asks for JSON."""
        if self.config.log_format == "json" and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, json_observer())
        return super().setServiceParent(parent)


def makeService(options: Options, reactor: IServiceReactor | None = None) -> CallHomeService:
    """Build the service from parsed options (signals handled: reload, graceful stop)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        # Its declared type names only some of what it provides.
        reactor = cast(IServiceReactor, global_reactor)
    parsed = options.get("parsed") or config_module.load(options["config"])
    try:
        return _Service(parsed, reactor, handle_signals=True, chains=options.get("chains"))
    except StoreError as e:
        # Like a config error: one line, no traceback.
        sys.stderr.write(f"callhome: {e}\n")
        raise SystemExit(1) from None
