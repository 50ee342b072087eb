"""What control-plane operations answer besides plain JSON-able data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from twisted.internet import defer


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
    """
    A saved result's payload, to stream: its file on disk or, where the
    file is not here (another instance saved it, or its machine is gone),
    its chunks in the database.

    @ivar chunks: chunk number -> that chunk (None past the last), when the
        store keeps payloads (PostgreSQL).
    """

    path: Path
    sha256: str
    content_type: str
    chunks: Callable[[int], defer.Deferred[bytes | None]] | None = None
