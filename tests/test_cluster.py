"""
A cluster of instances on one real PostgreSQL (a private server of the
test's own): two services in this process, each with its own listeners,
API and results directory, on the same database.

One device, one session, cluster-wide (reject and replace); the API of
either instance lists every session with its instance and reaches a
session held by the other; an approval made on one is served by the
other; a claim its instance stopped renewing expires; a name already
running is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet import reactor, task
from twisted.trial.unittest import SkipTest

from callhome import config as config_module
from callhome import logs
from callhome.call.record import Outcome
from callhome.service import CallHomeService
from callhome.storage.store import StoreError
from tests import pgserver
from tests.service_harness import RunningService, free_port, http, run_cli, wait_for

GET = b'<get xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"/>'


class Instance:
    """One instance of the cluster: its service and API URL."""

    def __init__(self, name: str, service: CallHomeService, port: int, api: str) -> None:
        self.name = name
        self.service = service
        self.port = port
        self.api = api

    async def get(self, path: str) -> Any:
        return await http("GET", self.api + path)

    async def post(self, path: str, body: bytes = b"", content_type: str | None = None) -> Any:
        return await http("POST", self.api + path, body, content_type=content_type)


class ClusterTests(RunningService):
    """Two instances, one database."""

    def setUp(self) -> None:
        reason = pgserver.available()
        if reason is not None:
            raise SkipTest(reason)
        super().setUp()
        self.url = pgserver.shared().create_database("cluster")
        self.addCleanup(logs.set_instance, None)
        os.environ["CALLHOME_TEST_PGPASSWORD"] = pgserver.PASSWORD

    def instance(self, name: str, devices: str, extra: str = "") -> Instance:
        port, api_port = free_port(), free_port()
        path = self.tmp / f"{name}.yaml"
        path.write_text(f"""
