"""
Nothing saved is lost or unaccounted for: the service killed with SIGKILL
in the middle of a load, then started again on the same config.
"""

from __future__ import annotations

import os
import sqlite3
import sys

from twisted.internet import reactor, task

from callhome import fingerprints
from callhome.simulator.ssh_server import load_or_create_host_key
from tests.service_harness import REPO, RunningService, free_port
from tests import test_shutdown

DEVICES = 8


class KillTests(RunningService):
    """twistd callhome killed with SIGKILL under load."""

    spawn = test_shutdown.ServiceProcessTests.spawn
    wait_ready = test_shutdown.ServiceProcessTests.wait_ready

    def result_files(self) -> tuple[set[str], list[str]]:
        """Result files on disk (real paths), and partial ones."""
        files, partial = set(), []
        for folder, _, names in os.walk(self.tmp / "results"):
            for name in names:
                (partial.append if name.startswith(".partial-") else files.add)(os.path.realpath(os.path.join(folder, name)))
        return files, partial

    async def test_sigkill_under_load_loses_no_result(self):
        """
        Eight devices call again and again; the manager is killed with
        SIGKILL mid-load (its queued rows die with it) and started again:
        after start-up every result file has its row, no partial file is
        left, and no row points at nothing.
        """
        keys = self.tmp / "devices"
        lines = []
        for i in range(DEVICES):
            key = load_or_create_host_key(keys / f"device-{i:04d}_ed25519")
            lines.append(f'{{name: sim-{i}, host_keys: ["{fingerprints.of_key(key)}"]}}')
        self.port, self.api_port = free_port(), free_port()
        # A long flush interval is not configurable; the SIGKILL lands
        # within the 0.5 s window often enough with calls this frequent.
        self.write_config("[" + ", ".join(lines) + "]", chains="{main: [{get: {}}, {get-config: {}}]}")
        process = self.spawn()
        await self.wait_ready(process)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        from tests.service_harness import Device

        load = Device()
        reactor.spawnProcess(load, sys.executable, [
            sys.executable, "-m", "callhome.simulator.cli", "--manager", f"127.0.0.1:{self.port}",
            "--host-key", str(keys / "base"), "--devices", str(DEVICES), "--count", "0", "--interval", "0",
            "--concurrency", str(DEVICES), "--authorized-key", self.manager_pub, "--quiet", "--retries", "1000",
            "--retry-delay", "0.1",
        ], env=env)
        self.addCleanup(lambda: load.ended if load.ended.called else (load.transport.signalProcess("KILL"), load.ended)[1])
        for _ in range(400):
            if len(self.result_files()[0]) >= 60:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        process.transport.signalProcess("KILL")
        await process.ended
        load.transport.signalProcess("KILL")
        await load.ended
        before, _ = self.result_files()
        self.assertGreaterEqual(len(before), 60)
        with sqlite3.connect(self.tmp / "callhome.sqlite") as db:
            rows_before = {os.path.realpath(p) for (p,) in db.execute("SELECT path FROM results")}
        # Start again: reconciliation runs before anything is served.
        again = self.spawn()
        await self.wait_ready(again)
        files, partial = self.result_files()
        self.assertEqual(partial, [], "a partial result file was left")
        self.assertEqual(files, before, "files changed while nobody called")
        with sqlite3.connect(self.tmp / "callhome.sqlite") as db:
            rows = {os.path.realpath(p): m for p, m in db.execute("SELECT path, missing FROM results")}
        self.assertEqual(set(rows), files, "every file has exactly its row")
        self.assertEqual([p for p, m in rows.items() if m is not None], [])
        indexed = len(files - rows_before)
        log = again.out.decode(errors="replace")
        self.assertIn("reconciled", log)
        if indexed:
            self.assertIn(f"{indexed} had no row", log)
        print(f"SIGKILL test: {len(files)} result files, {indexed} without a row before the restart, indexed at start")
        again.transport.signalProcess("TERM")
        self.assertEqual(await again.ended, 0)
