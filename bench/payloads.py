"""
Where a reply is stored, measured alone: today's result files against the
payload in the SQLite batch (issue 17, lever 3).

    python bench/payloads.py [--results 2000] [--size 6000] [--rounds 5]

Files: ``ResultsWriter.save`` as the service calls it (temporary file,
hard link, unlink; 1000 device folders that exist already, as in
bench/run.py's later rounds); its row
still goes to the store, so the row's cost is common to both and left out.
Database: the payload as a BLOB column in a batched transaction of 100
rows (the store's batching), on a WAL database with synchronous=NORMAL,
as callhome's store opens SQLite.  Prints the medians of CPU (user+system)
and wall microseconds per result; compare them with the manager's CPU per
periodic session from bench/run.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callhome.storage.results import ResultsWriter  # noqa: E402


def _timed(work: "callable[[], None]") -> tuple[float, float]:  # type: ignore[valid-type]
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu, time.perf_counter() - wall


def files(root: Path, results: int, payload: bytes, devices: int = 1000) -> tuple[float, float]:
    """CPU and wall seconds to save C{results} result files over C{devices} folders that exist already."""
    writer = ResultsWriter(root / "results")
    for i in range(devices):  # a running service has its devices' folders
        writer.save(f"dev-{i:05d}", "warm", payload)
    return _timed(lambda: [writer.save(f"dev-{i % devices:05d}", "get", payload) for i in range(results)])


def database(root: Path, results: int, payload: bytes, batch: int = 100) -> tuple[float, float]:
    """CPU and wall seconds to insert C{results} payloads as BLOBs, C{batch} a transaction."""
    connection = sqlite3.connect(str(root / "payloads.sqlite"), isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("CREATE TABLE payloads (id INTEGER PRIMARY KEY, device TEXT, action TEXT, time REAL, data BLOB)")

    def run() -> None:
        for start in range(0, results, batch):
            connection.execute("BEGIN")
            connection.executemany(
                "INSERT INTO payloads (device, action, time, data) VALUES (?, ?, ?, ?)",
                [(f"dev-{i:05d}", "get", time.time(), payload) for i in range(start, min(results, start + batch))],
            )
            connection.execute("COMMIT")

    try:
        return _timed(run)
    finally:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=2000)
    parser.add_argument("--size", type=int, default=6000, help="payload bytes (bench/run.py's <get> reply is ~6 KiB)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    payload = os.urandom(args.size // 2).hex().encode()
    figures: dict[str, list[tuple[float, float]]] = {"files": [], "database": []}
    for _ in range(args.rounds):
        for name, how in (("files", files), ("database", database)):
            root = Path(tempfile.mkdtemp(prefix="callhome-payloads-"))
            try:
                cpu, wall = how(root, args.results, payload)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            figures[name].append((cpu * 1e6 / args.results, wall * 1e6 / args.results))
    print(f"{args.results} results of {args.size} bytes x {args.rounds} rounds, medians, microseconds per result")
    for name, values in figures.items():
        print(f"{name:10} CPU {statistics.median(v[0] for v in values):7.1f}   wall {statistics.median(v[1] for v in values):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
