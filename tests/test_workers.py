"""
``workers: N``: worker processes on the main process's listening sockets,
one service to the API.  The main process is made to stop accepting where
a test needs every call to land in the worker (the kernel otherwise hands
a connection to whichever process accepts first).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from urllib.parse import quote

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from callhome.metrics import Metrics
from callhome.control.wire import decode_answer, encode_answer
from callhome.workers.channel import Channel
from callhome.workers.supervisor import Worker, WorkerPool
from tests.service_harness import RunningService, wait_for
from tests.test_api import GET_CONFIG, metric

class WorkerProcessTests(RunningService):
    """A service with one worker process, calls served by the worker."""

    async def start_with_worker(self, devices: str, extra: str = "") -> None:
        self.start(devices, extra="workers: 2\n" + extra)
        pool = self.service.pool
        assert pool is not None
        await wait_for(lambda: 1 in pool.workers and pool.workers[1].pid is not None, what="worker 1 ready")
        self.worker_pid = pool.workers[1].pid

    def main_stops_accepting(self) -> None:
        for listener in self.service.listeners.values():
            listener.port.stopReading()

    async def test_worker_serves_calls_and_the_api_sees_them(self):
        edge_key, edge_fp = self.device_key("edge")
        unknown_key, unknown_fp = self.device_key("stranger")
        await self.start_with_worker(f'[{{name: edge, host_keys: ["{edge_fp}"], mode: persistent}}]',
                                     extra="unknown_devices: quarantine\n")
        self.main_stops_accepting()
        edge = self.call(edge_key)
        pool = self.service.pool
        await wait_for(lambda: "edge" in pool.owners, what="edge claimed by the worker")
        self.assertEqual(pool.owners["edge"][0], 1)
        self.assertNotIn("edge", self.service.manager.sessions)

        # The session, its status and capabilities, as the main process's API shows them.
        sessions = (await self.get("/sessions")).json()["sessions"]
        self.assertEqual([s["device"] for s in sessions], ["edge"])
        self.assertIn("w1-", sessions[0]["id"])
        await wait_for(lambda: getattr(self.service.manager.registry.status.get("edge"), "status", None) == "connected",
                       what="edge's status mirrored")
        device = (await self.get("/devices/edge")).json()
        self.assertTrue(device["session"])
        self.assertEqual(device["status"], "connected")
        self.assertIn("urn:ietf:params:netconf:base:1.1", device["current_session"]["capabilities"])
        health = (await self.get("/healthz")).json()
        self.assertEqual([w["index"] for w in health["workers"]], [0, 1])

        # An API RPC runs on the worker's session: XML and JSON, errors too.
        reply = await self.post("/devices/edge/rpc", GET_CONFIG, content_type="application/xml")
        self.assertEqual((reply.code, reply.header("X-Netconf-Outcome")), (200, "ok"), reply.body)
        self.assertIn(b"<data", reply.body)
        action = await self.post("/devices/edge/rpc", json.dumps({"get-config": {"source": "running"}}).encode(),
                                 content_type="application/json")
        self.assertEqual(action.code, 200, action.body)
        self.assertTrue(action.json()["saved"].startswith("edge/"))
        refused = await self.post("/devices/edge/rpc", b'{"rpc": {"file": "/etc/passwd"}}', content_type="application/json")
        self.assertEqual(refused.code, 400)
        self.assertIn("file parameters", refused.json()["error"])

        # Metrics: the worker's counters are added to the main process's.
        text = (await self.get("/metrics")).body.decode()
        self.assertEqual(metric(text, "callhome_calls_accepted_total"), 1)
        self.assertEqual(metric(text, "callhome_rpcs_total", operation="get", outcome="ok"), 1)  # the chain's
        self.assertEqual(metric(text, "callhome_rpcs_total", operation="get-config", outcome="ok"), 2)  # the API's
        self.assertEqual(metric(text, "callhome_sessions_open"), 1)

        # Quarantine in the worker, approval in the main process, served by the worker.
        self.call(unknown_key)
        await wait_for(lambda: unknown_fp in self.service.manager.registry.pending, what="quarantine mirrored")
        pending = (await self.get("/quarantine")).json()["quarantine"]
        self.assertEqual([p["fingerprint"] for p in pending], [unknown_fp])
        approved = await self.post(f"/quarantine/{quote(unknown_fp, safe='')}/approve", b'{"name": "stranger"}',
                                   content_type="application/json")
        self.assertEqual(approved.code, 200, approved.body)
        stranger = self.call(unknown_key)
        self.assertEqual(await stranger.ended, 0)

        # Disconnect through the API, on the worker's session.
        gone = await self.post("/devices/edge/disconnect")
        self.assertEqual((gone.code, gone.json()), (200, {"device": "edge", "disconnected": True}))
        self.assertEqual(await edge.ended, 0)
        await wait_for(lambda: "edge" not in pool.owners, what="edge released")

        # Results and events from the worker are in the one database.
        await self.service.store.flush()
        await wait_for(lambda: self._results_of("stranger"), what="the worker's results in the store")
        results = (await self.get("/results?device=stranger")).json()["results"]
        self.assertEqual(len(results), 1)
        self.assertIn("w1-", results[0]["session"])

    def _results_of(self, device: str) -> int:
        with sqlite3.connect(self.tmp / "callhome.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM results WHERE device = ?", (device,)).fetchone()[0]

    async def test_both_processes_serve_and_the_worker_stops_with_the_service(self):
        names = [f"d{i}" for i in range(12)]
        keys = {name: self.device_key(name) for name in names}
        await self.start_with_worker("[" + ", ".join(f'{{name: {n}, host_keys: ["{fp}"]}}' for n, (_, fp) in keys.items()) + "]")
        calls = [self.call(keys[name][0]) for name in names]
        codes = [await call.ended for call in calls]
        self.assertEqual(codes, [0] * len(names))
        await wait_for(lambda: sum(self._results_of(n) for n in names) == len(names), what="every result stored")
        await self.service.stopService()
        # The worker stopped gracefully: it is gone, and its stop was recorded.
        with self.assertRaises(ProcessLookupError):
            os.kill(self.worker_pid, 0)
        with sqlite3.connect(self.tmp / "callhome.sqlite") as db:
            stopped = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'stopped'").fetchone()[0]
        self.assertEqual(stopped, 2)

    async def test_a_dead_worker_is_started_again(self):
        edge_key, edge_fp = self.device_key("edge")
        await self.start_with_worker(f'[{{name: edge, host_keys: ["{edge_fp}"], mode: persistent}}]')
        self.main_stops_accepting()
        edge = self.call(edge_key)
        pool = self.service.pool
        await wait_for(lambda: "edge" in pool.owners, what="edge claimed by the worker")
        os.kill(self.worker_pid, signal.SIGKILL)
        await wait_for(lambda: "edge" not in pool.owners, what="the dead worker's session dropped")
        self.assertEqual(self.service.manager.registry.status["edge"].status, "disconnected")
        await edge.ended
        await wait_for(lambda: 1 in pool.workers and pool.workers[1].pid not in (None, self.worker_pid),
                       timeout=30, what="worker 1 started again")
        # The new worker serves on the same socket.
        again = self.call(edge_key)
        await wait_for(lambda: "edge" in pool.owners, what="edge served by the new worker")
        await self.post("/devices/edge/disconnect")
        self.assertEqual(await again.ended, 0)

    async def test_reload_reaches_the_worker_and_listen_needs_a_restart(self):
        edge_key, edge_fp = self.device_key("edge")
        other_key, other_fp = self.device_key("other")
        await self.start_with_worker(f'[{{name: edge, host_keys: ["{edge_fp}"]}}]')
        self.main_stops_accepting()
        self.write_config(f'[{{name: edge, host_keys: ["{edge_fp}"]}}, {{name: other, host_keys: ["{other_fp}"]}}]',
                          extra="workers: 2\n", listen=f'["tcp:{self.port}:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]')
        summary = (await self.post("/reload")).json()
        self.assertEqual(summary["listeners_added"], [])
        self.assertIn("listen", summary["needs_restart"])
        # The worker took the new device.
        await wait_for(lambda: True, timeout=0.5)
        other = self.call(other_key)
        self.assertEqual(await other.ended, 0)
        await wait_for(lambda: self._results_of("other") == 1, what="other served by the worker")


class _FakeWorker:
    def __init__(self) -> None:
        self.told: list[tuple[str, dict]] = []

    def notify(self, method: str, **args) -> None:
        self.told.append((method, args))


class ClaimTests(TestCase):
    """One session per device across processes: the main process's table."""

    def pool(self, policy: str) -> WorkerPool:
        from types import SimpleNamespace

        from twisted.internet.task import Clock

        replaced: list[object] = []
        manager = SimpleNamespace(sessions={}, replace=replaced.append, registry=None, config=SimpleNamespace(duplicate_sessions=policy))
        pool = WorkerPool(Clock(), manager, 3, dict)  # type: ignore[arg-type]

        for index in (1, 2):
            worker = Worker(index)
            worker.channel = _FakeWorker()  # type: ignore[assignment]
            pool.workers[index] = worker
        self.replaced = replaced
        return pool

    def test_replace_closes_the_older_session_in_the_other_worker(self):
        pool = self.pool("replace")
        self.assertEqual(pool._claim(pool.workers[1], "edge", "a-1"), "ok")
        self.assertEqual(pool._claim(pool.workers[2], "edge", "b-1"), "ok")
        self.assertEqual(pool.owners["edge"], (2, "b-1"))
        self.assertEqual(pool.workers[1].channel.told, [("disconnect", {"device": "edge", "reason": "replaced by a new call from the same device", "outcome": "replaced"})])
        # The old call's release does not drop the new claim.
        pool._release(pool.workers[1], "edge", "a-1")
        self.assertEqual(pool.owners["edge"], (2, "b-1"))
        # The main process's own call replaces the worker's.
        self.assertTrue(pool.claim("edge", object()))  # type: ignore[arg-type]
        self.assertNotIn("edge", pool.owners)

    def test_reject_refuses_the_newer_call(self):
        pool = self.pool("reject")
        self.assertEqual(pool._claim(pool.workers[1], "edge", "a-1"), "ok")
        self.assertEqual(pool._claim(pool.workers[2], "edge", "b-1"), "refuse")
        self.assertFalse(pool.claim("edge", object()))  # type: ignore[arg-type]
        self.assertEqual(pool.owners["edge"], (1, "a-1"))
        # A session the main process holds refuses a worker's claim.
        pool.manager.sessions["core"] = object()
        self.assertEqual(pool._claim(pool.workers[1], "core", "a-2"), "refuse")
        # The same worker replacing its own session is not a duplicate.
        self.assertEqual(pool._claim(pool.workers[1], "edge", "a-3"), "ok")


