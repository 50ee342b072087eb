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


#: this instance's name in a cluster (``cluster.instance``), on every JSON line.
_instance: str | None = None


def set_instance(name: str | None) -> None:
    """Name the cluster instance in every JSON log line from now on."""
    global _instance
    _instance = name


class LevelLogger(Logger):
    """
    The one logger class of callhome: it drops an event below the
    configured C{log.level} before building it.

    Why at the logger and not with a C{FilteringLogObserver}: twistd's
    observer records every level, and building an event costs CPU per
    session even when nobody reads it (per-step debug lines; conch's
    per-packet chatter was ~15 % of a session).  The level is process-wide
    because the log observer is.

    @ivar floor: a level this logger never goes below, whatever
        C{log.level} says: conch's own loggers (which we swap in on our
        subclasses of its classes) keep only warnings and errors.
    """

    def __init__(
        self,
        namespace: str | None = None,
        source: object | None = None,
        observer: ILogObserver | None = None,
        floor: LogLevel = LogLevel.debug,
    ) -> None:
        super().__init__(namespace, source, observer)
        self.floor = floor

    def __get__(self, instance: object, owner: type | None = None) -> "LevelLogger":
        """As Twisted's descriptor (namespace from the class, the instance as source), keeping the floor."""
        logger = super().__get__(instance, owner)
        assert isinstance(logger, LevelLogger)
        logger.floor = self.floor
        return logger

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        """Emit the event if its level is at or above C{log.level} (and the floor)."""
        if level < _minimum or level < self.floor:
            return
        super().emit(level, format, **kwargs)


def conch_logger(namespace: str) -> LevelLogger:
    """
    The logger our subclasses of conch's classes give conch's own code
    (its C{_log}): warnings and errors only.
    """
    return LevelLogger(namespace=namespace, floor=LogLevel.warn)


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
        if _instance is not None:
            line["instance"] = _instance
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
