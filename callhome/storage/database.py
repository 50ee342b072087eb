"""
The two databases the store runs on, behind one small interface.

* L{SQLiteDatabase}: the embedded default, one file (``store.database: PATH``).
* L{PostgresDatabase}: a cluster's shared database (``store.database:
  postgresql://user@host:port/dbname``), through psycopg 3.

The store writes its SQL once, in SQLite's spelling (``?`` and ``:name``
parameters, SQLite's column types); L{Database.sql} and L{Database.ddl}
turn it into PostgreSQL's.  Only what the store uses is translated: it is a
narrow dialect, not a general one, and the migration test runs every
statement on both.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
from pathlib import Path
from typing import Any, Callable

from twisted.enterprise import adbapi

from callhome.database_url import url_without_password
from callhome.reactor import IServiceReactor

#: one number for the PostgreSQL advisory lock that serialises migrations
#: (two instances starting on an empty database); "callhome" in ASCII.
MIGRATION_LOCK = 0x63616C6C686F6D65
#: the advisory lock every write transaction of a PostgreSQL store takes first.
WRITE_LOCK = MIGRATION_LOCK + 1


class Database:
    """What the store needs of a database: connections, its SQL dialect, its errors."""

    #: "sqlite" or "postgresql".
    kind = ""
    #: the exceptions that mean "the database failed" (not a bug of ours).
    errors: tuple[type[BaseException], ...] = ()

    def describe(self) -> str:
        """Where the database is, for logs and errors (never a password)."""
        raise NotImplementedError

    def connect(self) -> Any:
        """A blocking DB-API connection in autocommit mode (start-up only)."""
        raise NotImplementedError

    def pool(self, reactor: IServiceReactor) -> adbapi.ConnectionPool:
        """The connection pool the store's database thread uses."""
        raise NotImplementedError

    def sql(self, statement: str) -> str:
        """A statement in SQLite's spelling, in this database's."""
        return statement

    def ddl(self, statement: str) -> str:
        """A schema statement in SQLite's spelling, in this database's."""
        return statement

    def has_table(self, connection: Any, name: str) -> bool:
        """Whether a table exists."""
        raise NotImplementedError

    def begin_migration(self, connection: Any) -> None:
        """Start the transaction one migration runs in (DDL included)."""
        connection.execute("BEGIN")

    def lock_schema(self, connection: Any) -> Callable[[], None]:
        """Keep other processes from migrating at the same time; returns the unlock."""
        return lambda: None

    def lock_writes(self, cursor: Any) -> None:
        """Serialise this write transaction with every other instance's (first statement of it)."""


class SQLiteDatabase(Database):
    """One SQLite file: WAL, one writer, no server."""

    kind = "sqlite"
    errors = (sqlite3.Error,)

    def __init__(self, path: str | os.PathLike[str], durable: bool = False) -> None:
        self.path = Path(path)
        self.durable = durable

    def describe(self) -> str:
        return str(self.path)

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: migrations run their own BEGIN/COMMIT, because the
        # sqlite3 module's implicit transactions do not cover DDL.
        connection = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        configure_sqlite(connection, self.durable)
        return connection

    def pool(self, reactor: IServiceReactor) -> adbapi.ConnectionPool:
        # One connection on one thread: SQLite has one writer anyway, and a
        # single FIFO thread makes every read see the writes queued before it.
        return adbapi.ConnectionPool(
            "sqlite3", str(self.path), check_same_thread=False, timeout=30,
            cp_min=1, cp_max=1, cp_openfun=functools.partial(configure_sqlite, durable=self.durable), cp_reactor=reactor,
        )

    def has_table(self, connection: Any, name: str) -> bool:
        return connection.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None

    def begin_migration(self, connection: Any) -> None:
        # IMMEDIATE: take the write lock now, so a second process waits here
        # rather than failing half-way through.
        connection.execute("BEGIN IMMEDIATE")