class ChannelTests(TestCase):
    """The JSON channel between processes, over an in-memory connection."""

    def pair(self) -> tuple[Channel, Channel]:
        from twisted.test.iosim import connect, makeFakeClient, makeFakeServer

        left = Channel({"add": lambda a, b: a + b, "boom": lambda: 1 / 0, "later": lambda: defer.succeed("done")})
        right = Channel({"note": lambda text: self.noted.append(text)})
        self.pump = connect(left, makeFakeServer(left), right, makeFakeClient(right))
        return left, right

    def setUp(self) -> None:
        self.noted: list[object] = []

    def test_requests_answers_errors_and_notices(self):
        left, right = self.pair()
        answers: list[object] = []
        right.call("add", a=2, b=3).addCallback(answers.append)
        right.call("later").addCallback(answers.append)
        right.call("boom").addErrback(lambda f: answers.append(f.getErrorMessage()))
        right.call("nothing").addErrback(lambda f: answers.append(f.getErrorMessage()))
        left.notify("note", text="x")
        self.pump.flush()
        self.assertEqual(answers[:2], [5, "done"])
        self.assertIn("ZeroDivisionError", answers[2])
        self.assertIn("no method 'nothing'", answers[3])
        self.assertEqual(self.noted, ["x"])
        self.flushLoggedErrors(ZeroDivisionError)

    def test_a_large_message_crosses_whole(self):
        left, right = self.pair()
        big = "x" * (5 * 1024 * 1024)
        got: list[object] = []
        right.call("add", a=big, b="y").addCallback(got.append)
        self.pump.flush()
        self.assertEqual(got, [big + "y"])

    def test_questions_fail_when_the_process_is_gone(self):
        left, right = self.pair()
        waiting = right.call("later")
        failures: list[str] = []
        waiting.addErrback(lambda f: failures.append(f.getErrorMessage()))
        right.connectionLost()
        self.assertEqual(failures, ["the process is gone"])
        self.failureResultOf(right.call("add", a=1, b=2))


