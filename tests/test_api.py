"""
The management API, route by route, through a real HTTP client against the
running service on loopback, with simulated devices in their own processes;
``/metrics`` read with prometheus_client's own parser; the CLI as its client.
"""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families

from callhome.control.api import ROUTES
from tests.service_harness import RunningService, http, run_cli, wait_for

GET_CONFIG = b'<get-config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><source><running/></source></get-config>'


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus exposition (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


class PersistentDeviceApiTests(RunningService):
    """Every device, session, RPC and result route, with a persistent device connected."""

    async def setup_device(self) -> None:
        self.edge_key, edge_fp = self.device_key("edge")
        _, idle_fp = self.device_key("idle")
        self.start(
            f'[{{name: edge, host_keys: ["{edge_fp}"], mode: persistent}}, {{name: idle, host_keys: ["{idle_fp}"]}}]',
            chains="{main: [{get: {}}]}",
        )
        self.edge = self.call(self.edge_key)
        await self.session_of("edge")

    async def test_device_routes(self):
        await self.setup_device()
        health = await self.get("/healthz")
        self.assertEqual((health.code, health.json()["status"]), (200, "ok"))
        self.assertEqual(health.json()["sessions"], 1)

        devices = (await self.get("/devices")).json()["devices"]
        by_name = {d["name"]: d for d in devices}
        self.assertEqual(by_name["edge"]["status"], "connected")
        self.assertTrue(by_name["edge"]["session"])
        self.assertEqual(by_name["idle"]["status"], "never-called")

        edge = await self.get("/devices/edge")
        self.assertEqual(edge.code, 200)
        session = edge.json()["current_session"]
        self.assertEqual(session["framing"], "base:1.1")
        self.assertIn("urn:ietf:params:netconf:base:1.1", session["capabilities"])
        self.assertTrue(session["peer"].startswith("127.0.0.1:"))

        missing = await self.get("/devices/nope")
        self.assertEqual((missing.code, missing.json()), (404, {"error": "no device named 'nope'"}))

        sessions = (await self.get("/sessions")).json()["sessions"]
        self.assertEqual([(s["device"], s["state"], s["mode"]) for s in sessions], [("edge", "running", "persistent")])

        wrong_method = await http_delete(self.api + "/devices")
        self.assertEqual(wrong_method.code, 405)
        self.assertEqual(wrong_method.header("Allow"), "GET")
        self.assertIn("error", wrong_method.json())
        nowhere = await self.get("/nowhere")
        self.assertEqual((nowhere.code, nowhere.header("Content-Type")), (404, "application/json"))

    async def test_rpc_routes(self):
        await self.setup_device()
        reply = await self.post("/devices/edge/rpc", GET_CONFIG, content_type="application/xml")
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.header("X-Netconf-Outcome"), "ok")
        self.assertIn(b"<rpc-reply", reply.body)
        self.assertIn(b"<data", reply.body)

        wrapped = await self.post(
            "/devices/edge/rpc", b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><get/></rpc>', content_type="application/xml"
        )
        self.assertEqual(wrapped.code, 200)

        error = await self.post("/devices/edge/rpc", b'<frobnicate xmlns="urn:example"/>', content_type="application/xml")
        self.assertEqual((error.code, error.header("X-Netconf-Outcome")), (200, "rpc-error"))
        self.assertIn(b"rpc-error", error.body)

        action = await self.post("/devices/edge/rpc", json.dumps({"get-config": {"source": "running"}}).encode(), content_type="application/json")
        self.assertEqual(action.code, 200, action.body)
        body = action.json()
        self.assertTrue(body["ok"], body)
        self.assertIn("<data", body["reply"])
        self.assertTrue(body["saved"].startswith("edge/"))

        for payload, content_type, code, words in [
            (b"<get", "application/xml", 400, "not well-formed"),
            (b'<!DOCTYPE x [<!ENTITY a "b">]><get/>', "application/xml", 400, "document type"),
            (b"<rpc xmlns='urn:ietf:params:xml:ns:netconf:base:1.0'><get/><get/></rpc>", "application/xml", 400, "exactly one"),
            (b'{"save": {"path": "x"}}', "application/json", 400, "cannot run through the API"),
            (b'{"edit-config": {"target": "running", "config_file": "/etc/passwd"}}', "application/json", 400, "file parameters"),
            (b'{"rpc": {"file": "/etc/passwd"}}', "application/json", 400, "file parameters"),
            (b'{"get-config": {"source": "nowhere"}}', "application/json", 400, "body.get-config"),
            (b'{"get": {}, "lock": {}}', "application/json", 400, "one action"),
            (b"{nope", "application/json", 400, "not JSON"),
            (b"get", "text/plain", 415, "application/xml"),
        ]:
            refused = await self.post("/devices/edge/rpc", payload, content_type=content_type)
            self.assertEqual(refused.code, code, (payload, refused.body))
            self.assertIn(words, refused.json()["error"], payload)

        no_session = await self.post("/devices/idle/rpc", GET_CONFIG, content_type="application/xml")
        self.assertEqual(no_session.code, 409)
        self.assertIn("no open persistent session", no_session.json()["error"])
        unknown = await self.post("/devices/nope/rpc", GET_CONFIG, content_type="application/xml")
        self.assertEqual(unknown.code, 404)

        # The session survived every refusal.
        self.assertIn("edge", self.service.manager.sessions)

        disconnected = await self.post("/devices/edge/disconnect")
        self.assertEqual((disconnected.code, disconnected.json()), (200, {"device": "edge", "disconnected": True}))
        self.assertEqual(await self.edge.ended, 0)
        again = await self.post("/devices/edge/disconnect")
        self.assertEqual(again.code, 409)
        after = await self.post("/devices/edge/rpc", GET_CONFIG, content_type="application/xml")
        self.assertEqual(after.code, 409)

    async def test_results_and_events(self):
        await self.setup_device()
        await self.post("/devices/edge/rpc", b'{"get-config": {}}', content_type="application/json")
        listed = (await self.get("/results?device=edge")).json()["results"]
        self.assertEqual([r["action"] for r in listed], ["get-config", "get"], "newest first")
        first = listed[-1]
        self.assertEqual(first["url"], f"/results/{first['id']}")
        payload = await self.get(first["url"])
        self.assertEqual(payload.code, 200)
        self.assertEqual(payload.header("Content-Type"), "application/xml")
        self.assertEqual(hashlib.sha256(payload.body).hexdigest(), first["sha256"])
        self.assertEqual(payload.header("X-Content-SHA256"), first["sha256"])
        self.assertEqual(len(payload.body), first["size"])
        self.assertEqual(payload.body, (self.tmp / "results" / first["path"]).read_bytes())
        self.assertEqual(listed[0]["session"], listed[1]["session"], "both from the same call")

        only = (await self.get("/results?device=edge&action=get&limit=1")).json()["results"]
        self.assertEqual([r["id"] for r in only], [first["id"]])
        self.assertEqual((await self.get("/results/999999")).code, 404)
        self.assertEqual((await self.get("/results/abc")).code, 404)
        self.assertEqual((await self.get("/results/" + "9" * 40)).code, 404)
        self.assertEqual((await self.get("/results?before=%C2%B2")).code, 400)
        self.assertEqual((await self.get("/results?limit=0")).code, 400)
        self.assertEqual((await self.get("/results?before=x")).code, 400)
        (self.tmp / "results" / first["path"]).unlink()
        gone = await self.get(first["url"])
        self.assertEqual(gone.code, 410)

        events = (await self.get("/events?device=edge")).json()
        kinds = [e["kind"] for e in events["events"]]
        self.assertIn("session-open", kinds)
        later = (await self.get(f"/events?since={events['next']}")).json()
        self.assertEqual(later["events"], [])
        self.assertEqual(later["next"], events["next"])
        by_time = (await self.get("/events?since=2000-01-01T00:00:00Z&kind=started")).json()["events"]
        self.assertEqual(len(by_time), 1)
        bad = await self.get("/events?since=yesterday")
        self.assertEqual(bad.code, 400)
        self.assertIn("since", bad.json()["error"])

    async def test_openapi_lists_every_route(self):
        await self.setup_device()
        document = (await self.get("/openapi.json")).json()
        self.assertEqual(document["openapi"][:2], "3.")
        for method, pattern, _ in ROUTES:
            template = re.sub(r"\(\[0-9\]\{1,18\}\)", "{id}", pattern)
            template = re.sub(r"^/quarantine/\(\[\^/\]\+\)", "/quarantine/{fingerprint}", template)
            template = template.replace("([^/@]+)@([^/@]*)", "{module}@{revision}")
            template = re.sub(r"\(\[\^/\]\+\)", "{name}", template)
            self.assertIn(template, document["paths"], template)
            self.assertIn(method.decode().lower(), document["paths"][template], template)
        self.assertEqual(len(document["paths"]), len({p for _, p, _ in ROUTES}))
        raw = await self.get("/openapi.yaml")
        self.assertEqual(raw.code, 200)

    async def test_cli_as_api_client(self):
        """The callhome command reads the API's address from the config and prints tables or JSON."""
        await self.setup_device()
        config = ["-c", str(self.config_path)]
        out, err, code = await run_cli(*config, "devices")
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual(lines[0].split(), ["DEVICE", "STATUS", "SESSION", "LAST", "SEEN", "SOURCE", "CALLS", "LAST", "ERROR"])
        self.assertEqual(lines[1].split()[:3], ["edge", "connected", "yes"])
        out, err, code = await run_cli(*config, "devices", "--json")
        self.assertEqual([d["name"] for d in json.loads(out)], ["edge", "idle"])
        out, err, code = await run_cli(*config, "devices", "edge")
        self.assertIn(b"urn:ietf:params:netconf:base:1.1", out)
        out, err, code = await run_cli(*config, "sessions")
        self.assertEqual(code, 0, err)
        self.assertIn(b"persistent", out)
        out, err, code = await run_cli(*config, "events", "--device", "edge")
        self.assertIn(b"session-open", out)
        rpc_file = self.tmp / "get-config.xml"
        rpc_file.write_bytes(GET_CONFIG)
        out, err, code = await run_cli(*config, "rpc", "edge", str(rpc_file))
        self.assertEqual(code, 0, err)
        self.assertIn(b"<data", out)
        action_file = self.tmp / "action.json"
        action_file.write_text('{"get": {}}')
        out, err, code = await run_cli(*config, "rpc", "edge", str(action_file))
        self.assertEqual(code, 0, err)
        out, err, code = await run_cli(*config, "results", "--device", "edge", "--json")
        results = json.loads(out)
        out, err, code = await run_cli(*config, "result", str(results[0]["id"]))
        self.assertEqual(hashlib.sha256(out).hexdigest(), results[0]["sha256"])
        out, err, code = await run_cli(*config, "rpc", "idle", str(rpc_file))
        self.assertEqual(code, 1)
        self.assertIn(b"409: device idle has no open persistent session", err)
        out, err, code = await run_cli("--api", "http://127.0.0.1:1", "devices")
        self.assertEqual(code, 2)
        self.assertIn(b"cannot reach the callhome API", err)
        out, err, code = await run_cli(*config, "disconnect", "edge")
        self.assertEqual(code, 0, err)


