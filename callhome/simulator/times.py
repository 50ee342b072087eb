"""RFC 3339 date-and-time, as NETCONF event times and ``/netconf-state`` write it."""

from __future__ import annotations

from datetime import datetime, timezone


def format_time(seconds: float) -> str:
    """RFC 3339 date-and-time in UTC, as NETCONF writes it."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += (".%06d" % moment.microsecond).rstrip("0")
    return text + "Z"


def parse_time(text: str) -> float:
    """Read an RFC 3339 date-and-time (UTC if it names no offset)."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
