"""
Webhook alerts against receivers of the test's own (twisted.web on
loopback): what is posted, retries with backoff, a target that answers 500
or never answers (retried, then dropped and counted, the others served),
a full queue; and the running service posting quarantine, auth-failed and
overdue events while simulated devices call it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from callhome import config as config_module
from callhome.call import expectations as expectations_module
from callhome.config.model import AlertTarget
from callhome.control import webhooks as webhooks_module
from callhome.control.webhooks import Webhooks
from tests.helpers import new_key, write_key
from tests.service_harness import RunningService, start_device, wait_for


class Receiver(Resource):
    """Answers each post with the next status of C{statuses} (None: never answers)."""

    isLeaf = True

    def __init__(self, statuses: list[int | None] | None = None) -> None:
        super().__init__()
        self.statuses = statuses or []
        self.bodies: list[dict[str, Any]] = []
        self.posts = 0
        self.authorizations: list[str | None] = []
        self.hanging: list[Any] = []

    def render_POST(self, request: Any) -> Any:
        self.posts += 1
        self.authorizations.append(request.getHeader("authorization"))
        status = self.statuses.pop(0) if self.statuses else 200
        if status is None:
            self.hanging.append(request)
            return NOT_DONE_YET
        request.setResponseCode(status)
        if status == 200:
            self.bodies.append(json.loads(request.content.read()))
        return b"{}"


def serve(receiver: Receiver, case: TestCase) -> str:
    site = Site(receiver)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    case.addCleanup(port.stopListening)

    def release() -> None:
        for request in receiver.hanging:
            if not request.finished and not request._disconnected:  # a test double's private state
                request.finish()

    case.addCleanup(release)
    return f"http://127.0.0.1:{port.getHost().port}/hook"


class WebhookTests(TestCase):
    """The sender, on the real reactor, against receivers on loopback."""

    def setUp(self) -> None:
        self.patch(webhooks_module, "RETRY_DELAYS", (0.05, 0.1))

    def hooks(self, *targets: AlertTarget) -> Webhooks:
        hooks = Webhooks(tuple(targets), reactor, instance="ch-1")
        hooks.startService()
        self.addCleanup(hooks.stopService)
        return hooks

    async def test_only_the_events_asked_for_and_their_body(self) -> None:
        receiver = Receiver()
        hooks = self.hooks(AlertTarget(serve(receiver, self), frozenset(["overdue", "auth-failed"]), token="hook-token"))
        hooks.event("overdue", "device edge has not called for 70s", "edge", {"expected_every": 60}, 1_800_000_000.0)
        hooks.event("call", "call from x: outcome ok", "edge", {"outcome": "ok"}, 1_800_000_001.0)
        hooks.event("call", "call from x: outcome auth-failed", "edge", {"outcome": "auth-failed"}, 1_800_000_002.0)
        hooks.event("quarantine", "unknown key", None, None, 1_800_000_003.0)
        await wait_for(lambda: len(receiver.bodies) == 2, what="two posts")
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual([b["event"] for b in receiver.bodies], ["overdue", "auth-failed"])
        first = receiver.bodies[0]
        self.assertEqual((first["device"], first["instance"], first["time"]), ("edge", "ch-1", "2027-01-15T08:00:00Z"))
        self.assertEqual(first["data"], {"expected_every": 60})
        self.assertEqual(receiver.authorizations, ["Bearer hook-token"] * 2)
        self.assertEqual(hooks.counts()["sent"], 2)

    async def test_500_is_retried_with_backoff(self) -> None:
        receiver = Receiver([500, 500, 200])
        hooks = self.hooks(AlertTarget(serve(receiver, self), frozenset(["overdue"])))
        hooks.event("overdue", "late", "edge", None, 1.0)
        await wait_for(lambda: len(receiver.bodies) == 1, what="delivered on the third post")
        self.assertEqual(receiver.posts, 3)
        self.assertEqual(hooks.counts(), {"sent": 1, "dropped": 0, "failed_posts": 2, "queued": 0})

    async def test_a_hanging_target_is_dropped_and_the_others_served(self) -> None:
        hanging, good = Receiver([None, None, None]), Receiver()
        hooks = self.hooks(
            AlertTarget(serve(hanging, self), frozenset(["overdue"]), timeout=0.2),
            AlertTarget(serve(good, self), frozenset(["overdue"])),
        )
        hooks.event("overdue", "late", "edge", None, 1.0)
        await wait_for(lambda: len(good.bodies) == 1, timeout=2, what="the good target served at once")
        await wait_for(lambda: hooks.counts()["dropped"] == 1, timeout=5, what="the hanging one dropped")
        self.assertEqual(hanging.posts, 3, "one post and two retries")
        self.flushLoggedErrors()

    async def test_a_full_queue_drops_the_oldest(self) -> None:
        self.patch(webhooks_module, "MAX_QUEUED", 3)
        hanging = Receiver([None] * 20)
        hooks = self.hooks(AlertTarget(serve(hanging, self), frozenset(["overdue"]), timeout=30))
        for i in range(6):
            hooks.event("overdue", f"late {i}", "edge", None, float(i))
        self.assertEqual(hooks.counts()["dropped"], 3)
        self.assertEqual([b["message"] for b in hooks.targets[0].queue], ["late 3", "late 4", "late 5"])
        hooks.stopService()

    def test_config(self) -> None:
        tmp = self.mktemp()
        key = write_key(__import__("pathlib").Path(tmp), "k", new_key())
        base = f"listen: [tcp:0]\nresults_dir: {tmp}/r\napi: {{listen: null}}\ndefaults: {{username: a, private_key: {key}, chain: main}}\ndevices: []\nchains: {{main: [{{get: {{}}}}]}}\n"
        loaded = config_module.loads(base + "alerts: [{url: 'http://127.0.0.1:9/h', events: [overdue, quarantine]}]")
        self.assertEqual(loaded.alerts[0].events, frozenset(["overdue", "quarantine"]))
        for bad, words in (("alerts: [{url: 'ftp://x/h', events: [overdue]}]", "alerts[0].url"),
                           ("alerts: [{url: 'http://x/h', events: [lunch]}]", "alerts[0].events[0]: 'lunch' is not an event"),
                           ("alerts: [{url: 'http://x/h'}]", "alerts[0]: say which events")):
            with self.assertRaises(config_module.ConfigError) as caught:
                config_module.loads(base + bad)
            self.assertIn(words, str(caught.exception))


class ServiceWebhookTests(RunningService):
    """The running service posts what happens to simulated devices."""

    async def test_quarantine_auth_failed_and_overdue_are_posted(self) -> None:
        self.patch(expectations_module, "CHECK_INTERVAL", 0.2)
        receiver = Receiver()
        url = serve(receiver, self)
        edge_key, edge_fp = self.device_key("edge")
        stranger_key, _ = self.device_key("stranger")
        service = self.start(
            f'[{{name: edge, host_keys: ["{edge_fp}"], expect_call_every: 2, expect_grace: 0.5}}]',
            extra=f"unknown_devices: quarantine\nalerts: [{{url: '{url}', events: [quarantine, auth-failed, overdue]}}]",
        )
        await self.call(stranger_key).ended
        # edge refuses our key: its call fails authentication.
        other = write_key(self.tmp / "keys", "other", new_key())
        refusing = start_device("--manager", f"127.0.0.1:{self.port}", "--host-key", str(edge_key),
                                "--authorized-key", f"{other}.pub", "--quiet", "--retries", "0")
        self.devices.append(refusing)
        await refusing.ended
        await wait_for(lambda: {b["event"] for b in receiver.bodies} >= {"quarantine", "auth-failed"}, what="two alerts")
        await wait_for(lambda: "overdue" in {b["event"] for b in receiver.bodies}, timeout=10, what="the overdue alert")
        auth = next(b for b in receiver.bodies if b["event"] == "auth-failed")
        self.assertEqual(auth["device"], "edge")
        self.assertEqual(auth["data"]["outcome"], "auth-failed")
        await wait_for(lambda: service.operator.webhooks.counts()["sent"] >= 3, what="counted")
        metrics = (await self.get("/metrics")).body.decode()
        self.assertRegex(metrics, r"callhome_alerts_sent_total [3-9]\.0")
        self.assertIsNotNone(service.operator.webhooks)
