"""
A full disk under the results and the database (a 2 MB tmpfs the test
mounts): calls go on, nothing already saved is lost, /healthz says
degraded, and the queued rows are written once space returns.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from twisted.internet import reactor, task

from callhome import config as config_module
from callhome.service import CallHomeService
from tests.service_harness import RunningService, free_port, wait_for


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs at C{path}; the reason it cannot be done, or None."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    return None if done.returncode == 0 else f"cannot mount a tmpfs: {done.stderr.strip()}"


class FullDiskTests(RunningService):
    """Results and database on a filesystem that fills up."""

    timeout = 120

    async def test_full_disk_loses_nothing_and_recovers(self):
        disk = self.tmp / "disk"
        why = mount_tmpfs(disk, "2m")
        if why is not None:
            self.skipTest(why)
        self.addCleanup(subprocess.run, ["umount", "-l", str(disk)])
        key, fp = self.device_key("edge")
        self.port, self.api_port = free_port(), free_port()
        self.write_config(f'[{{name: edge, host_keys: ["{fp}"]}}]')
        text = self.config_path.read_text()
        text = text.replace(str(self.tmp / "results"), str(disk / "results"))
        text = text.replace(str(self.tmp / "callhome.sqlite"), str(disk / "callhome.sqlite"))
        self.config_path.write_text(text)
        self.service = CallHomeService(config_module.load(self.config_path), reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.api = f"http://127.0.0.1:{self.service.api_address().port}"
        store = self.service.store

        # One call while there is room: its result and row are there.
        await self.call(key, "--count", "1", "--retries", "5").ended
        await wait_for(lambda: list((disk / "results" / "edge").glob("*.xml")), what="the first result")
        await store.flush()
        saved_before = sorted((disk / "results" / "edge").glob("*.xml"))
        self.assertEqual(len(saved_before), 1)

        # Fill the disk to the last block.
        filler = disk / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        for _ in range(3):
            await self.call(key, "--count", "1", "--retries", "5").ended
        await wait_for(lambda: store.failing is not None, timeout=15, what="a failed database write")
        health = (await self.get("/healthz")).json()
        self.assertEqual(health["status"], "degraded")
        self.assertIn("full", health["store"]["failing"])
        queued = len(store.pending)
        self.assertGreater(queued, 0)
        # What was saved before the disk filled is still there, file and row.
        self.assertEqual(sorted((disk / "results" / "edge").glob("*.xml"))[:1], saved_before)

        # Space returns: the queued rows are written by the next retry.
        filler.unlink()
        await wait_for(lambda: store.failing is None, timeout=40, what="the retry to succeed")
        self.assertEqual(store.pending, [])
        self.assertEqual((await self.get("/healthz")).json()["status"], "ok")
        await task.deferLater(reactor, 0, lambda: None)
        with sqlite3.connect(disk / "callhome.sqlite") as db:
            calls = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'call'").fetchone()[0]
            rows = {Path(p).name for (p,) in db.execute("SELECT path FROM results")}
        self.assertGreaterEqual(calls, 4, "every call's event was written once space returned")
        files = {p.name for p in (disk / "results" / "edge").glob("*.xml")}
        self.assertTrue(files <= rows, files - rows)
        self.flushLoggedErrors()
