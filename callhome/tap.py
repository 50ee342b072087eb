"""
twistd integration: ``twistd -n callhome -c etc/config.yaml``.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from callhome import config as config_module
from callhome.service import CallHomeService


class Options(usage.Options):
    """Command-line options of ``twistd callhome``."""

    synopsis = "[-c CONFIG]"
    longdesc = (
        "NETCONF Call Home manager (RFC 8071): accepts SSH call-home "
        "connections, identifies each device by its host key and runs its "
        "action chain."
    )
    optParameters = [
        ["config", "c", "etc/config.yaml", "Path to the YAML configuration file."],
    ]

    def postOptions(self) -> None:
        """Load and check the config now, so errors stop start-up cleanly."""
        try:
            self["parsed"] = config_module.load(self["config"])
        except config_module.ConfigError as e:
            # twistd prints a UsageError as one line, without a traceback.
            raise usage.UsageError(f"config error: {e}") from None


def makeService(options: Options, reactor: Any = None) -> CallHomeService:
    """Build the service from parsed options."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    parsed = options.get("parsed") or config_module.load(options["config"])
    return CallHomeService(parsed, reactor)
