"""
JSON log lines for log shippers: one object per line.

Each line has ``time`` (ISO 8601 UTC), ``level``, ``namespace``, the
formatted ``message`` and the event's own fields (device, fingerprint,
outcome, duration, peer, session...) when they are plain JSON values.  A
logged failure adds ``failure`` (its one-line description) and
``traceback``.

Use it with the config key ``log: {format: json}`` (lines on standard
output) or ``twistd --logger callhome.logs.json_observer callhome ...``.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from zope.interface import implementer

_PLAIN = (str, int, float, bool, type(None))

#: the lowest level our own loggers emit (config ``log.level``).
_minimum = LogLevel.info


def set_level(name: str) -> None:
    """Set the lowest level callhome's own loggers emit: debug, info, warn or error."""
    global _minimum
    _minimum = LogLevel.levelWithName(name)


class LevelLogger(Logger):
    """
    A logger that drops events below the configured level before building
    them: twistd records every level, and per-step debug lines would drown
    the one line per call (and cost CPU per session).
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        """Emit the event if its level is at or above C{log.level}."""
        if level < _minimum:
            return
        super().emit(level, format, **kwargs)


@implementer(ILogObserver)
class JsonLineObserver:
    """Writes each event as one JSON line to a text stream."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        """Write one event."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0.0), timezone.utc).isoformat().replace("+00:00", "Z"),
            "level": getattr(event.get("log_level"), "name", "info"),
            "namespace": event.get("log_namespace", "-"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in line and isinstance(value, _PLAIN):
                line[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            line["failure"] = failure.getErrorMessage()
            line["traceback"] = failure.getTraceback()
        self.stream.write(json.dumps(line, default=str) + "\n")
        self.stream.flush()


def json_observer() -> JsonLineObserver:
    """For ``twistd --logger callhome.logs.json_observer``: JSON lines on standard output."""
    return JsonLineObserver(sys.stdout)