class ResponseEncodingTests(TestCase):
    """An API answer crosses the channel intact."""

    def test_round_trip(self):
        from twisted.python.failure import Failure

        from callhome.control import errors
        from callhome.control.api import STATUS
        from callhome.control.results import XmlAnswer

        reply = decode_answer(json.loads(json.dumps(encode_answer(XmlAnswer(b"<rpc-reply/>\xff", "ok")))))
        self.assertEqual((reply.raw, reply.outcome), (b"<rpc-reply/>\xff", "ok"))
        self.assertEqual(decode_answer(encode_answer({"a": 1})), {"a": 1})
        with self.assertRaises(errors.Conflict) as raised:
            decode_answer(encode_answer(Failure(errors.Conflict("no session"))))
        self.assertEqual((STATUS[type(raised.exception)], raised.exception.message), (409, "no session"))
        with self.assertRaises(errors.InternalError) as raised:
            decode_answer(encode_answer(Failure(KeyError("x"))))
        self.assertEqual(STATUS[type(raised.exception)], 500)


class MergedMetricsTests(TestCase):
    """The main process's /metrics adds the workers' samples to its own."""

    def test_counters_and_histograms_add_up_shared_gauges_do_not(self):
        main, worker = Metrics(), Metrics()
        main.calls_accepted.labels("ssh").inc()
        worker.calls_accepted.labels("ssh").inc(2)
        worker.rpc_done("get", "ok", 0.02)
        worker.calls_finished.labels("auth-failed", "ssh").inc()
        main.live(lambda: 1, lambda: 2, lambda: 10, lambda: 3, lambda: 100)
        worker.live(lambda: 4, lambda: 5, lambda: 99, lambda: 99, lambda: 50)
        text = main.exposition([worker.samples()]).decode()
        self.assertEqual(metric(text, "callhome_calls_accepted_total"), 3)
        self.assertEqual(metric(text, "callhome_calls_finished_total", outcome="auth-failed"), 1)
        self.assertEqual(metric(text, "callhome_rpc_duration_seconds_count", operation="get"), 1)
        self.assertEqual(metric(text, "callhome_rpc_duration_seconds_bucket", operation="get", le="0.025"), 1)
        self.assertEqual(metric(text, "callhome_sessions_open"), 7)
        self.assertEqual(metric(text, "callhome_bytes_received_total"), 150)
        self.assertEqual(metric(text, "callhome_devices_known"), 10)
        self.assertEqual(metric(text, "callhome_devices_quarantined"), 3)