listen: ["tcp:{port}:interface=127.0.0.1"]
results_dir: {self.tmp / name / 'results'}
state_dir: {self.tmp / name / 'state'}
store: {{database: "{self.url}", password_env: CALLHOME_TEST_PGPASSWORD}}
cluster: {{instance: {name}, lease: 3}}
api: {{listen: "tcp:{api_port}:interface=127.0.0.1"}}
defaults: {{username: admin, private_key: {self.manager_key}, chain: main}}
devices: {devices}
chains: {{main: [{{get: {{}}}}]}}
{extra}
""")
        service = CallHomeService(config_module.load(path), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return Instance(name, service, port, f"http://127.0.0.1:{api_port}")

    def persistent(self, name: str = "edge") -> tuple[Path, str]:
        key, fp = self.device_key(name)
        return key, f'[{{name: {name}, host_keys: ["{fp}"], mode: persistent}}]'

    async def test_sessions_and_rpcs_reach_every_instance(self) -> None:
        key, devices = self.persistent()
        a, b = self.instance("a", devices), self.instance("b", devices)
        self.call(key, port=a.port)
        await wait_for(lambda: "edge" in a.service.manager.sessions and a.service.manager.sessions["edge"].call.steps, what="edge on a")
        await wait_for(lambda: "edge" in b.service.cluster.elsewhere, what="b sees edge's session on a")
        sessions = (await b.get("/sessions")).json()["sessions"]
        self.assertEqual([(s["device"], s["instance"]) for s in sessions], [("edge", "a")])
        on_a = (await a.get("/sessions")).json()["sessions"]
        self.assertEqual([(s["device"], s["instance"], s["state"]) for s in on_a], [("edge", "a", "running")])
        reply = await b.post("/devices/edge/rpc", GET, "application/xml")
        self.assertEqual(reply.code, 200, reply.body)
        self.assertIn(b"<rpc-reply", reply.body)
        self.assertEqual(reply.header("X-Netconf-Outcome"), "ok")
        action = await b.post("/devices/edge/rpc", b'{"get-config": {"source": "running"}}', "application/json")
        self.assertEqual(action.code, 200, action.body)
        self.assertTrue(action.json()["ok"])
        metrics = (await b.get("/metrics")).body.decode()
        self.assertIn('callhome_cluster_instance_info{cluster_instance="b"} 1.0', metrics)
        # The CLI against either instance: the same cluster.
        out, err, code = await run_cli("--api", b.api, "sessions", "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual([(s["device"], s["instance"]) for s in json.loads(out)], [("edge", "a")])
        gone = await b.post("/devices/edge/disconnect")
        self.assertEqual(gone.code, 200, gone.body)
        await wait_for(lambda: "edge" not in a.service.manager.sessions, what="edge's session on a closed")
        await wait_for(lambda: "edge" not in b.service.cluster.elsewhere, what="the claim released")

    async def test_reject_refuses_a_second_session_on_another_instance(self) -> None:
        key, devices = self.persistent()
        a = self.instance("a", devices, "duplicate_sessions: reject")
        b = self.instance("b", devices, "duplicate_sessions: reject")
        self.call(key, port=a.port)
        await wait_for(lambda: "edge" in a.service.manager.sessions and a.service.manager.sessions["edge"].call.steps, what="edge on a")
        second = self.call(key, port=b.port)
        await second.ended
        events = (await b.get("/events?device=edge")).json()["events"]
        reasons = [e["message"] for e in events if "already has a session on instance a" in e["message"]]
        self.assertTrue(reasons, events)
        self.assertIn("edge", a.service.manager.sessions, "the first session stays")

    async def test_replace_moves_the_session_to_the_newer_call(self) -> None:
        key, devices = self.persistent()
        a, b = self.instance("a", devices), self.instance("b", devices)
        self.call(key, port=a.port)
        await wait_for(lambda: "edge" in a.service.manager.sessions and a.service.manager.sessions["edge"].call.steps, what="edge on a")
        first = a.service.manager.sessions["edge"].call
        self.call(key, port=b.port)
        await wait_for(lambda: "edge" in b.service.manager.sessions, what="edge on b")
        await wait_for(lambda: "edge" not in a.service.manager.sessions, timeout=15, what="a closes its older session")
        self.assertEqual(first.outcome, Outcome.REPLACED)
        await wait_for(lambda: b.service.cluster is not None and "edge" in a.service.cluster.elsewhere, what="a sees edge on b")

    async def test_an_approval_on_one_instance_is_served_by_the_other(self) -> None:
        key, fp = self.device_key("newbox")
        a = self.instance("a", "[]", "unknown_devices: quarantine")
        b = self.instance("b", "[]", "unknown_devices: quarantine")
        await self.call(key, port=a.port).ended
        await wait_for(lambda: fp in b.service.manager.registry.pending, what="b sees the quarantined key")
        approved = await b.post(f"/quarantine/{quote(fp, safe='')}/approve", b'{"name": "newbox"}', "application/json")
        self.assertEqual(approved.code, 200, approved.body)
        await wait_for(lambda: a.service.manager.registry.identify(fp) is not None, timeout=5, what="a knows the approval")
        await self.call(key, port=a.port).ended
        status = (await a.get("/devices/newbox")).json()
        self.assertEqual(status["calls"], 1, status)

    async def test_a_claim_nobody_renews_expires(self) -> None:
        """An instance that died (here: a row nobody renews) blocks its devices only for the lease."""
        key, devices = self.persistent()
        b = self.instance("b", devices, "duplicate_sessions: reject")
        connection = b.service.store.database.connect()
        self.addCleanup(connection.close)
        connection.execute(
            "INSERT INTO sessions (device, instance, call, transport, peer, since, lease_until)"
            " VALUES ('edge', 'ghost', 'g-1', 'ssh', '10.0.0.9:1', EXTRACT(EPOCH FROM now()), EXTRACT(EPOCH FROM now()) + 3)"
        )
        await self.call(key, port=b.port).ended
        self.assertNotIn("edge", b.service.manager.sessions)
        registry = b.service.manager.registry
        await wait_for(lambda: "stopped renewing" in (registry.status["edge"].last_error or ""), timeout=10,
                       what="the ghost's claim expires")
        events = (await b.get("/events?device=edge&kind=lease-expired")).json()["events"]
        self.assertIn("instance ghost stopped renewing its claim", events[0]["message"])
        device = (await b.get("/devices/edge")).json()
        self.assertEqual(device["status"], "disconnected")
        self.call(key, port=b.port)
        await wait_for(lambda: "edge" in b.service.manager.sessions, what="edge served after the lease")

    async def test_results_are_served_by_any_instance_without_the_savers_files(self) -> None:
        key, fp = self.device_key("edge")
        devices = f'[{{name: edge, host_keys: ["{fp}"]}}]'
        a, b = self.instance("a", devices), self.instance("b", devices)
        await self.call(key, port=a.port).ended
        await wait_for(lambda: a.service.manager.counts.get("ok", 0) == 1, what="the call on a")
        saved = list((self.tmp / "a" / "results" / "edge").glob("*.xml"))
        self.assertEqual(len(saved), 1)
        original = saved[0].read_bytes()
        await a.service.store.flush()
        shutil.rmtree(self.tmp / "a" / "results")
        listed = (await b.get("/results?device=edge")).json()["results"]
        self.assertEqual([(r["action"], r["instance"]) for r in listed], [("get", "a")])
        served = await b.get(listed[0]["url"])
        self.assertEqual(served.code, 200, served.body)
        self.assertEqual(served.body, original)
        self.assertEqual(served.header("X-Content-SHA256"), hashlib.sha256(original).hexdigest())
        # b's /devices shows what a saw: the device's status is the cluster's.
        await wait_for(lambda: getattr(b.service.manager.registry.status.get("edge"), "calls", 0) == 1, timeout=15, what="b sees edge's call")
        device = (await b.get("/devices/edge")).json()
        self.assertEqual((device["status"], device["calls"]), ("disconnected", 1), device)

    async def test_duplicates_while_the_database_is_away_are_settled_when_it_is_back(self) -> None:
        """
        With PostgreSQL gone, each instance serves the call it gets (two
        sessions of one device, one per instance: availability first); when
        the database answers again the policy applies and one session is left.
        """
        key, devices = self.persistent()
        a, b = self.instance("a", devices), self.instance("b", devices)
        server = pgserver.shared()
        server.stop("fast")
        try:
            self.call(key, port=a.port)
            await wait_for(lambda: "edge" in a.service.manager.sessions and a.service.manager.sessions["edge"].call.steps, what="edge on a")
            self.call(key, port=b.port)
            await wait_for(lambda: "edge" in b.service.manager.sessions and b.service.manager.sessions["edge"].call.steps, what="edge on b")
            self.assertIn("edge", a.service.manager.sessions, "two instances, two sessions, while the database is away")
        finally:
            server.start()
        holders = lambda: [i.name for i in (a, b) if "edge" in i.service.manager.sessions]  # noqa: E731
        await wait_for(lambda: len(holders()) == 1, timeout=20, what="one session left")
        await wait_for(lambda: "edge" in (a if holders() == ["b"] else b).service.cluster.elsewhere, timeout=10,
                       what="the other instance sees where it is")

    async def test_one_instance_decides_who_is_overdue(self) -> None:
        """Every instance shows the device overdue; the event is recorded once, not once per instance."""
        from callhome.call import expectations as expectations_module

        self.patch(expectations_module, "CHECK_INTERVAL", 0.2)
        _, fp = self.device_key("late")
        devices = f'[{{name: late, host_keys: ["{fp}"], expect_call_every: 1, expect_grace: 0.2}}]'
        a, b = self.instance("a", devices), self.instance("b", devices)
        for instance in (a, b):
            await wait_for(lambda: getattr(instance.service.manager.registry.status.get("late"), "status", None) == "overdue",
                           timeout=15, what=f"late overdue on {instance.name}")
        self.assertEqual(sum(1 for i in (a, b) if i.service.cluster.leads), 1)
        await task.deferLater(reactor, 1.0, lambda: None)
        events = (await a.get("/events?kind=overdue")).json()["events"]
        self.assertEqual(len(events), 1, events)

    def test_a_name_already_running_is_refused(self) -> None:
        self.instance("a", "[]")
        with self.assertRaises(StoreError) as caught:
            self.instance("a", "[]")
        self.assertIn("cluster.instance 'a' is already running", str(caught.exception))
