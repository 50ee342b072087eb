"""
Start-up reconciliation: the results table and ``results_dir`` agree.

The order of writes makes this the only gap to close: a result is written
as a file first (atomically: temporary file, then a link to its final
name), and its row is queued and written within the flush interval.  A
crash (SIGKILL, power) between the two leaves a file without a row; the
reverse order would leave rows pointing at files that never came.  So at
start, before anything is served:

* every result file without a row gets one (size, SHA-256, device from its
  folder, action and time from its name, or the file's time);
* rows whose file is gone are marked (``missing`` set to when it was
  noticed), not deleted: the API still lists them, and serving one answers
  410;
* temporary files a crash left (``.partial-*``) are removed: they are never
  results.

It runs on the start-up connection (blocking: nothing is served yet) and
logs what it found, with progress on large directories.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from callhome.logs import LevelLogger
from callhome.storage import payloads
from callhome.storage.database import Database

#: <UTC stamp>-<action>[-n].xml, as ResultsWriter.save names results.
_STAMPED = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z)-(.+?)(?:-\d+)?\.xml$")
#: files looked at between two progress lines.
PROGRESS_EVERY = 20_000


@dataclass
class Reconciled:
    """What reconciliation found."""

    files: int = 0
    indexed: int = 0
    missing: int = 0
    partial_removed: int = 0


def _hash(path: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            size += len(block)
            digest.update(block)
    return size, digest.hexdigest()


def _name_facts(name: str, mtime: float) -> tuple[str, float]:
    """The action and time a result's file name gives (its mtime when the name is not ours)."""
    match = _STAMPED.match(name)
    if match is None:
        return "save", mtime
    stamp = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    return match.group(2), stamp.timestamp()


def reconcile(connection: Any, database: Database, results_dir: Path, log: LevelLogger, instance: str | None = None) -> Reconciled:
    """
    Make the results table and C{results_dir} agree (see the module's
    docstring).  In a cluster only this C{instance}'s rows are its files.
    """
    found = Reconciled()
    sql = database.sql
    # A result whose payload is in the database (store.payloads: database) has no file to miss.
    stored = "EXISTS (SELECT 1 FROM payloads WHERE payloads.result = results.id)"
    if instance is None:
        rows = connection.execute(f"SELECT id, path, missing, {stored} FROM results").fetchall()
    else:
        rows = connection.execute(sql(f"SELECT id, path, missing, {stored} FROM results WHERE instance = ?"), (instance,)).fetchall()
    known = {os.path.realpath(path) for _, path, _, _ in rows}
    root = Path(results_dir)
    new_rows: list[tuple[str, str, float, str, int, str]] = []
    started = time.monotonic()
    if root.is_dir():
        for folder, _dirs, names in os.walk(root):
            relative = Path(folder).relative_to(root)
            for name in names:
                path = os.path.join(folder, name)
                if name.startswith(".partial-"):
                    try:
                        os.unlink(path)
                        found.partial_removed += 1
                    except OSError as e:
                        log.warn("cannot remove the partial file {path}: {error}", path=path, error=e.strerror)
                    continue
                found.files += 1
                if found.files % PROGRESS_EVERY == 0:
                    log.info("reconciling {root}: {count} files checked, {indexed} indexed so far",
                             root=str(root), count=found.files, indexed=len(new_rows))
                if os.path.realpath(path) in known or not relative.parts:
                    continue  # indexed, or not in a device's folder
                try:
                    size, digest = _hash(path)
                    action, when = _name_facts(name, os.stat(path).st_mtime)
                except OSError as e:
                    log.warn("cannot read {path} to index it: {error}", path=path, error=e.strerror)
                    continue
                new_rows.append((relative.parts[0], action, when, path, size, digest))
    gone = [row_id for row_id, path, missing, in_database in rows
            if missing is None and not in_database and not os.path.exists(path)]
    now = time.time()
    database.begin_migration(connection)
    try:
        cursor = connection.cursor()
        if new_rows and instance is not None:
            # A cluster's store: the payload goes in with the row.
            for device, action, when, path, size, digest in new_rows:
                payloads.insert_result(cursor, database, (device, action, when, path, size, digest, None, instance), path)
        elif new_rows:
            cursor.executemany(
                sql("INSERT INTO results (device, action, time, path, size, sha256, session, instance) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)"),
                [(*row, instance) for row in new_rows],
            )
        if gone:
            cursor.executemany(sql("UPDATE results SET missing = ? WHERE id = ?"), [(now, row_id) for row_id in gone])
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    found.indexed, found.missing = len(new_rows), len(gone)
    if found.indexed or found.missing or found.partial_removed:
        log.warn(
            "reconciled {root} with the database in {seconds:.1f}s: {files} result files, {indexed} had no row "
            "(indexed now), {missing} rows lost their file (marked missing), {partial} partial files removed",
            root=str(root), seconds=time.monotonic() - started, files=found.files, indexed=found.indexed,
            missing=found.missing, partial=found.partial_removed,
        )
    else:
        log.info("reconciled {root} with the database: {files} result files, all indexed", root=str(root), files=found.files)
    return found