async def http_delete(url: str):
    from tests.service_harness import http

    return await http("DELETE", url)


class QuarantineApiTests(RunningService):
    """An unknown device is quarantined, approved through the API, then served."""

    async def test_quarantine_and_approve(self):
        _, known_fp = self.device_key("known")
        stranger_key, stranger_fp = self.device_key("stranger")
        self.start(f'[{{name: known, host_keys: ["{known_fp}"]}}]', extra="unknown_devices: quarantine")
        self.assertEqual(await self.call(stranger_key).ended, 1)
        pending = (await self.get("/quarantine")).json()["quarantine"]
        self.assertEqual([p["fingerprint"] for p in pending], [stranger_fp])
        self.assertEqual(pending[0]["key_type"], "ssh-ed25519")

        path = f"/quarantine/{quote(stranger_fp, safe='')}/approve"
        for body, code in [
            (b"", 400), (b"[]", 400), (b'{"name": 5}', 400), (b'{"name": "x", "group": 1}', 400),
            (b'{"name": "known"}', 409), (b'{"name": "bad name!"}', 400), (b'{"name": "x", "group": "nope"}', 400),
        ]:
            refused = await self.post(path, body, content_type="application/json")
            self.assertEqual(refused.code, code, (body, refused.body))
            self.assertIn("error", refused.json())
        other = await self.post(f"/quarantine/{quote('SHA256:' + 'Q' * 43, safe='')}/approve", b'{"name": "x"}')
        self.assertEqual(other.code, 404)
        malformed = await self.post("/quarantine/not-a-fingerprint/approve", b'{"name": "x"}')
        self.assertEqual(malformed.code, 400)

        approved = await self.post(path, b'{"name": "newcomer"}', content_type="application/json")
        self.assertEqual(approved.code, 200, approved.body)
        self.assertEqual(approved.json()["name"], "newcomer")
        self.assertTrue(approved.json()["enrolled"])
        self.assertEqual((await self.get("/quarantine")).json()["quarantine"], [])
        self.assertEqual(await self.call(stranger_key).ended, 0)
        newcomer = (await self.get("/devices/newcomer")).json()
        self.assertEqual((newcomer["status"], newcomer["calls"]), ("disconnected", 1))
        self.assertTrue(list((self.tmp / "results" / "newcomer").glob("*-get.xml")))
        events = (await self.get("/events?kind=enrolled")).json()["events"]
        self.assertEqual([e["device"] for e in events], ["newcomer"])