def configure_sqlite(connection: sqlite3.Connection, durable: bool = False) -> None:
    """Every SQLite connection's settings."""
    # WAL: readers (the API, a backup with sqlite3 .backup) never block the
    # writer.  NORMAL sync survives a process crash (SIGKILL); FULL
    # (store.durable) also survives the machine losing power, at an fsync
    # per commit.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    connection.execute("PRAGMA foreign_keys=ON")


_POSITIONAL = re.compile(r"\?")
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_DDL = (
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    # SQLite's REAL is a double; PostgreSQL's is 4 bytes (times would lose seconds).
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)


class PostgresDatabase(Database):
    """
    A PostgreSQL database shared by the instances of a cluster.

    @ivar url: the libpq URL as configured (no password in it is required:
        C{password} or libpq's C{PGPASSWORD} / C{.pgpass} give one).
    """

    kind = "postgresql"

    def __init__(self, url: str, password: str | None = None, connect_timeout: int = 10) -> None:
        import psycopg  # only a PostgreSQL store needs it

        self._psycopg = psycopg
        self.errors = (psycopg.Error,)
        self.url = url
        self.password = password
        self.connect_timeout = connect_timeout

    def describe(self) -> str:
        return url_without_password(self.url)

    def _arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"connect_timeout": self.connect_timeout, "application_name": "callhome"}
        if self.password is not None:
            arguments["password"] = self.password
        return arguments

    def connect(self) -> Any:
        return self._psycopg.connect(self.url, autocommit=True, **self._arguments())

    def pool(self, reactor: IServiceReactor) -> adbapi.ConnectionPool:
        # One connection on one thread, as for SQLite: every read sees the
        # writes queued before it.  A server restarted under us gets a new
        # connection on the next use (the failed batch is retried by the store).
        return ReconnectingPool(
            "psycopg", self.url, cp_min=1, cp_max=1, cp_noisy=False, cp_reactor=reactor, **self._arguments(),
        )

    @functools.lru_cache(maxsize=256)
    def sql(self, statement: str) -> str:
        statement = statement.replace("%", "%%")
        return _NAMED.sub(r"%(\1)s", _POSITIONAL.sub("%s", statement))

    def ddl(self, statement: str) -> str:
        for pattern, replacement in _DDL:
            statement = pattern.sub(replacement, statement)
        return self.sql(statement)

    def has_table(self, connection: Any, name: str) -> bool:
        row = connection.execute("SELECT to_regclass(%s)", (name,)).fetchone()
        return row is not None and row[0] is not None

    def lock_writes(self, cursor: Any) -> None:
        # Instances write the same rows in batches (claims, releases, device
        # statuses), each batch in its own order: without one lock first,
        # two batches deadlock (PostgreSQL then waits deadlock_timeout, 1 s,
        # and aborts one).  A transaction-scoped advisory lock orders them.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))

    def lock_schema(self, connection: Any) -> Callable[[], None]:
        # A session lock: held across the per-migration transactions.
        connection.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        return lambda: connection.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


class ReconnectingPool(adbapi.ConnectionPool):
    """
    adbapi's pool, reconnecting quietly after the server went away.

    adbapi's own C{cp_reconnect} logs two tracebacks ("Rollback failed") per
    failed interaction; while PostgreSQL is down the store retries a batch
    every few seconds, and says once, in its own words, that writes fail.
    So this overrides C{_runInteraction} (private: adbapi has no public
    hook for what happens when a rollback fails) to drop the broken
    connection instead; the next interaction opens a new one.
    """

    def _runInteraction(self, interaction: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        connection = self.connectionFactory(self)
        transaction = self.transactionFactory(self, connection)
        try:
            result = interaction(transaction, *args, **kw)
            transaction.close()
            connection.commit()
            return result
        except BaseException:
            try:
                connection.rollback()
            except BaseException:
                raw = self.connections.get(self.threadID())
                if raw is not None:
                    self.disconnect(raw)
            raise
