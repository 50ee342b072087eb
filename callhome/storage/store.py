"""
The store: results metadata, events, notifications, device status,
quarantine and enrollments in SQLite (the embedded default) or PostgreSQL
(a cluster's shared database; L{callhome.storage.database}).

Result payloads stay files in ``results_dir`` (written atomically by
L{callhome.storage.results.ResultsWriter}); the database keeps their metadata
(device, action, time, size, SHA-256, session) so the API can list and serve
them.

The reactor never waits on the database.  Writes are queued in memory and
written in one transaction every C{flush_interval} seconds (or sooner when
the queue is long) by C{twisted.enterprise.adbapi} on its one database
thread; reads go through the same thread, after the queued writes, so the
API reads what the service has written.  The only blocking access is at
start-up, before anything is served: the schema is created or upgraded and
the registry's state is read (L{Store.open}).

The schema carries its version in the C{schema_version} table; L{MIGRATIONS}
are applied in order, each in its own transaction, so a database from any
earlier release is upgraded in place.  A database from a newer release is
refused rather than guessed at.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from callhome.logs import LevelLogger
from callhome.reactor import IServiceReactor
from callhome.storage import payloads, retention
from callhome.storage.database import Database, SQLiteDatabase
from callhome.storage.migrations import MIGRATIONS, SCHEMA_VERSION, StoreError, migrate, schema_version
from callhome.storage.reconcile import Reconciled, reconcile


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Snapshot", "Store", "StoreError", "migrate", "schema_version", "read_snapshot"]

#: queued writes that trigger a flush before the interval is up.
FLUSH_BATCH = 500
#: records kept queued while the database refuses writes; past this the
#: oldest are dropped (counted and logged).  ~100 bytes each in memory.
MAX_QUEUED = 100_000
#: seconds between retries of a failed write, doubling up to the maximum.
RETRY_DELAY = 1.0
RETRY_DELAY_MAX = 30.0


#: a queued write: SQL (in the database's dialect), its parameters, and the
#: result payload that goes in with it, if any: a file to copy
#: (PostgreSQL) or the bytes (store.payloads: database).
Queued = tuple[str, "Sequence[Any] | dict[str, Any]", "str | bytes | None"]


@dataclass
class Snapshot:
    """What the registry needs at start-up, read from the database."""

    devices: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    enrollments: list[dict[str, Any]] = field(default_factory=list)


def _rows(cursor: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


class Store:
    """
    The service's database: SQLite (a path) or PostgreSQL (a
    L{PostgresDatabase}).

    @ivar database: the database and its dialect.
    @ivar where: the database as logs name it (no password).
    @ivar instance: the instance name written with results and events
        (a cluster's rows say who wrote them).
    @ivar pending: writes queued for the next flush, as (SQL, parameters),
        the SQL already in the database's dialect.
    """

    log = LevelLogger(namespace="callhome.storage.store")

    def __init__(
        self, database: "str | os.PathLike[str] | Database", reactor: IServiceReactor, flush_interval: float = 0.5,
        clock: IReactorTime | None = None, durable: bool = False, instance: str | None = None,
    ) -> None:
        self.database: Database = database if isinstance(database, Database) else SQLiteDatabase(database, durable)
        self.where = self.database.describe()
        # When a row changed, by the database's clock where there is one
        # server for every instance (PostgreSQL), so instances compare it.
        self._now = "EXTRACT(EPOCH FROM clock_timestamp())" if self.database.kind == "postgresql" else "julianday('now') * 86400 - 210866760000"
        self.durable = durable
        self.instance = instance
        #: what start-up reconciliation found (L{open} with a results directory).
        self.reconciled: Reconciled | None = None
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.flush_interval = flush_interval
        self.pending: list[Queued] = []
        self._timer: Any = None
        self._pool: adbapi.ConnectionPool | None = None
        self.writes = 0
        #: why writes fail now (None: they work); /healthz reports it.
        self.failing: str | None = None
        #: failed write batches, and records dropped from a full queue.
        self.write_failures = 0
        self.dropped = 0
        self._retry_delay = RETRY_DELAY
        #: called with (kind, message, device, data, time) for every event recorded.
        self.event_observers: list[Callable[[str, str, str | None, dict[str, Any] | None, float], None]] = []

    # --- start-up (blocking, before anything is served) ----------------------------

    def open(self, results_dir: Path | None = None) -> Snapshot:
        """
        Create or upgrade the schema, reconcile the results table with
        C{results_dir} (if given), read the registry's state, and start the
        database thread.

        @raises StoreError: if the database cannot be opened or is too new.
        """
        database = self.database
        try:
            connection = database.connect()
            try:
                found = migrate(connection, log=self.log, database=database)
                if results_dir is not None:
                    instance = self.instance if database.kind == "postgresql" else None
                    self.reconciled = reconcile(connection, database, results_dir, self.log, instance)
                if found == 0:
                    self.log.info("created database {path} (schema version {version})", path=self.where, version=SCHEMA_VERSION)
                snapshot = read_snapshot(connection)
            finally:
                connection.close()
        except database.errors as e:
            raise StoreError(f"cannot open database {self.where}: {str(e).strip()}") from None
        self._pool = database.pool(self.reactor)
        return snapshot

    # --- writes (queued) -------------------------------------------------------------

    def _queue(self, sql: str, parameters: Sequence[Any] | dict[str, Any], payload: str | bytes | None = None) -> None:
        self.pending.append((self.database.sql(sql), parameters, payload))
        # While writes fail, the retry timer paces them: no flush per record.
        if len(self.pending) >= FLUSH_BATCH and self.failing is None:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.flush_interval, self.flush)

    def execute_later(self, sql: str, parameters: Sequence[Any] | dict[str, Any]) -> None:
        """Queue one more statement with the writes (written in the next batch)."""
        self._queue(sql, parameters)

    def add_event(self, kind: str, message: str, device: str | None = None, data: dict[str, Any] | None = None, when: float | None = None) -> None:
        """Record an event (a call's outcome, a quarantine, a reload...); tell the observers (webhooks)."""
        for observer in self.event_observers:
            observer(kind, message, device, data, time.time() if when is None else when)
        self._queue(
            "INSERT INTO events (time, device, kind, message, data, instance) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time() if when is None else when, device, kind, message, json.dumps(data) if data else None, self.instance),
        )

    def add_result(self, device: str, action: str, path: str, size: int, sha256: str, session: str | None, when: float | None = None,
                   data: bytes | None = None) -> None:
        """Record a saved result's metadata; C{data}: its payload, which is no file (store.payloads: database)."""
        self._queue(
            "INSERT INTO results (device, action, time, path, size, sha256, session, instance) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (device, action, time.time() if when is None else when, path, size, sha256, session, self.instance),
            # The bytes, or on PostgreSQL the file to copy with the row: any instance serves it.
            data if data is not None else path if self.database.kind == "postgresql" else None,
        )

    def put_device(self, status: dict[str, Any]) -> None:
        """Insert or replace a device's status row."""
        self._queue(
            "INSERT INTO devices (name, status, last_seen, last_source, calls, last_error, fingerprint, updated, writer)"
            f" VALUES (:name, :status, :last_seen, :last_source, :calls, :last_error, :fingerprint, {self._now}, :writer)"
            " ON CONFLICT (name) DO UPDATE SET status = excluded.status, last_seen = excluded.last_seen,"
            " last_source = excluded.last_source, calls = excluded.calls, last_error = excluded.last_error,"
            " fingerprint = excluded.fingerprint, updated = excluded.updated, writer = excluded.writer",
            {**status, "writer": self.instance},
        )

    def put_quarantined(self, pending: dict[str, Any]) -> None:
        """Insert or replace a quarantined host key."""
        self._queue(
            "INSERT INTO quarantine (fingerprint, key_type, first_seen, last_seen, last_source, times_seen, certificate)"
            " VALUES (:fingerprint, :key_type, :first_seen, :last_seen, :last_source, :times_seen, :certificate)"
            " ON CONFLICT (fingerprint) DO UPDATE SET key_type = excluded.key_type, first_seen = excluded.first_seen,"
            " last_seen = excluded.last_seen, last_source = excluded.last_source, times_seen = excluded.times_seen,"
            " certificate = excluded.certificate",
            {"certificate": None, **pending},
        )

    def drop_quarantined(self, fingerprint: str) -> None:
        """Forget a quarantined host key (approved, or evicted)."""
        self._queue("DELETE FROM quarantine WHERE fingerprint = ?", (fingerprint,))

    def put_enrollment(self, fingerprint: str, name: str, group: str | None, approved_at: float) -> None:
        """Record an approved device."""
        self._queue(
            "INSERT INTO enrollments (fingerprint, name, grp, approved_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (fingerprint) DO UPDATE SET name = excluded.name, grp = excluded.grp, approved_at = excluded.approved_at",
            (fingerprint, name, group, approved_at),
        )

    def flush(self) -> defer.Deferred[None]:
        """
        Write everything queued; fires when it is in the database.  The one
        database thread runs work in order, so anything run after this (a
        read, C{close}) sees these writes without waiting for them here.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        batch, self.pending = self.pending, []
        if not batch:
            return defer.succeed(None)
        if self._pool is None:
            # After close (a call that ended during reactor shutdown): say
            # what is lost rather than fail somewhere nobody sees.
            self.log.warn("store closed: {count} late records not written", count=len(batch))
            return defer.succeed(None)
        written = self._pool.runInteraction(_write_batch, self.database, batch)

        def done(count: int) -> None:
            self.writes += count
            if self.failing is not None:
                # warn, as the error it ends: an operator at log.level warn
                # must see the outage end too.
                self.log.warn("database writes work again: {count} queued records written to {path}",
                              count=count, path=self.where)
                self.failing = None
                self._retry_delay = RETRY_DELAY

        def failed(failure: Any) -> None:
            # A write that fails (disk full, database locked for 30 s) loses
            # nothing: the batch goes back to the head of the queue (the
            # transaction rolled back, so nothing of it was written) and is
            # retried, with a growing delay, until the database takes it.
            self.write_failures += 1
            reason = f"{type(failure.value).__name__}: {failure.getErrorMessage()}"
            if self.failing is None:
                self.log.error("cannot write {count} records to {path} ({reason}): kept queued, retrying",
                               count=len(batch), path=self.where, reason=reason)
            self.failing = reason
            self.pending[:0] = batch
            excess = len(self.pending) - MAX_QUEUED
            if excess > 0:
                del self.pending[:excess]
                self.dropped += excess
                self.log.critical("store queue full ({limit} records): dropped the {count} oldest ({total} so far)",
                                  limit=MAX_QUEUED, count=excess, total=self.dropped)
            if self._pool is not None and self._timer is None:
                self._timer = self.clock.callLater(self._retry_delay, self.flush)
                self._retry_delay = min(self._retry_delay * 2, RETRY_DELAY_MAX)

        return written.addCallbacks(done, failed)

    # --- reads ---------------------------------------------------------------------------

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> defer.Deferred[list[dict[str, Any]]]:
        """Rows as dicts, read after every write queued so far."""
        statement = self.database.sql(sql)

        def read(cursor: Any) -> list[dict[str, Any]]:
            cursor.execute(statement, parameters)
            return _rows(cursor)

        return self.interaction(read)

    def ping(self) -> defer.Deferred[list[dict[str, Any]]]:
        """A trivial read: fails if the database does not answer."""
        return self.query("SELECT 1 AS ok")

    def events(
        self, after_id: int | None = None, since: float | None = None, device: str | None = None,
        kind: str | None = None, limit: int = 100,
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """Events oldest first: after an event id, from a time, of a device, of a kind."""
        where, params = _conditions((("id > ?", after_id), ("time >= ?", since), ("device = ?", device), ("kind = ?", kind)))
        sql = "SELECT id, time, device, kind, message, data, instance FROM events" + where + " ORDER BY id LIMIT ?"
        return self.query(sql, [*params, limit])

    def results(
        self, device: str | None = None, action: str | None = None, session: str | None = None,
        before_id: int | None = None, limit: int = 100,
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """Result metadata newest first: of a device, an action, a call; before a result id."""
        where, params = _conditions((("device = ?", device), ("action = ?", action), ("session = ?", session), ("id < ?", before_id)))
        sql = "SELECT id, device, action, time, size, sha256, session, path, missing, instance FROM results" + where + " ORDER BY id DESC LIMIT ?"
        return self.query(sql, [*params, limit])

    def result(self, result_id: int) -> defer.Deferred[dict[str, Any] | None]:
        """One result's metadata (path, checksum, device, action), or None."""
        d = self.query("SELECT path, sha256, device, action FROM results WHERE id = ?", (result_id,))
        return d.addCallback(lambda rows: rows[0] if rows else None)

    def payload_chunk(self, result_id: int, seq: int) -> defer.Deferred[bytes | None]:
        """Chunk C{seq} of a result's payload in the database (PostgreSQL, or store.payloads: database), or None."""
        return self.interaction(payloads.read_chunk, self.database, result_id, seq)

    def interaction(self, work: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run C{work(cursor, *args)} on the database thread, after queued writes."""
        self.flush()
        assert self._pool is not None
        return self._pool.runInteraction(work, *args)

    # --- retention -----------------------------------------------------------------------

    def prune(self, keep_days: float | None, keep_per_device: int | None, now: float | None = None) -> defer.Deferred[int]:
        """
        Delete results (rows and files) older than C{keep_days} or beyond the
        newest C{keep_per_device} of each device, and events older than
        C{keep_days}.  Fires with the number of results deleted.
        """
        if keep_days is None and keep_per_device is None:
            return defer.succeed(0)
        cutoff = None if keep_days is None else (time.time() if now is None else now) - keep_days * 86400
        # Rows first (committed), files after: a file that cannot be deleted
        # is logged and left, and never blocks the next pass.
        pruned = self.interaction(retention.prune_rows, self.database, cutoff, keep_per_device)

        def remove_files(paths: list[str]) -> defer.Deferred[int]:
            return self.interaction(retention.unlink_all, paths, self.log)

        return pruned.addCallback(remove_files)

    # --- shutdown --------------------------------------------------------------------

    def close(self) -> defer.Deferred[None]:
        """Write what is queued, then stop the database thread (it finishes its queued work first)."""
        flushed = self.flush()

        def stop(_: object) -> None:
            if self.pending:
                # Results are files first; the next start indexes any without a row.
                self.log.error("store closing with {count} records it could not write ({reason})",
                               count=len(self.pending), reason=self.failing)
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            if self._pool is not None:
                pool, self._pool = self._pool, None
                pool.close()

        flushed.addBoth(stop)
        return flushed


#: a device's status row as the registry reads it.
DEVICE_COLUMNS = "name, status, last_seen, last_source, calls, last_error, fingerprint"


def read_snapshot(connection: Any) -> Snapshot:
    """The registry's state (blocking; start-up, or a cluster's refresh)."""
    def rows(statement: str) -> list[dict[str, Any]]:
        return _rows(connection.execute(statement))

    return Snapshot(
        devices=rows(f"SELECT {DEVICE_COLUMNS} FROM devices"),
        quarantine=rows("SELECT * FROM quarantine"),
        enrollments=rows('SELECT fingerprint, name, grp AS "group", approved_at FROM enrollments'),
    )


def _conditions(pairs: Sequence[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """A WHERE clause of the conditions whose value is given, and their parameters."""
    given = [(condition, value) for condition, value in pairs if value is not None]
    where = " WHERE " + " AND ".join(c for c, _ in given) if given else ""
    return where, [v for _, v in given]


def _write_batch(cursor: Any, database: Database, batch: list[Queued]) -> int:
    """Write a batch in the transaction adbapi wraps around this call."""
    database.lock_writes(cursor)
    for sql, parameters, payload in batch:
        if payload is None:
            cursor.execute(sql, parameters)
        else:
            payloads.insert_result(cursor, database, parameters, payload)
    return len(batch)