class MetricsTests(RunningService):
    """/metrics parses with prometheus_client's parser, and its counters move as devices call."""

    async def test_counters_move(self):
        key, fp = self.device_key("edge")
        _, unknown_fp = self.device_key("stranger")
        self.start(f'[{{name: edge, host_keys: ["{fp}"]}}]', chains="{main: [{get: {}}, {get-config: {}}]}")
        before = (await self.get("/metrics")).body.decode()
        self.assertEqual(metric(before, "callhome_calls_accepted_total"), 0)
        self.assertEqual(await self.call(key, "--count", "3").ended, 0)
        self.assertEqual(await self.call(self.tmp / "devices" / "stranger").ended, 1)
        await wait_for(lambda: sum(self.service.manager.counts.values()) == 4, what="four calls ended")
        reply = await self.get("/metrics")
        self.assertTrue(reply.header("Content-Type").startswith("text/plain"))
        after = reply.body.decode()
        self.assertEqual(metric(after, "callhome_calls_accepted_total"), 4)
        self.assertEqual(metric(after, "callhome_calls_finished_total", outcome="ok"), 3)
        self.assertEqual(metric(after, "callhome_calls_refused_total", reason="unknown-host-key"), 1)
        self.assertEqual(metric(after, "callhome_rpcs_total", operation="get", outcome="ok"), 3)
        self.assertEqual(metric(after, "callhome_rpcs_total", operation="get-config", outcome="ok"), 3)
        self.assertEqual(metric(after, "callhome_rpcs_total", operation="close-session", outcome="ok"), 3)
        self.assertEqual(metric(after, "callhome_rpc_duration_seconds_count", operation="get"), 3)
        self.assertEqual(metric(after, "callhome_chain_steps_total", action="get-config", outcome="ok"), 3)
        self.assertEqual(metric(after, "callhome_results_saved_total"), 6)
        self.assertGreater(metric(after, "callhome_bytes_received_total"), 3 * 2000)
        self.assertEqual(metric(after, "callhome_sessions_open"), 0)
        self.assertEqual(metric(after, "callhome_handshakes_in_progress"), 0)
        self.assertEqual(metric(after, "callhome_auth_failures_total"), 0)
        self.assertEqual(metric(after, "callhome_devices_known"), 1)


