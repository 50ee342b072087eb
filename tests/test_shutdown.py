"""
The service as operators run it: ``twistd -n callhome`` in its own process.
SIGTERM with chains in flight (nothing received is lost, exit 0), SIGHUP
reload, and JSON log lines.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ProcessProtocol

from tests.service_harness import REPO, RunningService, free_port, http, wait_for


class Twistd(ProcessProtocol):
    """A twistd process; C{ended} fires with its exit code (None if killed by a signal)."""

    def __init__(self) -> None:
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.out = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


class ServiceProcessTests(RunningService):
    """twistd callhome, stopped and reloaded by signals."""

    def spawn(self) -> Twistd:
        process = Twistd()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        reactor.spawnProcess(
            process, sys.executable,
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "callhome", "-c", str(self.config_path)],
            env=env, path=str(self.tmp),
        )
        self.process = process

        def kill_if_running() -> defer.Deferred[int | None]:
            if not process.ended.called:
                process.transport.signalProcess("KILL")
            return process.ended

        self.addCleanup(kill_if_running)
        return process

    async def wait_ready(self, process: Twistd) -> None:
        async def api_up() -> bool:
            try:
                return (await http("GET", f"http://127.0.0.1:{self.api_port}/healthz")).code == 200
            except Exception:
                return False

        for _ in range(300):
            if process.ended.called:
                raise AssertionError(f"twistd exited: {process.out.decode(errors='replace')[-3000:]}")
            if await api_up():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"twistd did not come up: {process.out.decode(errors='replace')[-3000:]}")

    def rows(self, sql: str) -> list[tuple]:
        with sqlite3.connect(self.tmp / "callhome.sqlite") as db:
            return db.execute(sql).fetchall()

    async def test_sigterm_with_chains_in_flight(self):
        """
        Two devices are in the middle of their chains when SIGTERM comes: one
        finishes within the grace period, the other's chain is cut. Every
        result received before the signal is on disk and in the database,
        every call is in the events, and twistd exits 0.
        """
        quick_key, quick_fp = self.device_key("quick")
        slow_key, slow_fp = self.device_key("slow")
        self.port = free_port()
        self.api_port = free_port()
        self.write_config(
            f'[{{name: quick, host_keys: ["{quick_fp}"], chain: quick}}, {{name: slow, host_keys: ["{slow_fp}"], chain: slow}}]',
            chains="{main: [{get: {}}], quick: [{get: {}}, {sleep: {seconds: 1.0}}, {get-config: {}}], slow: [{get: {}}, {sleep: {seconds: 60}}, {get-config: {}}]}",
            extra="shutdown_grace: 3",
        )
        process = self.spawn()
        await self.wait_ready(process)
        self.call(quick_key)
        self.call(slow_key)
        results = self.tmp / "results"
        await wait_for(
            lambda: all(list((results / d).glob("*-get.xml")) if (results / d).exists() else False for d in ("quick", "slow")),
            what="both first results",
        )
        started = time.monotonic()
        process.transport.signalProcess("TERM")
        code = await process.ended
        took = time.monotonic() - started
        log = process.out.decode(errors="replace")
        self.assertEqual(code, 0, log[-3000:])
        self.assertLess(took, 15, "the grace period bounds the wait")
        self.assertGreater(took, 0.5, "it waited for the quick chain")
        on_disk = sorted(str(p) for p in results.rglob("*.xml"))
        self.assertEqual(
            sorted(Path(p).name.split("-", 1)[1] + "@" + Path(p).parent.name for p in on_disk),
            ["get-config.xml@quick", "get.xml@quick", "get.xml@slow"],
        )
        in_db = sorted(p for (p,) in self.rows("SELECT path FROM results"))
        self.assertEqual(in_db, on_disk, "every file on disk is in the database")
        self.assertEqual(list(results.rglob(".partial-*")), [], "no partial file")
        calls = {d: (o, r) for d, o, r in self.rows(
            "SELECT device, json_extract(data, '$.outcome'), json_extract(data, '$.reason') FROM events WHERE kind = 'call'")}
        self.assertEqual(calls, {"quick": ("ok", None), "slow": ("disconnected", "service stopping")})
        self.assertEqual(self.rows("SELECT COUNT(*) FROM events WHERE kind = 'stopped'"), [(1,)])
        self.assertIn("SIGTERM: stopping gracefully", log)
        self.assertIn("chains still running after 3s", log)

    async def test_sighup_reloads_and_json_logs(self):
        """SIGHUP applies an edited config; log: {format: json} writes one JSON object per line."""
        key, fp = self.device_key("edge")
        self.port = free_port()
        self.api_port = free_port()
        self.write_config("[]", extra="log: {format: json}")
        process = self.spawn()
        await self.wait_ready(process)
        self.assertEqual(await self.call(key).ended, 1, "unknown at first")
        self.write_config(f'[{{name: edge, host_keys: ["{fp}"]}}]', extra="log: {format: json}")
        process.transport.signalProcess("HUP")

        async def known() -> bool:
            devices = (await http("GET", f"http://127.0.0.1:{self.api_port}/devices")).json()["devices"]
            return [d["name"] for d in devices] == ["edge"]

        for _ in range(100):
            if await known():
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(await self.call(key).ended, 0, "served after the reload")
        process.transport.signalProcess("TERM")
        self.assertEqual(await process.ended, 0)
        lines = [json.loads(line) for line in process.out.decode().splitlines() if line.startswith("{")]
        self.assertTrue(lines, process.out.decode(errors="replace")[-2000:])
        calls = [l for l in lines if l["message"].startswith("call from")]
        self.assertEqual([c["outcome"] for c in calls], ["unknown-host-key", "ok"])
        ok = calls[1]
        self.assertEqual((ok["device"], ok["fingerprint"], ok["level"]), ("edge", fp, "info"))
        self.assertIsInstance(ok["duration"], float)
        self.assertIn("session", ok)
        self.assertTrue(any("config reloaded (SIGHUP)" in l["message"] for l in lines))
