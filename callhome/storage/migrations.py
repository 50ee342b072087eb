"""
The store's schema: ordered migrations, the same list for SQLite and
PostgreSQL (L{callhome.storage.database} translates the DDL), each in its
own transaction; a database newer than this code is refused.
"""

from __future__ import annotations

import time
from typing import Any

from callhome.logs import LevelLogger
from callhome.storage.database import Database, SQLiteDatabase


class StoreError(Exception):
    """The database cannot be used (unreadable, or from a newer release)."""


#: ordered schema migrations: (version, statements).  Never edit a released
#: entry; append a new one.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        "CREATE TABLE devices (name TEXT PRIMARY KEY, status TEXT NOT NULL, last_seen REAL,"
        " last_source TEXT, calls INTEGER NOT NULL DEFAULT 0, last_error TEXT, fingerprint TEXT)",
        "CREATE TABLE quarantine (fingerprint TEXT PRIMARY KEY, key_type TEXT NOT NULL,"
        " first_seen REAL NOT NULL, last_seen REAL NOT NULL, last_source TEXT, times_seen INTEGER NOT NULL)",
        "CREATE TABLE enrollments (fingerprint TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
        " grp TEXT, approved_at REAL NOT NULL)",
        "CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,"
        " action TEXT NOT NULL, time REAL NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,"
        " sha256 TEXT NOT NULL)",
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,"
        " device TEXT, kind TEXT NOT NULL, message TEXT NOT NULL)",
    )),
    # 2: results know the call (session) they came from; events carry
    # structured data; listing by device stays fast with many rows.
    (2, (
        "ALTER TABLE results ADD COLUMN session TEXT",
        "ALTER TABLE events ADD COLUMN data TEXT",
        "CREATE INDEX results_by_device ON results (device, id)",
        "CREATE INDEX events_by_device ON events (device, id)",
        "CREATE INDEX events_by_time ON events (time)",
    )),
    # 3: a result whose file is gone is marked (when it was noticed), not
    # dropped (start-up reconciliation, callhome.storage.reconcile).
    (3, (
        "ALTER TABLE results ADD COLUMN missing REAL",
    )),
    # 4: an unknown TLS certificate is quarantined with its subject, issuer
    # and validity (JSON), beside unknown host keys.
    (4, (
        "ALTER TABLE quarantine ADD COLUMN certificate TEXT",
    )),
    # 5: a cluster of instances on one (PostgreSQL) database: rows name the
    # instance that wrote them; instances and their session claims (leases);
    # result payloads in the database, in chunks, so any instance serves them.
    (5, (
        "ALTER TABLE results ADD COLUMN instance TEXT",
        "ALTER TABLE events ADD COLUMN instance TEXT",
        # When a device's row last changed, so instances read only what changed.
        "ALTER TABLE devices ADD COLUMN updated REAL",
        "ALTER TABLE devices ADD COLUMN writer TEXT",
        "CREATE TABLE instances (name TEXT PRIMARY KEY, advertise TEXT, host TEXT, pid INTEGER,"
        " started REAL NOT NULL, heartbeat REAL NOT NULL, stopped REAL)",
        "CREATE TABLE sessions (device TEXT PRIMARY KEY, instance TEXT NOT NULL, call TEXT NOT NULL,"
        " transport TEXT, peer TEXT, since REAL NOT NULL, lease_until REAL NOT NULL)",
        "CREATE INDEX sessions_by_instance ON sessions (instance)",
        "CREATE TABLE payloads (result INTEGER NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,"
        " PRIMARY KEY (result, seq))",
    )),
    # 6: the schema cache: YANG modules by module and revision ('' when the
    # device names none), and which modules each device announced.
    (6, (
        "CREATE TABLE schemas (module TEXT NOT NULL, revision TEXT NOT NULL, text TEXT NOT NULL,"
        " size INTEGER NOT NULL, sha256 TEXT NOT NULL, fetched_at REAL NOT NULL, PRIMARY KEY (module, revision))",
        "CREATE TABLE device_schemas (device TEXT NOT NULL, module TEXT NOT NULL, revision TEXT NOT NULL,"
        " PRIMARY KEY (device, module, revision))",
    )),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]


def schema_version(connection: Any, database: Database | None = None) -> int:
    """The schema version of a database (0 for an empty one)."""
    database = database if database is not None else SQLiteDatabase(":memory:")
    if not database.has_table(connection, "schema_version"):
        return 0
    row = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(
    connection: Any, upto: int = SCHEMA_VERSION, log: LevelLogger | None = None, database: Database | None = None,
) -> int:
    """
    Bring a database's schema to version C{upto}; return the version it had.
    The same migrations run on SQLite and PostgreSQL (L{Database.ddl}).

    @raises StoreError: if the database is newer than this code.
    """
    database = database if database is not None else SQLiteDatabase(":memory:")
    unlock = database.lock_schema(connection)
    try:
        found = schema_version(connection, database)
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {found} is newer than this callhome understands "
                f"({SCHEMA_VERSION}): upgrade callhome or restore a backup"
            )
        for version, statements in MIGRATIONS:
            if version <= found or version > upto:
                continue
            # One transaction per migration, DDL included: all of it or none, so
            # a migration cut short (disk full, locked) is simply retried.
            database.begin_migration(connection)
            try:
                if version == 1:
                    connection.execute(database.ddl("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at REAL NOT NULL)"))
                for statement in statements:
                    connection.execute(database.ddl(statement))
                connection.execute(database.sql("INSERT INTO schema_version VALUES (?, ?)"), (version, time.time()))
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            if log is not None:
                log.info("database schema upgraded to version {version}", version=version)
    finally:
        unlock()
    return found