class TokenTests(RunningService):
    """With a token, every route but /healthz needs it."""

    api_extra = ", token_env: CALLHOME_TEST_TOKEN"

    async def test_bearer_token(self):
        import os

        os.environ["CALLHOME_TEST_TOKEN"] = "s3cret-token"
        self.addCleanup(os.environ.pop, "CALLHOME_TEST_TOKEN")
        _, fp = self.device_key("edge")
        self.start(f'[{{name: edge, host_keys: ["{fp}"]}}]')
        for path in ("/devices", "/metrics", "/events", "/openapi.json"):
            refused = await self.get(path)
            self.assertEqual(refused.code, 401, path)
            self.assertEqual(refused.header("WWW-Authenticate"), 'Bearer realm="callhome"')
            self.assertIn("bearer token", refused.json()["error"])
            self.assertEqual((await self.get(path, token="wrong")).code, 401)
            self.assertEqual((await http("GET", self.api + path, token=" ")).code, 401)
            self.assertEqual((await self.get(path, token="s3cret-token")).code, 200, path)
        self.assertEqual((await self.post("/reload", token="nope")).code, 401)
        self.assertEqual((await self.get("/healthz")).code, 200, "probes need no token")
        self.assertNotIn("s3cret", repr(self.service.config))
        out, err, code = await run_cli("-c", str(self.config_path), "devices")
        self.assertEqual(code, 0, err)


class InternalErrorTests(RunningService):
    """A failure of our own is logged and answered with a JSON 500 naming only its type."""

    async def test_no_traceback_in_the_answer(self):
        _, fp = self.device_key("edge")
        self.start(f'[{{name: edge, host_keys: ["{fp}"]}}]')

        def broken():
            raise RuntimeError("secret internals at /etc/callhome")

        self.service.manager.registry.devices = broken
        reply = await self.get("/devices")
        self.assertEqual(reply.code, 500)
        self.assertEqual(reply.json(), {"error": "internal error: RuntimeError (logged)"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual((await self.get("/healthz")).code, 500, "the same failure, the same answer")
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual((await self.get("/sessions")).code, 200, "other routes still answer")
