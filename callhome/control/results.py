"""What control-plane operations answer besides plain JSON-able data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class XmlAnswer:
    """
    A device's reply to an RPC, exactly as received.

    @ivar outcome: ``ok``, or ``rpc-error`` when the device answered with one
        (still an answer: the request succeeded, the device refused).
    """

    raw: bytes
    outcome: str


@dataclass(frozen=True)
class ResultFile:
    """A saved result's payload on disk, to stream."""

    path: Path
    sha256: str
    content_type: str
