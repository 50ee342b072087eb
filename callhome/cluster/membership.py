"""
This instance among the others on one PostgreSQL database.

An instance registers under its name at start (blocking, before anything
is served, as the store's schema check is): a name a live instance holds
is refused when it was configured, and made unique (``-2``, ``-3``...) when
it was the host name.  Then, every C{lease / 3} seconds, its heartbeat
renews the instance row and the leases of its session claims in one
transaction (L{callhome.cluster.claims}).  Times are the database's clock,
so machines whose clocks disagree still agree on who holds what.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from callhome.config import ClusterSettings
from callhome.logs import LevelLogger
from callhome.storage.database import Database

#: the database's clock, in seconds since the epoch.
NOW = "EXTRACT(EPOCH FROM clock_timestamp())"


class ClusterError(Exception):
    """This instance cannot join the cluster (its name is taken)."""


def register(database: Database, settings: ClusterSettings, advertise: str | None, log: LevelLogger) -> str:
    """
    Register this instance (blocking; start-up); returns the name it runs
    under.  Claims left by an earlier run under the same name are dropped:
    they were this instance's, and it is starting again.

    @raises ClusterError: the configured name is held by a live instance.
    """
    connection = database.connect()
    try:
        name = settings.instance
        for suffix in range(1, 100):
            candidate = name if suffix == 1 else f"{name}-{suffix}"
            holder = _live_holder(connection, database, candidate, settings.lease)
            if holder is None:
                name = candidate
                break
            if settings.named:
                raise ClusterError(
                    f"cluster.instance {candidate!r} is already running on {holder['host']} (pid {holder['pid']}, "
                    f"heartbeat {holder['age']:.0f}s ago): give each instance its own name"
                )
            log.info("instance name {name} is taken by a running instance: trying the next", name=candidate)
        else:  # pragma: no cover - 99 instances on one host name
            raise ClusterError(f"no free instance name from {name!r}: set cluster.instance")
        sql = database.sql
        with connection.transaction():
            connection.execute(sql("DELETE FROM sessions WHERE instance = ?"), (name,))
            connection.execute(sql(
                f"INSERT INTO instances (name, advertise, host, pid, started, heartbeat, stopped) VALUES (?, ?, ?, ?, {NOW}, {NOW}, NULL)"
                " ON CONFLICT (name) DO UPDATE SET advertise = excluded.advertise, host = excluded.host, pid = excluded.pid,"
                " started = excluded.started, heartbeat = excluded.heartbeat, stopped = NULL"),
                (name, advertise, socket.gethostname(), os.getpid()),
            )
        return name
    finally:
        connection.close()


def _live_holder(connection: Any, database: Database, name: str, lease: float) -> dict[str, Any] | None:
    row = connection.execute(database.sql(
        f"SELECT host, pid, {NOW} - heartbeat AS age FROM instances WHERE name = ? AND stopped IS NULL AND heartbeat > {NOW} - ?"),
        (name, lease),
    ).fetchone()
    return None if row is None else {"host": row[0], "pid": row[1], "age": row[2]}


def heartbeat(
    cursor: Any, database: Database, instance: str, lease: float, local: dict[str, str],
) -> tuple[set[tuple[str, str]], dict[str, str]]:
    """
    Renew the instance row and every claim it holds (on the database
    thread).  Returns the (device, call) claims it still holds, and, for
    the C{local} sessions (device -> call) it no longer holds, the instance
    that holds each now (a device with no row at all is missing from it:
    its claim is simply written again).
    """
    database.lock_writes(cursor)
    sql = database.sql
    cursor.execute(sql(f"UPDATE instances SET heartbeat = {NOW}, stopped = NULL WHERE name = ?"), (instance,))
    cursor.execute(sql(f"UPDATE sessions SET lease_until = {NOW} + ? WHERE instance = ? RETURNING device, call"), (lease, instance))
    held = {(row[0], row[1]) for row in cursor.fetchall()}
    lost = [device for device, call in local.items() if (device, call) not in held]
    holders: dict[str, str] = {}
    if lost:
        cursor.execute(sql("SELECT device, instance, call FROM sessions WHERE device = ANY(?)"), (lost,))
        holders = {row[0]: row[1] for row in cursor.fetchall() if (row[1], row[2]) != (instance, local[row[0]])}
    return held, holders


def expire(cursor: Any, database: Database, lease: float) -> list[dict[str, Any]]:
    """
    Delete claims whose lease ran out and whose instance is gone too (no
    heartbeat within the lease); return them, once, to one instance.  A
    live instance's claims are left alone: after the database itself was
    unreachable for longer than the lease, every lease has run out, and
    the instances renew them at their next heartbeat.
    """
    database.lock_writes(cursor)
    cursor.execute(database.sql(
        f"DELETE FROM sessions WHERE lease_until < {NOW} AND NOT EXISTS (SELECT 1 FROM instances"
        f" WHERE instances.name = sessions.instance AND instances.stopped IS NULL AND instances.heartbeat > {NOW} - ?)"
        " RETURNING device, instance, call, peer"
    ), (lease,))
    return [{"device": r[0], "instance": r[1], "call": r[2], "peer": r[3]} for r in cursor.fetchall()]


def leave(cursor: Any, database: Database, instance: str) -> None:
    """A graceful stop: no claims left, the name free at once."""
    database.lock_writes(cursor)
    sql = database.sql
    cursor.execute(sql("DELETE FROM sessions WHERE instance = ?"), (instance,))
    cursor.execute(sql(f"UPDATE instances SET stopped = {NOW} WHERE name = ?"), (instance,))


def instances(cursor: Any, database: Database, lease: float) -> list[dict[str, Any]]:
    """Every instance the database knows, with whether it is alive."""
    cursor.execute(database.sql(
        f"SELECT name, advertise, host, pid, started, heartbeat, stopped, {NOW} - heartbeat AS age FROM instances ORDER BY name"
    ))
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    for row in rows:
        row["alive"] = row["stopped"] is None and row["age"] < lease
    return rows


#: the advisory lock whose holder watches expected calls for the cluster.
WATCH_LOCK = 0x63616C6C686F6D67


def lead(cursor: Any, database: Database) -> bool:
    """
    Whether this instance watches the cluster's expected calls: the one
    whose database connection holds C{WATCH_LOCK} (a session lock, so it
    goes with that connection when the instance dies, and another
    instance takes it at its next heartbeat).
    """
    cursor.execute("SELECT pg_try_advisory_lock(%s)", (WATCH_LOCK,))
    return bool(cursor.fetchone()[0])
