"""
The schema cache: get-schema fetches only the modules the store lacks;
a schema that is not YANG text or is too large is not kept (logged), the
session unharmed; the API and the CLI list and serve the cache.  In memory
(a scripted session, a real store) and against the running service with a
simulated device in its own process.  (Against netconfd:
tests/test_netconfd_actions.py.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lxml import etree
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from callhome.actions import ActionContext
from callhome.actions.schemas import GetSchema
from callhome.netconf import operations as ops
from callhome.netconf.session import RPCReply
from callhome.storage.results import ResultsWriter
from callhome.storage.schemas import SchemaCache, yang_problem
from callhome.storage.store import Store
from tests.service_harness import RunningService, run_cli

MON = ops.MONITORING_NS
GOOD = "module good {\n  namespace urn:good;\n  prefix g;\n}\n"


def reply(body: str) -> RPCReply:
    raw = f'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="1">{body}</rpc-reply>'.encode()
    return RPCReply("1", raw, etree.fromstring(raw))


class ScriptedSession:
    """Answers the schema listing and each get-schema from a table."""

    capabilities = [ops.CAPABILITY["monitoring"]]

    def __init__(self, schemas: dict[tuple[str, str], str]) -> None:
        self.schemas = schemas
        self.fetched: list[str] = []

    def rpc(self, operation: etree._Element, timeout: float | None = None) -> defer.Deferred[RPCReply]:
        if etree.QName(operation).localname == "get":
            entries = "".join(
                f"<schema><identifier>{m}</identifier><version>{r}</version><format>yang</format></schema>"
                for m, r in self.schemas)
            return defer.succeed(reply(f'<data><netconf-state xmlns="{MON}"><schemas>{entries}</schemas></netconf-state></data>'))
        identifier = operation.findtext(f"{{{MON}}}identifier")
        version = operation.findtext(f"{{{MON}}}version") or ""
        self.fetched.append(identifier)
        text = self.schemas[(identifier, version)]
        return defer.succeed(reply(f'<data xmlns="{MON}">{_escape(text)}</data>'))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SchemaCacheTests(TestCase):
    """A real store (SQLite), a scripted device."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.tmp.mkdir()
        self.store = Store(self.tmp / "db.sqlite", reactor)
        self.store.open()
        self.addCleanup(self.store.close)
        self.cache = SchemaCache(self.store)

    def context(self, session: Any, device: str = "edge") -> ActionContext:
        class Device:
            name = device

        return ActionContext(device=Device(), session=session, results=ResultsWriter(self.tmp / "results"),  # type: ignore[arg-type]
                             clock=reactor, schemas=self.cache)

    async def test_fetches_only_what_the_cache_lacks_and_keeps_no_junk(self) -> None:
        session = ScriptedSession({
            ("good", "2024-01-01"): GOOD,
            ("html", "2024-01-01"): "<html><body>not a module</body></html>",
            ("huge", "2024-01-01"): "module huge {\n" + "  // padding\n" * 2000 + "}\n",
        })
        action = GetSchema(max_size=10_000)
        saved = await action(self.context(session))
        self.assertEqual([p.name for p in saved], ["good@2024-01-01.yang"])
        self.assertEqual(sorted(session.fetched), ["good", "html", "huge"])
        rows = await self.cache.listing()
        self.assertEqual([(r["module"], r["sha256"]) for r in rows], [("good", hashlib.sha256(GOOD.encode()).hexdigest())])
        announced = await self.cache.listing("edge")
        self.assertEqual(sorted(r["module"] for r in announced), ["good", "html", "huge"], "the device's list, cached or not")
        # A second device listing the same module: nothing fetched for it.
        other = ScriptedSession({("good", "2024-01-01"): GOOD})
        self.assertEqual(await action(self.context(other, "other")), [])
        self.assertEqual(other.fetched, [])
        self.assertEqual(await self.cache.text("good", "2024-01-01"), GOOD)

    def test_what_is_not_yang(self) -> None:
        self.assertIsNone(yang_problem(b"/* c */\n// x\nmodule m { }", 100))
        self.assertIsNone(yang_problem(b"submodule s { }", 100))
        self.assertIn("not YANG text", yang_problem(b"<html/>", 100))
        self.assertIn("not YANG text", yang_problem(b"module m {\0}", 100))
        self.assertIn("over the 10-byte limit", yang_problem(b"module m { }", 10))


