"""
The store: schema migrations, batched writes off the reactor thread,
registry state across restarts, retention.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from callhome.storage import migrations as migrations_module
from callhome.storage import store as store_module
from callhome.call.registry import Registry
from callhome.storage.store import SCHEMA_VERSION, Store, StoreError, migrate, schema_version
from tests.helpers import make_config, new_key, write_key


class MigrationTests(TestCase):
    """The service creates and upgrades its own schema."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.tmp.mkdir()
        self.path = self.tmp / "callhome.sqlite"

    def test_new_database_gets_the_latest_schema(self):
        store = Store(self.path, reactor)
        store.open()
        self.addCleanup(store.close)
        with sqlite3.connect(self.path) as db:
            self.assertEqual(schema_version(db), SCHEMA_VERSION)
            versions = [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY version")]
        self.assertEqual(versions, [v for v, _ in store_module.MIGRATIONS])

    async def test_version_1_database_is_upgraded_in_place(self):
        """
        A database written by schema version 1 (before results had a
        session column and events data) keeps its rows and gains the new
        columns; the service then writes to them.
        """
        with sqlite3.connect(self.path) as db:
            migrate(db, upto=1)
            db.execute("INSERT INTO devices (name, status, calls) VALUES ('edge-1', 'failed-auth', 7)")
            db.execute("INSERT INTO results (device, action, time, path, size, sha256) VALUES ('edge-1', 'get', 1.0, '/x', 3, 'ab')")
            db.execute("INSERT INTO events (time, device, kind, message) VALUES (1.0, 'edge-1', 'call', 'old call')")
        db.close()
        store = Store(self.path, reactor)
        snapshot = store.open()
        self.assertEqual(snapshot.devices[0]["calls"], 7)
        store.add_result("edge-1", "get-config", "/y", 4, "cd", "6745-1")
        store.add_event("call", "new call", "edge-1", {"outcome": "ok"})
        rows = await store.query("SELECT action, session FROM results ORDER BY id")
        self.assertEqual(rows, [{"action": "get", "session": None}, {"action": "get-config", "session": "6745-1"}])
        events = await store.query("SELECT message, data FROM events ORDER BY id")
        self.assertEqual([e["message"] for e in events], ["old call", "new call"])
        self.assertEqual(json.loads(events[1]["data"]), {"outcome": "ok"})
        await store.close()
        with sqlite3.connect(self.path) as db:
            self.assertEqual(schema_version(db), SCHEMA_VERSION)

    def test_failed_migration_leaves_nothing_behind(self):
        """A migration cut short is rolled back whole (DDL included) and retried on the next start."""
        with sqlite3.connect(self.path) as db:
            migrate(db, upto=1)
        db.close()
        (version, statements) = store_module.MIGRATIONS[1]
        broken = ((version, (*statements[:2], "CREATE TABLE broken (")),)
        self.patch(migrations_module, "MIGRATIONS", store_module.MIGRATIONS[:1] + broken)
        with self.assertRaises(StoreError):
            Store(self.path, reactor).open()
        with sqlite3.connect(self.path) as db:
            self.assertEqual(schema_version(db), 1)
            columns = [row[1] for row in db.execute("PRAGMA table_info(results)")]
        db.close()
        self.assertNotIn("session", columns, "the ALTER TABLE was rolled back")
        self.patch(migrations_module, "MIGRATIONS", store_module.MIGRATIONS[:1] + ((version, statements),))
        store = Store(self.path, reactor)
        store.open()
        self.addCleanup(store.close)

    def test_newer_database_is_refused(self):
        with sqlite3.connect(self.path) as db:
            migrate(db)
            db.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
        db.close()
        with self.assertRaises(StoreError) as caught:
            Store(self.path, reactor).open()
        self.assertIn(f"schema version {SCHEMA_VERSION + 1} is newer", str(caught.exception))

    def test_unreadable_database_is_a_clear_error(self):
        self.path.write_bytes(b"this is not a database" * 100)
        with self.assertRaises(StoreError) as caught:
            Store(self.path, reactor).open()
        self.assertIn("cannot open database", str(caught.exception))


class StoreTests(TestCase):
    """Writes are batched; reads see them; state survives a restart."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        key = write_key(self.tmp, "k", new_key())
        self.config = make_config(self.tmp, {"edge-1": new_key()}, f"private_key: {key}")

    def test_writes_wait_for_the_flush(self):
        """Nothing touches the database on the reactor thread: writes queue."""
        clock = MemoryReactorClock()
        store = Store(self.tmp / "db.sqlite", reactor, flush_interval=0.5, clock=clock)
        store.open()
        self.addCleanup(store.close)
        for i in range(3):
            store.add_event("call", f"call {i}")
        self.assertEqual(len(store.pending), 3)
        self.assertEqual(len(clock.getDelayedCalls()), 1, "one flush scheduled for the batch")

    async def test_registry_state_round_trip(self):
        """Status and quarantine survive a restart; nothing is 'connected' after one."""
        store = Store(self.tmp / "db.sqlite", reactor)
        registry = Registry(self.config, reactor, store=store, snapshot=store.open())
        device = self.config.devices[0]
        registry.transition(device, "connecting", source="10.0.0.1:1", fingerprint="SHA256:x")
        registry.transition(device, "connected")
        registry.quarantine("SHA256:" + "A" * 43, "ssh-ed25519", "10.0.0.2:2")
        registry.quarantine("SHA256:" + "B" * 43, "ssh-ed25519", "10.0.0.2:2")
        registry.approve("SHA256:" + "B" * 43, "approved-box")
        registry.save()
        await store.close()

        again_store = Store(self.tmp / "db.sqlite", reactor)
        again = Registry(self.config, reactor, store=again_store, snapshot=again_store.open())
        self.addCleanup(again_store.close)
        self.assertEqual(again.status["edge-1"].status, "disconnected")
        self.assertEqual(again.status["edge-1"].calls, 1)
        self.assertEqual(list(again.pending), ["SHA256:" + "A" * 43])
        self.assertEqual(again.identify("SHA256:" + "B" * 43).name, "approved-box")

    async def test_legacy_json_state_is_imported_once(self):
        """status.json and quarantine.json from before the store are imported into an empty database."""
        state = self.config.state_dir
        state.mkdir(parents=True)
        (state / "status.json").write_text(json.dumps({"edge-1": {"name": "edge-1", "status": "failed-auth", "calls": 4}}))
        (state / "quarantine.json").write_text(json.dumps({"SHA256:q": {
            "fingerprint": "SHA256:q", "key_type": "ssh-rsa", "first_seen": 1.0, "last_seen": 2.0, "last_source": "10.0.0.9:1", "times_seen": 2}}))
        store = Store(self.tmp / "db.sqlite", reactor)
        registry = Registry(self.config, reactor, store=store, snapshot=store.open())
        self.assertEqual(registry.status["edge-1"].status, "failed-auth")
        registry.save()
        rows = await store.query("SELECT name, status, calls FROM devices")
        self.assertEqual(rows, [{"name": "edge-1", "status": "failed-auth", "calls": 4}])
        self.assertEqual(len(await store.query("SELECT * FROM quarantine")), 1)
        await store.close()

    async def test_retention_by_count_and_age(self):
        """Old results go (rows and files); the newest N per device stay."""
        store = Store(self.tmp / "db.sqlite", reactor)
        store.open()
        self.addCleanup(store.close)
        files = []
        for i in range(5):
            path = self.tmp / f"r{i}.xml"
            path.write_text("x")
            files.append(path)
            store.add_result("edge-1", "get", str(path), 1, "00", None, when=1000.0 + i)
        other = self.tmp / "other.xml"
        other.write_text("y")
        store.add_result("edge-2", "get", str(other), 1, "00", None, when=5000.0)
        store.add_event("call", "ancient", when=10.0)
        deleted = await store.prune(None, 2)
        self.assertEqual(deleted, 3)
        self.assertEqual([p.exists() for p in files], [False, False, False, True, True])
        deleted = await store.prune(1.0, None, now=1003.5 + 86400)  # r3 is older than a day then
        self.assertEqual(deleted, 1, "r3 is older than a day; r4 is not")
        self.assertEqual([p.exists() for p in files], [False] * 4 + [True])
        self.assertTrue(other.exists())
        self.assertEqual(await store.query("SELECT message FROM events"), [])


class FailingWriteTests(TestCase):
    """A database that refuses writes (disk full, locked) loses nothing queued."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.tmp.mkdir()
        self.refusals = [2]
        real = store_module._write_batch

        def flaky(cursor, database, batch):  # type: ignore[no-untyped-def]
            if self.refusals[0] > 0:
                self.refusals[0] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return real(cursor, database, batch)

        self.patch(store_module, "_write_batch", flaky)

    async def test_failed_batches_stay_queued_and_are_written_later(self):
        """Two failed flushes, then the database works: every record is written once, in order."""
        from twisted.internet.task import Clock

        clock = Clock()
        store = Store(self.tmp / "db.sqlite", reactor, clock=clock)
        store.open()
        self.addCleanup(store.close)
        for i in range(5):
            store.add_event("test", f"event {i}")
        await store.flush()
        self.assertEqual((store.failing, len(store.pending), store.write_failures),
                         ("OperationalError: database or disk is full", 5, 1))
        clock.advance(1.0)  # the retry: refused again
        await store.interaction(lambda cursor: None)
        self.assertEqual((len(store.pending), store.write_failures), (5, 2))
        store.add_event("test", "event 5")
        clock.advance(2.0)  # the next retry (backed off) works
        rows = await store.query("SELECT message FROM events ORDER BY id")
        self.assertEqual([r["message"] for r in rows], [f"event {i}" for i in range(6)])
        self.assertIsNone(store.failing)
        self.assertEqual(store.pending, [])
        self.flushLoggedErrors()

    async def test_a_full_queue_drops_the_oldest_and_counts_them(self):
        """Past the bound the oldest records go, counted; the newest are kept for the retry."""
        self.refusals[0] = 1
        self.patch(store_module, "MAX_QUEUED", 3)
        store = Store(self.tmp / "db.sqlite", reactor)
        store.open()
        self.addCleanup(store.close)
        for i in range(5):
            store.add_event("test", f"event {i}")
        await store.flush()
        self.assertEqual(store.dropped, 2)
        self.assertEqual([p[1][3] for p in store.pending], ["event 2", "event 3", "event 4"])
        await store.flush()
        rows = await store.query("SELECT message FROM events ORDER BY id")
        self.assertEqual([r["message"] for r in rows], ["event 2", "event 3", "event 4"])
        self.flushLoggedErrors()


class ReconcileTests(TestCase):
    """At start the results table and results_dir agree (a crash between file and row, a deleted file)."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.results = self.tmp / "results"
        (self.results / "edge-1").mkdir(parents=True)

    async def test_files_without_rows_are_indexed_and_lost_files_marked(self):
        """A file with no row gets one; a row whose file is gone is marked; a partial file is removed."""
        import hashlib

        store = Store(self.tmp / "db.sqlite", reactor)
        store.open(self.results)
        kept = self.results / "edge-1" / "20261201T100000.000001Z-get.xml"
        kept.write_bytes(b"<rpc-reply/>")
        gone = self.results / "edge-1" / "20261201T100001.000001Z-get.xml"
        store.add_result("edge-1", "get", str(gone), 3, "x" * 64, "s-1")
        await store.close()
        orphan = self.results / "edge-1" / "20261201T100002.000001Z-get-config-1.xml"
        orphan.write_bytes(b"<rpc-reply>data</rpc-reply>")
        (self.results / "edge-1" / ".partial-abc").write_bytes(b"<rpc-re")
        store = Store(self.tmp / "db.sqlite", reactor)
        store.open(self.results)
        self.addCleanup(store.close)
        self.assertEqual((store.reconciled.indexed, store.reconciled.missing, store.reconciled.partial_removed), (2, 1, 1))
        rows = {Path(r["path"]).name: r for r in await store.results(limit=10)}
        self.assertEqual(set(rows), {kept.name, gone.name, orphan.name})
        self.assertIsNotNone(rows[gone.name]["missing"])
        self.assertIsNone(rows[kept.name]["missing"])
        row = rows[orphan.name]
        self.assertEqual((row["device"], row["action"], row["size"]), ("edge-1", "get-config", orphan.stat().st_size))
        self.assertEqual(row["sha256"], hashlib.sha256(orphan.read_bytes()).hexdigest())
        self.assertFalse((self.results / "edge-1" / ".partial-abc").exists())

    async def test_a_second_start_finds_nothing_to_do(self):
        """Reconciliation is idempotent: what it indexed is not indexed again."""
        (self.results / "edge-1" / "20261201T100000.000001Z-get.xml").write_bytes(b"<a/>")
        for expected in (1, 0):
            store = Store(self.tmp / "db.sqlite", reactor)
            store.open(self.results)
            self.assertEqual(store.reconciled.indexed, expected)
            await store.close()


class DurableResultsTests(TestCase):
    """store.durable: each result reaches the disk before it has its name, and its name after."""

    def test_durable_writes_fsync_the_file_and_its_folder(self):
        from callhome.storage.results import ResultsWriter

        synced: list[int] = []
        real = store_module.os.fsync
        self.patch(store_module.os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
        tmp = Path(self.mktemp())
        ResultsWriter(tmp, durable=False).save("edge-1", "get", b"<a/>")
        self.assertEqual(synced, [])
        path = ResultsWriter(tmp, durable=True).save("edge-1", "get", b"<b/>")
        self.assertEqual(len(synced), 2)
        self.assertEqual(path.read_bytes(), b"<b/>")

    def test_config_key(self):
        """store.durable is a flag; default off."""
        from callhome import config

        base = "listen: [tcp:1]\n"
        self.assertFalse(config.loads(base).store.durable)
        self.assertTrue(config.loads(base + "store: {durable: true}\n").store.durable)
        with self.assertRaises(config.ConfigError) as caught:
            config.loads(base + "store: {durable: yes please}\n")
        self.assertEqual(caught.exception.path, "store.durable")
