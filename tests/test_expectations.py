"""
Expected calls: devices that did not call become overdue, and stop being
overdue when they call; in memory on a clock, and against the running
service with simulated devices in their own processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from callhome import config as config_module
from callhome.call import expectations as expectations_module
from callhome.call.expectations import Expectations
from callhome.call.manager import Manager
from callhome.call.registry import Registry
from callhome.storage.store import Snapshot
from tests.helpers import new_key, write_key
from tests.service_harness import RunningService, run_cli, wait_for


def config(tmp: Path, defaults: str = "expect_call_every: 60, expect_grace: 10") -> config_module.Config:
    key = write_key(tmp, "manager", new_key())
    return config_module.loads(f"""
listen: ["tcp:0"]
results_dir: {tmp}/results
state_dir: {tmp}/state
api: {{listen: null}}
defaults: {{username: admin, private_key: {key}, chain: main, {defaults}}}
groups: {{quiet: {{expect_call_every: null}}}}
devices:
  - {{name: edge, host_keys: ["SHA256:{'A' * 43}"]}}
  - {{name: held, host_keys: ["SHA256:{'B' * 43}"], mode: persistent}}
  - {{name: lab, host_keys: ["SHA256:{'C' * 43}"], group: quiet}}
chains: {{main: [{{get: {{}}}}]}}
""")


class ExpectationTests(SynchronousTestCase):
    """On a clock, without a network."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.tmp.mkdir()
        self.clock = Clock()
        self.clock.advance(1_800_000_000)

    def watch(self, snapshot: Snapshot | None = None, cfg: config_module.Config | None = None) -> tuple[Expectations, list[tuple[str, str]]]:
        cfg = cfg or config(self.tmp)
        registry = Registry(cfg, self.clock, snapshot=snapshot)
        self.manager = Manager(cfg, self.clock, registry=registry)
        events: list[tuple[str, str]] = []
        self.manager.event = lambda kind, message, device=None, **data: events.append((kind, device))  # type: ignore[method-assign]
        return Expectations(self.manager, self.clock), events

    def device(self, name: str) -> Any:
        return self.manager.registry.device(name)

    def test_a_device_that_never_called_is_overdue_after_one_interval_from_the_start(self) -> None:
        watch, events = self.watch()
        self.clock.advance(69)
        watch.check()
        self.assertEqual(events, [])
        self.clock.advance(2)
        watch.check()
        self.assertEqual(sorted(events), [("overdue", "edge"), ("overdue", "held")])
        self.assertEqual(self.manager.registry.status["edge"].status, "overdue")
        self.assertIn("has not called since the service started", self.manager.registry.status["edge"].last_error)
        self.assertNotIn("lab", watch.overdue, "expect_call_every: null in its group: no expectation")
        watch.check()
        self.assertEqual(len(events), 2, "one event when it becomes overdue, not one per check")
        self.assertEqual(watch.count(), 2)

    def test_calling_again_ends_it(self) -> None:
        watch, events = self.watch()
        self.clock.advance(100)
        watch.check()
        self.manager.registry.transition(self.device("edge"), "connecting", source="10.0.0.1:1")
        self.clock.advance(1)
        watch.check()
        self.assertIn(("overdue-ended", "edge"), events)
        self.assertNotIn("edge", watch.overdue)
        self.assertEqual(dict(watch.last_calls())["edge"], self.clock.seconds() - 1)

    def test_a_held_session_is_a_call_until_it_ends(self) -> None:
        watch, events = self.watch()
        self.manager.sessions["held"] = object()  # type: ignore[assignment]
        for _ in range(10):
            self.clock.advance(60)
            watch.check()
        self.assertNotIn(("overdue", "held"), events)
        del self.manager.sessions["held"]
        self.clock.advance(60)
        watch.check()
        self.assertNotIn(("overdue", "held"), events, "60 s after the session ended: within 60 + 10")
        self.clock.advance(15)
        watch.check()
        self.assertIn(("overdue", "held"), events)

    def test_the_stored_last_call_survives_a_restart(self) -> None:
        """A device last seen long ago is overdue at the first check; one already overdue gets no second event."""
        now = self.clock.seconds()
        snapshot = Snapshot(devices=[
            {"name": "edge", "status": "disconnected", "last_seen": now - 500, "last_source": "x", "calls": 3,
             "last_error": None, "fingerprint": None},
            {"name": "held", "status": "overdue", "last_seen": now - 900, "last_source": "x", "calls": 1,
             "last_error": "old", "fingerprint": None},
        ])
        watch, events = self.watch(snapshot)
        watch.check()
        self.assertEqual(events, [("overdue", "edge")])
        self.assertEqual(watch.count(), 2)

    def test_config_errors_name_the_key(self) -> None:
        for bad, words in (("expect_call_every: 0", "defaults.expect_call_every"), ("expect_call_every: 5, expect_grace: -1", "defaults.expect_grace"),
                           ("expect_call_every: soon", "defaults.expect_call_every")):
            with self.assertRaises(config_module.ConfigError) as caught:
                config(self.tmp, bad)
            self.assertIn(words, str(caught.exception))

    def test_default_grace_is_a_tenth_of_the_interval(self) -> None:
        cfg = config(self.tmp, "expect_call_every: 600")
        self.assertEqual(cfg.devices[0].overdue_after, 660)


class ExpectationServiceTests(RunningService):
    """The running service, simulated devices in their own processes, the API and the CLI."""

    async def test_an_overdue_device_through_the_api_metrics_and_cli(self) -> None:
        self.patch(expectations_module, "CHECK_INTERVAL", 0.2)
        edge_key, edge_fp = self.device_key("edge")
        _, other_fp = self.device_key("other")
        service = self.start(
            f'[{{name: edge, host_keys: ["{edge_fp}"], expect_call_every: 3, expect_grace: 0.5}}, '
            f'{{name: other, host_keys: ["{other_fp}"]}}]'
        )
        await self.call(edge_key).ended
        await wait_for(lambda: "edge" in service.expectations.overdue, timeout=10, what="edge overdue")
        overdue = (await self.get("/devices?status=overdue")).json()["devices"]
        self.assertEqual([d["name"] for d in overdue], ["edge"])
        self.assertIn("has not called for", overdue[0]["last_error"])
        metrics = (await self.get("/metrics")).body.decode()
        self.assertIn("callhome_devices_overdue 1.0", metrics)
        self.assertIn('callhome_device_last_call_timestamp_seconds{device="edge"}', metrics)
        out, err, code = await run_cli("-c", str(self.config_path), "devices", "--overdue")
        self.assertEqual(code, 0, err)
        self.assertIn(b"edge", out)
        self.assertIn(b"overdue", out)
        self.assertNotIn(b"other", out)
        await self.call(edge_key).ended
        await wait_for(lambda: "edge" not in service.expectations.overdue, timeout=10, what="edge back")
        events = (await self.get("/events?device=edge")).json()["events"]
        kinds = [e["kind"] for e in events]
        self.assertIn("overdue", kinds)
        self.assertIn("overdue-ended", kinds)
