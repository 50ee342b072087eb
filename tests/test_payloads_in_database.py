"""
``store.payloads: database``: small results go into the database with their
row, in the store's batch, and are no files; the API, ``callhome result``
and ``callhome export`` serve them as before; a restart does not take them
for lost; a result over ``payloads_max_inline`` is still a file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from twisted.internet import reactor, task

from callhome import config as config_module
from callhome.config import ConfigError
from tests.service_harness import RunningService, run_cli, wait_for


def result_files(root: Path) -> list[Path]:
    """Every result file under results_dir (none for results in the database)."""
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


class PayloadsInDatabaseTests(RunningService):
    """A periodic device's reply stored in SQLite, served by every route."""

    store_extra = ", payloads: database"

    async def call_once(self, extra: str = "") -> list[dict]:
        key, fingerprint = self.device_key("edge")
        self.start(f'[{{name: edge, host_keys: ["{fingerprint}"]}}]', chains="{main: [{get: {}}, {get-config: {}}]}", extra=extra)
        device = self.call(key)
        await device.ended
        await wait_for(lambda: self.service.manager.counts["ok"] == 1, what="the call")
        listed: list[dict] = []
        for _ in range(100):  # the rows come with the store's next batch
            listed = (await self.get("/results?device=edge")).json()["results"]
            if len(listed) == 2:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(listed), 2, listed)
        return listed

    async def test_served_without_files(self) -> None:
        listed = await self.call_once()
        self.assertEqual(result_files(self.tmp / "results"), [], "no result is a file")
        for row in listed:
            payload = await self.get(row["url"])
            self.assertEqual(payload.code, 200)
            self.assertEqual(hashlib.sha256(payload.body).hexdigest(), row["sha256"])
            self.assertEqual(len(payload.body), row["size"])
            self.assertIn(b"<rpc-reply", payload.body)
        api = ["--api", self.api]
        out, err, code = await run_cli(*api, "result", str(listed[0]["id"]))
        self.assertEqual((code, hashlib.sha256(out).hexdigest()), (0, listed[0]["sha256"]), err)
        export = self.tmp / "export"
        out, err, code = await run_cli(*api, "export", str(export), "--device", "edge")
        self.assertEqual(code, 0, err)
        self.assertIn(b"2 of 2 results written", err)
        for row in listed:
            written = export / row["path"]
            self.assertEqual(hashlib.sha256(written.read_bytes()).hexdigest(), row["sha256"])
            self.assertTrue(written.name.endswith(f"-{row['action']}.xml"))

    async def test_restart_does_not_mark_them_missing(self) -> None:
        """Start-up reconciliation looks for files; these have none and are not lost."""
        listed = await self.call_once()
        await self.service.stopService()
        self.start('[{name: edge, host_keys: ["SHA256:' + "A" * 43 + '"]}]')
        again = (await self.get("/results?device=edge")).json()["results"]
        self.assertEqual([(r["id"], r.get("missing")) for r in again], [(r["id"], None) for r in listed])
        self.assertEqual((await self.get(listed[0]["url"])).code, 200)

    async def test_larger_results_stay_files(self) -> None:
        """Over payloads_max_inline the reply is a file, as with store.payloads: files."""
        self.store_extra = ", payloads: database, payloads_max_inline: 200"
        listed = await self.call_once()
        files = result_files(self.tmp / "results")
        big = [r for r in listed if r["size"] > 200]
        self.assertTrue(big, listed)
        self.assertEqual(sorted(str(f.relative_to(self.tmp / "results")) for f in files), sorted(r["path"] for r in big))
        for row in listed:
            self.assertEqual(hashlib.sha256((await self.get(row["url"])).body).hexdigest(), row["sha256"])


class PayloadsConfigTests(RunningService):
    """The keys' errors name them."""

    def test_errors(self) -> None:
        for extra, expected in (
            (", payloads: disk", "store.payloads: must be files or database, not 'disk'"),
            (", payloads: database, payloads_max_inline: 100000000", "store.payloads_max_inline: at most 67108864"),
        ):
            self.port = self.api_port = 1
            self.store_extra = extra
            self.write_config("[]")
            with self.assertRaises(ConfigError) as caught:
                config_module.load(self.config_path)
            self.assertIn(expected, str(caught.exception))
