"""
Result payloads in the database.  On PostgreSQL every instance of a
cluster serves every result, including those of an instance whose machine
is gone.  With ``store.payloads: database`` (SQLite or PostgreSQL) a small
result is never a file: its bytes go in with its row.

A result is first a file (written atomically, as on SQLite); its row and
its payload are then written together, in the same transaction as the
rest of the batch, read back from the file in C{CHUNK} pieces: a large
reply is never held in memory twice, and never half in the database.
PostgreSQL compresses each chunk (TOAST), which suits XML well.
"""

from __future__ import annotations

from typing import Any

from callhome.storage.database import Database

#: bytes per payload row: small enough to stream, large enough to be cheap.
CHUNK = 1 << 20


def insert_result(cursor: Any, database: Database, parameters: Any, payload: str | bytes) -> int:
    """
    Insert a results row (its INSERT in C{parameters}' order) and its
    payload: the file at C{payload} (a str), or the bytes themselves; the
    row's id.
    """
    cursor.execute(database.sql(
        "INSERT INTO results (device, action, time, path, size, sha256, session, instance)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"), parameters)
    result_id = int(cursor.fetchone()[0])
    if isinstance(payload, bytes):
        statement = database.sql("INSERT INTO payloads (result, seq, data) VALUES (?, ?, ?)")
        for seq, start in enumerate(range(0, max(len(payload), 1), CHUNK)):
            cursor.execute(statement, (result_id, seq, payload[start : start + CHUNK]))
    else:
        write_payload(cursor, database, result_id, payload)
    return result_id


def write_payload(cursor: Any, database: Database, result_id: int, path: str) -> int:
    """Copy a result file into the payloads table; chunks written (0: the file is gone)."""
    statement = database.sql("INSERT INTO payloads (result, seq, data) VALUES (?, ?, ?)")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0  # reconciliation marks it missing; nothing to copy
    with f:
        seq = 0
        while block := f.read(CHUNK):
            cursor.execute(statement, (result_id, seq, block))
            seq += 1
    return seq


def read_chunk(cursor: Any, database: Database, result_id: int, seq: int) -> bytes | None:
    """One chunk of a result's payload, or None past the last (or when there is none)."""
    cursor.execute(database.sql("SELECT data FROM payloads WHERE result = ? AND seq = ?"), (result_id, seq))
    row = cursor.fetchone()
    return None if row is None else bytes(row[0])
