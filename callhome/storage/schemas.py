"""
The schema cache: YANG modules kept in the store by module and revision,
so ``get-schema`` fetches only those no device gave us before, and the API
serves them (``/schemas``).  Which modules each device announced is kept
too.  Works on both databases; in a cluster every instance shares it.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

if TYPE_CHECKING:  # pragma: no cover
    from callhome.storage.store import Store

#: a YANG module or submodule statement, after comments and blank lines.
_YANG_START = re.compile(rb"^\s*(?:(?://[^\n]*\n|/\*.*?\*/)\s*)*(?:sub)?module\s+[A-Za-z_][\w.-]*\s*\{", re.S)


def yang_problem(text: bytes, limit: int) -> str | None:
    """Why C{text} is not a YANG module we keep (None: it is one)."""
    if len(text) > limit:
        return f"{len(text)} bytes, over the {limit}-byte limit for a schema"
    if b"\0" in text or not _YANG_START.match(text[:65536]):
        return "not YANG text (no module or submodule statement at its start)"
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    return None


class SchemaCache:
    """The store's schemas (read on the database thread, written with its batches)."""

    def __init__(self, store: "Store") -> None:
        self.store = store

    def known(self, keys: list[tuple[str, str]]) -> defer.Deferred[set[tuple[str, str]]]:
        """Which of (module, revision) are cached already."""
        if not keys:
            return defer.succeed(set())
        d = self.store.query("SELECT module, revision FROM schemas")
        wanted = set(keys)
        return d.addCallback(lambda rows: {(r["module"], r["revision"]) for r in rows} & wanted)

    def save(self, module: str, revision: str, text: bytes) -> None:
        """Keep a module (written with the store's next batch)."""
        self.store.execute_later(
            "INSERT INTO schemas (module, revision, text, size, sha256, fetched_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (module, revision) DO NOTHING",
            (module, revision, text.decode("utf-8"), len(text), hashlib.sha256(text).hexdigest(), time.time()),
        )

    def announced(self, device: str, keys: list[tuple[str, str]]) -> None:
        """The modules C{device} lists now (replacing what it listed before)."""
        self.store.execute_later("DELETE FROM device_schemas WHERE device = ?", (device,))
        for module, revision in keys:
            self.store.execute_later(
                "INSERT INTO device_schemas (device, module, revision) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (device, module, revision),
            )

    def listing(self, device: str | None = None) -> defer.Deferred[list[dict[str, Any]]]:
        """The cached modules (or those C{device} announced, cached or not), with how many devices use each."""
        if device is not None:
            return self.store.query(
                "SELECT d.module, d.revision, s.size, s.sha256, s.fetched_at FROM device_schemas d"
                " LEFT JOIN schemas s ON s.module = d.module AND s.revision = d.revision"
                " WHERE d.device = ? ORDER BY d.module, d.revision", (device,))
        return self.store.query(
            "SELECT s.module, s.revision, s.size, s.sha256, s.fetched_at,"
            " (SELECT COUNT(*) FROM device_schemas d WHERE d.module = s.module AND d.revision = s.revision) AS devices"
            " FROM schemas s ORDER BY s.module, s.revision")

    def text(self, module: str, revision: str) -> defer.Deferred[str | None]:
        """One module's YANG text, or None."""
        d = self.store.query("SELECT text FROM schemas WHERE module = ? AND revision = ?", (module, revision))
        return d.addCallback(lambda rows: rows[0]["text"] if rows else None)
