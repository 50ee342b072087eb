"""
Schedules: chains run on an interval inside a persistent session.  In
memory (iosim, time by hand) and against the running service with a
simulated device in its own process.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from callhome import config as config_module
from callhome.call import persistent
from tests.helpers import InMemoryCall, device_factory, make_config, make_keys, memory_manager
from tests.service_harness import RunningService, wait_for


def counts(manager, chain: str) -> dict[str, float]:
    found = {}
    for family in manager.metrics.registry.collect():
        if family.name == "callhome_scheduled_runs":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["chain"] == chain:
                    found[sample.labels["outcome"]] = sample.value
    return found


class ScheduleTests(SynchronousTestCase):
    """On a clock: runs on time, a run still going skips the next, failures and on_error: disconnect."""

    def setUp(self) -> None:
        make_keys(self)
        # No randomness in tests: the first run comes at half the interval.
        self.patch(persistent.Schedules.__init__, "__defaults__", (lambda every: every / 2,))

    def start(self, schedules: str, chains: str = "", **device) -> InMemoryCall:
        config = make_config(
            self.tmp, {"edge-1": self.device_key},
            f"private_key: {self.key_path}\n  mode: persistent\n  schedules: {schedules}",
            extra="ssh: {keepalive_interval: 1000, keepalive_max_missed: 3}\nchains:\n  main: [{get: {}}]\n" + chains,
        )
        self.manager = memory_manager(config)
        call = InMemoryCall(self.manager, device_factory(self.device_key, [self.manager_key], **device))
        call.run()
        return call

    def advance(self, call: InMemoryCall, seconds: float, step: float = 0.5) -> None:
        for _ in range(int(seconds / step)):
            self.manager.clock.advance(step)
            call.run()

    def results(self, name: str) -> int:
        return len(list((self.tmp / "results" / "edge-1").glob(f"*-{name}.xml")))

    def test_runs_every_interval_and_saves_like_any_chain(self) -> None:
        call = self.start("[{every: 10, chain: poll}]", "  poll: [{get-config: {source: running}}]\n")
        self.advance(call, 4)
        self.assertEqual(self.results("get-config"), 0, "the first run at half the interval")
        self.advance(call, 2)
        self.assertEqual(self.results("get-config"), 1)
        self.advance(call, 30)
        self.assertEqual(self.results("get-config"), 4)
        self.assertEqual(counts(self.manager, "poll"), {"ok": 4.0})
        self.assertFalse(call.pump.clientIO.disconnected)

    def test_a_run_still_going_skips_the_next(self) -> None:
        call = self.start("[{every: 10, chain: slow}]", "  slow: [{sleep: {seconds: 25}}]\n")
        self.advance(call, 36)
        self.assertEqual(counts(self.manager, "slow"), {"ok": 1.0, "skipped": 2.0})

    def test_a_failing_run_keeps_the_session(self) -> None:
        call = self.start("[{every: 10, chain: bad}]", "  bad: [{rpc: {xml: '<no-such-op/>'}, on_error: continue}, {get: {}}]\n")
        self.advance(call, 16)
        self.assertEqual(counts(self.manager, "bad"), {"failed": 2.0}, "at 5 s and at 15 s")
        self.assertFalse(call.pump.clientIO.disconnected)
        self.assertIn("edge-1", self.manager.sessions)

    def test_on_error_disconnect_closes_the_session(self) -> None:
        call = self.start("[{every: 10, chain: strict}]", "  strict: [{rpc: {xml: '<no-such-op/>'}, on_error: disconnect}]\n")
        self.advance(call, 8)
        self.assertNotIn("edge-1", self.manager.sessions)
        self.assertIn("scheduled chain strict: step 0 rpc", call.call.call.reason)

    def test_the_session_ending_stops_the_schedules(self) -> None:
        call = self.start("[{every: 10, chain: main}]")
        call.call.session.close()
        self.advance(call, 40)
        self.assertEqual(counts(self.manager, "main"), {})

    def test_config_errors(self) -> None:
        for bad, words in (("[{every: 0.5, chain: main}]", "schedules[0].every: must be at least 1"),
                           ("[{every: 10, chain: nope}]", "schedules[0].chain: no chain named 'nope'"),
                           ("[{every: 10}]", "a schedule needs every")):
            with self.assertRaises(config_module.ConfigError) as caught:
                self.start(bad)
            self.assertIn(words, str(caught.exception))


class ScheduleServiceTests(RunningService):
    """The running service and a simulated device in its own process."""

    async def test_scheduled_runs_against_the_simulator(self) -> None:
        key, fp = self.device_key("edge")
        service = self.start(
            f'[{{name: edge, host_keys: ["{fp}"], mode: persistent, schedules: [{{every: 1, chain: poll}}]}}]',
            chains="{main: [{get: {}}], poll: [{get-config: {source: running}}]}",
        )
        self.call(key)
        await wait_for(lambda: counts(service.manager, "poll").get("ok", 0) >= 3, timeout=20, what="three scheduled runs")
        saved = list((self.tmp / "results" / "edge").glob("*-get-config.xml"))
        self.assertGreaterEqual(len(saved), 3)
        metrics = (await self.get("/metrics")).body.decode()
        self.assertRegex(metrics, r'callhome_scheduled_runs_total\{chain="poll",outcome="ok"\} [3-9]')
