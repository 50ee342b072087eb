"""
The store on a real PostgreSQL (a private server of the test's own, on a
free loopback port): the same migrations as SQLite, kept in step; every
write and read of the store; a newer schema refused; a server that is not
there at start named without its password; writes queued while the server
is down and written when it is back.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from callhome.call.registry import Registry
from callhome.storage import store as store_module
from callhome.database_url import url_without_password
from callhome.storage.database import PostgresDatabase, SQLiteDatabase
from callhome.storage.store import SCHEMA_VERSION, Store, StoreError, migrate, schema_version
from tests import pgserver
from tests.helpers import make_config, new_key, write_key


def server() -> pgserver.PostgresServer:
    reason = pgserver.available()
    if reason is not None:
        raise SkipTest(reason)
    return pgserver.shared()


def pg_columns(connection: Any) -> dict[str, list[str]]:
    rows = connection.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    ).fetchall()
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    return tables


def sqlite_columns(connection: sqlite3.Connection) -> dict[str, list[str]]:
    names = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {name: [r[1] for r in connection.execute(f"PRAGMA table_info({name})")] for name in names}


class PostgresMigrationTests(TestCase):
    """One list of migrations, run on both databases."""

    def setUp(self) -> None:
        self.server = server()
        self.url = self.server.create_database("mig")
        self.database = PostgresDatabase(self.url, password=pgserver.PASSWORD)

    def test_every_migration_gives_both_databases_the_same_tables(self) -> None:
        """After each version, PostgreSQL and SQLite have the same tables and columns, in order."""
        lite = sqlite3.connect(":memory:", isolation_level=None)
        pg = self.database.connect()
        self.addCleanup(pg.close)
        for version, _ in store_module.MIGRATIONS:
            migrate(lite, upto=version)
            migrate(pg, upto=version, database=self.database)
            self.assertEqual(pg_columns(pg), sqlite_columns(lite), f"after version {version}")
            self.assertEqual(schema_version(pg, self.database), version)

    def test_newer_database_is_refused(self) -> None:
        pg = self.database.connect()
        migrate(pg, database=self.database)
        pg.execute("INSERT INTO schema_version VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
        pg.close()
        with self.assertRaises(StoreError) as caught:
            Store(self.database, reactor).open()
        self.assertIn(f"schema version {SCHEMA_VERSION + 1} is newer", str(caught.exception))

    def test_times_keep_their_fraction(self) -> None:
        """SQLite's REAL is PostgreSQL's DOUBLE PRECISION, not its 4-byte REAL."""
        pg = self.database.connect()
        self.addCleanup(pg.close)
        migrate(pg, database=self.database)
        pg.execute("INSERT INTO events (time, kind, message) VALUES (%s, 'x', 'y')", (1764990000.123456,))
        (when,) = pg.execute("SELECT time FROM events").fetchone()
        self.assertAlmostEqual(when, 1764990000.123456, places=5)


class PostgresUnreachableTests(TestCase):
    """A server that does not answer at start is a clear error."""

    def test_no_server_names_the_url_without_its_password(self) -> None:
        if pgserver.available() is not None:
            raise SkipTest(pgserver.available())
        port = pgserver.free_port()
        url = f"postgresql://callhome:hunter2@127.0.0.1:{port}/callhome"
        with self.assertRaises(StoreError) as caught:
            Store(PostgresDatabase(url, connect_timeout=2), reactor).open()
        message = str(caught.exception)
        self.assertIn(f"cannot open database postgresql://callhome:***@127.0.0.1:{port}/callhome", message)
        self.assertNotIn("hunter2", message)

    def test_wrong_password_is_a_clear_error(self) -> None:
        pg = server()
        with self.assertRaises(StoreError) as caught:
            Store(PostgresDatabase(pg.url(), password="wrong"), reactor).open()
        self.assertIn("password authentication failed", str(caught.exception))
        self.assertNotIn("wrong", str(caught.exception).replace("password authentication", ""))

    def test_url_without_password(self) -> None:
        self.assertEqual(url_without_password("postgresql://u:p%40ss@h:5/d"), "postgresql://u:***@h:5/d")
        self.assertEqual(url_without_password("postgresql://u@h/d"), "postgresql://u@h/d")


class PostgresStoreTests(TestCase):
    """The store's writes and reads, on PostgreSQL."""

    def setUp(self) -> None:
        self.server = server()
        self.url = self.server.create_database("store")
        self.tmp = Path(self.mktemp())
        key = write_key(self.tmp, "k", new_key())
        self.config = make_config(self.tmp, {"edge-1": new_key()}, f"private_key: {key}")

    def store(self, **kwargs: Any) -> Store:
        return Store(PostgresDatabase(self.url, password=pgserver.PASSWORD), reactor, instance="pg-1", **kwargs)

    async def test_writes_reads_and_registry_state_round_trip(self) -> None:
        store = self.store()
        registry = Registry(self.config, reactor, store=store, snapshot=store.open())
        device = self.config.devices[0]
        registry.transition(device, "connecting", source="10.0.0.1:1", fingerprint="SHA256:x")
        registry.transition(device, "connected")
        registry.quarantine("SHA256:" + "A" * 43, "ssh-ed25519", "10.0.0.2:2")
        registry.quarantine("SHA256:" + "B" * 43, "ssh-ed25519", "10.0.0.2:2")
        registry.approve("SHA256:" + "B" * 43, "approved-box")
        registry.save()
        store.add_event("call", "a call with 100% of its steps", "edge-1", {"outcome": "ok"})
        store.add_result("edge-1", "get", "/r/1.xml", 10, "ab" * 32, "c-1")
        store.add_result("edge-1", "get", "/r/2.xml", 20, "cd" * 32, "c-1")
        events = await store.events(device="edge-1")
        self.assertEqual([(e["message"], e["instance"]) for e in events], [("a call with 100% of its steps", "pg-1")])
        results = await store.results(device="edge-1")
        self.assertEqual([(r["path"], r["instance"]) for r in results], [("/r/2.xml", "pg-1"), ("/r/1.xml", "pg-1")])
        self.assertEqual((await store.result(results[1]["id"]))["sha256"], "ab" * 32)
        self.assertEqual(await store.prune(None, 1), 1)
        self.assertEqual(len(await store.results()), 1)
        await store.close()

        again = self.store()
        registry = Registry(self.config, reactor, store=again, snapshot=again.open())
        self.addCleanup(again.close)
        self.assertEqual(registry.status["edge-1"].status, "disconnected")
        self.assertEqual(registry.status["edge-1"].calls, 1)
        self.assertEqual(list(registry.pending), ["SHA256:" + "A" * 43])
        self.assertEqual(registry.identify("SHA256:" + "B" * 43).name, "approved-box")

    async def test_a_large_payload_goes_in_with_its_row_in_chunks(self) -> None:
        from callhome.storage import payloads

        store = self.store()
        store.open()
        self.addCleanup(store.close)
        big = self.tmp / "big.xml"
        content = bytes(range(256)) * (payloads.CHUNK * 5 // 2 // 256 + 7)
        big.write_bytes(content)
        store.add_result("edge-1", "get", str(big), len(content), "ab", "c-1")
        (row,) = await store.results()
        chunks, seq = [], 0
        while (chunk := await store.payload_chunk(row["id"], seq)) is not None:
            self.assertLessEqual(len(chunk), payloads.CHUNK)
            chunks.append(chunk)
            seq += 1
        self.assertEqual(seq, 3)
        self.assertEqual(b"".join(chunks), content)
        self.assertEqual(await store.prune(None, 0), 1)
        self.assertIsNone(await store.payload_chunk(row["id"], 0), "retention deletes the payload too")

    async def test_payload_bytes_without_a_file(self) -> None:
        """store.payloads: database on PostgreSQL: the bytes go in with the row, chunked, and no file exists."""
        from callhome.storage import payloads

        store = self.store()
        store.open()
        self.addCleanup(store.close)
        content = b"<rpc-reply/>" * (payloads.CHUNK // 12 + 5)
        store.add_result("edge-1", "get", str(self.tmp / "never-written.xml"), len(content), "ab", "c-1", data=content)
        (row,) = await store.results()
        first, second = await store.payload_chunk(row["id"], 0), await store.payload_chunk(row["id"], 1)
        self.assertEqual((len(first), first + second), (payloads.CHUNK, content))
        self.assertIsNone(await store.payload_chunk(row["id"], 2))
        self.assertFalse((self.tmp / "never-written.xml").exists())

    async def test_writes_wait_while_the_server_is_down_and_land_when_it_is_back(self) -> None:
        """Nothing queued is lost across a server restart; the failure is counted and reported."""
        store = self.store(flush_interval=0.05)
        store.open()
        self.addCleanup(store.close)
        store.add_event("call", "before")
        await store.flush()
        self.server.stop("immediate")
        try:
            for i in range(5):
                store.add_event("call", f"while down {i}")
            await store.flush()
            self.assertIsNotNone(store.failing)
            self.assertEqual(len(store.pending), 5)
        finally:
            self.server.start()
        for _ in range(200):
            if store.failing is None and not store.pending:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        self.assertIsNone(store.failing, store.failing)
        events = await store.events(limit=10)
        self.assertEqual([e["message"] for e in events], ["before"] + [f"while down {i}" for i in range(5)])
        self.assertGreaterEqual(store.write_failures, 1)


class SqliteDatabaseTests(TestCase):
    """The embedded default is unchanged: a path is an SQLite file."""

    def test_a_path_is_sqlite(self) -> None:
        store = Store(Path(self.mktemp()) / "x.sqlite", reactor)
        self.assertIsInstance(store.database, SQLiteDatabase)
        self.assertTrue(store.where.endswith("x.sqlite"))
