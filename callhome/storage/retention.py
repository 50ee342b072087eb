"""
Retention: results (rows, payloads and files) and events past their age
or beyond the newest N per device are deleted (on the database thread).
"""

from __future__ import annotations

import os
from typing import Any

from callhome.logs import LevelLogger
from callhome.storage.database import Database


def prune_rows(cursor: Any, database: Database, cutoff: float | None, keep_per_device: int | None) -> list[str]:
    sql = database.sql
    database.lock_writes(cursor)
    doomed: list[tuple[int, str]] = []
    if cutoff is not None:
        cursor.execute(sql("SELECT id, path FROM results WHERE time < ?"), (cutoff,))
        doomed += cursor.fetchall()
        cursor.execute(sql("DELETE FROM events WHERE time < ?"), (cutoff,))
    if keep_per_device is not None:
        cursor.execute(sql(
            "SELECT id, path FROM (SELECT id, path, ROW_NUMBER() OVER"
            " (PARTITION BY device ORDER BY id DESC) AS n FROM results) AS ranked WHERE n > ?"),
            (keep_per_device,),
        )
        doomed += cursor.fetchall()
    ids = sorted({row[0] for row in doomed})
    if ids:
        cursor.executemany(sql("DELETE FROM payloads WHERE result = ?"), [(i,) for i in ids])
        cursor.executemany(sql("DELETE FROM results WHERE id = ?"), [(i,) for i in ids])
    return sorted({row[1] for row in doomed})


def unlink_all(cursor: Any, paths: list[str], log: LevelLogger) -> int:
    """Delete pruned result files; return how many results were pruned."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # an operator removed it already
        except OSError as e:
            log.warn("retention: cannot delete {path}: {error}", path=path, error=e.strerror)
    return len(paths)