class SchemaServiceTests(RunningService):
    """The running service, a simulated device calling twice, the API and the CLI."""

    async def test_second_call_fetches_nothing_and_the_api_serves_the_cache(self) -> None:
        key, fp = self.device_key("edge")
        service = self.start(f'[{{name: edge, host_keys: ["{fp}"]}}]', chains="{main: [{get-schema: {}}]}")
        ended: list[Any] = []
        original = service.manager.call_ended
        service.manager.call_ended = lambda call: (original(call), ended.append(call.call))[0]  # type: ignore[method-assign]
        await self.call(key).ended
        await self.call(key).ended
        self.assertEqual([r.outcome for r in ended], ["ok", "ok"], [r.reason for r in ended])
        first, second = ended[0].steps[0].result, ended[1].steps[0].result
        self.assertGreaterEqual(len(first), 3)
        self.assertEqual(second, [], "everything cached after the first call")
        listed = (await self.get("/schemas")).json()["schemas"]
        self.assertEqual(len(listed), len(first))
        self.assertTrue(all(s["devices"] == 1 for s in listed))
        one = listed[0]
        text = await self.get(one["url"])
        self.assertEqual(text.code, 200)
        self.assertTrue(text.body.lstrip().startswith((b"module", b"submodule", b"/*", b"//")), text.body[:80])
        self.assertEqual(hashlib.sha256(text.body).hexdigest(), one["sha256"])
        self.assertEqual((await self.get("/schemas/nothing@2020-01-01")).code, 404)
        by_device = (await self.get("/schemas?device=edge")).json()["schemas"]
        self.assertEqual(len(by_device), len(first))
        out, err, code = await run_cli("-c", str(self.config_path), "schemas", "edge")
        self.assertEqual(code, 0, err)
        self.assertIn(one["module"].encode(), out)


class HugeSchemaTests(SynchronousTestCase):
    """
    A schema whose reply is over netconf.max_message_size (here 3 MB against
    1 MB; 100 MB against the 64 MiB default is the same path): the reply is
    dropped whole, that module is not kept, the next modules are, and the
    session goes on.  In memory, against the simulator serving the module.
    """

    def test_huge_schema_is_dropped_and_the_session_goes_on(self) -> None:
        from callhome.simulator.datastore import Datastore
        from callhome.simulator.yang import YangModule, load_modules
        from tests.helpers import InMemoryCall, device_factory, make_config, make_keys, memory_manager

        make_keys(self)
        config = make_config(
            self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}",
            chain="[{get-schema: {}}, {get: {}}]", extra="netconf: {max_message_size: 1048576}\n",
        )
        manager = memory_manager(config)
        huge = YangModule("huge", "2024-01-01", "urn:huge", "h", "module huge {\n" + "  // padding padding padding\n" * 110_000 + "}\n")
        datastore = Datastore.from_file(clock=manager.clock, modules=[*load_modules(), huge])
        call = InMemoryCall(manager, device_factory(self.device_key, [self.manager_key], datastore=datastore))
        call.run()
        record = call.call.call
        self.assertEqual(record.outcome, "ok", record.reason)
        saved = sorted(p.name for p in (self.tmp / "results" / "edge-1" / "schemas").glob("*.yang"))
        self.assertNotIn("huge@2024-01-01.yang", saved)
        self.assertEqual(len(saved), len(load_modules()), "every other module kept")
        self.assertTrue(record.steps[1].ok, "the session went on: the next step ran")
