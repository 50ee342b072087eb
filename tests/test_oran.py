"""
O-RAN M-plane supervision (``oran-supervision``) against the simulator's
o-ran-supervision watchdog: resets on time keep the O-RU supervised; a
manager that stops resetting sees the O-RU drop into loss of supervision;
an rpc-error, no answer, or a next-update-at in the past mark the device
``supervision-failed`` and leave the session up.  In memory (iosim, time by
hand) and against the running service with a simulated O-RU in its own
process.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from callhome.actions import ActionConfigError
from callhome.actions.oran import OranSupervision
from callhome.simulator.datastore import Datastore
from tests.helpers import InMemoryCall, device_factory, make_config, make_keys, memory_manager
from tests.service_harness import RunningService, start_device, wait_for

RESET = ('<supervision-watchdog-reset xmlns="urn:o-ran:supervision:1.0"><supervision-notification-interval>20'
         '</supervision-notification-interval><guard-timer-overhead>5</guard-timer-overhead></supervision-watchdog-reset>')


class SupervisionTests(SynchronousTestCase):
    """In memory: the simulator's real watchdog timer on the same clock."""

    def setUp(self) -> None:
        make_keys(self)

    def start(self, chain: str, mode: str = "ok") -> InMemoryCall:
        config = make_config(
            self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}\n  mode: persistent",
            chain=chain, extra="ssh: {keepalive_interval: 1000, keepalive_max_missed: 3}\nnetconf: {rpc_timeout: 30}\n",
        )
        self.manager = memory_manager(config)
        self.datastore = Datastore.from_file(clock=self.manager.clock)
        self.datastore.supervision_mode = mode
        call = InMemoryCall(self.manager, device_factory(self.device_key, [self.manager_key], datastore=self.datastore))
        call.run()
        return call

    def advance(self, call: InMemoryCall, seconds: float) -> None:
        for _ in range(int(seconds)):
            self.manager.clock.advance(1)
            call.run()

    def test_resets_on_time_keep_the_o_ru_supervised(self) -> None:
        call = self.start("[{oran-supervision: {supervision_notification_interval: 20, guard_timer_overhead: 5}}]")
        self.assertEqual(self.datastore.supervision_resets, 1)
        self.assertEqual(call.call.call.outcome, "ok", call.call.call.reason)
        self.advance(call, 120)
        self.assertGreaterEqual(self.datastore.supervision_resets, 6, "every interval minus the margin (18 s)")
        self.assertEqual(self.datastore.supervision_lost, 0)
        self.assertIn("edge-1", self.manager.sessions)
        self.assertEqual(self.manager.registry.status["edge-1"].status, "connected")
        notifications = list((self.tmp / "results" / "edge-1").rglob("*notification*"))
        self.assertGreaterEqual(len(notifications), 4, "supervision-notification every interval, saved")

    def test_a_manager_that_stops_resetting_loses_the_o_ru(self) -> None:
        """One reset by hand and no supervisor: after interval + guard the O-RU drops the session."""
        call = self.start(f"[{{rpc: {{xml: '{RESET}'}}}}]")
        self.assertEqual(self.datastore.supervision_resets, 1)
        self.advance(call, 24)
        self.assertIn("edge-1", self.manager.sessions)
        self.advance(call, 3)
        self.assertEqual(self.datastore.supervision_lost, 1)
        self.assertNotIn("edge-1", self.manager.sessions)

    def test_an_rpc_error_marks_the_device_and_keeps_the_session(self) -> None:
        call = self.start("[{oran-supervision: {supervision_notification_interval: 20, guard_timer_overhead: 5}}]", mode="error")
        status = self.manager.registry.status["edge-1"]
        self.assertEqual(status.status, "supervision-failed")
        self.assertIn("supervision-watchdog-reset refused", status.last_error)
        self.advance(call, 40)
        self.assertIn("edge-1", self.manager.sessions, "the session stays up")

    def test_no_answer_is_a_failure_after_the_guard_time(self) -> None:
        call = self.start("[{oran-supervision: {supervision_notification_interval: 20, guard_timer_overhead: 5}}]", mode="silent")
        self.advance(call, 6)
        status = self.manager.registry.status["edge-1"]
        self.assertEqual(status.status, "supervision-failed")
        self.assertIn("not answered", status.last_error)
        self.assertIn("edge-1", self.manager.sessions)

    def test_next_update_in_the_past(self) -> None:
        self.start("[{oran-supervision: {}}]", mode="past")
        status = self.manager.registry.status["edge-1"]
        self.assertEqual(status.status, "supervision-failed")
        self.assertIn("is in the past", status.last_error)

    def test_recovery_is_an_event_and_the_status_comes_back(self) -> None:
        call = self.start("[{oran-supervision: {supervision_notification_interval: 20, guard_timer_overhead: 5}}]", mode="error")
        self.datastore.supervision_mode = "ok"
        self.advance(call, 20)
        self.assertEqual(self.manager.registry.status["edge-1"].status, "connected")

    def test_parameters(self) -> None:
        for params, key in (({"supervision_notification_interval": 0}, "supervision_notification_interval"),
                            ({"guard_timer_overhead": "ten"}, "guard_timer_overhead"),
                            ({"supervision_notification_interval": 10, "margin": 10}, "margin")):
            with self.assertRaises(ActionConfigError) as caught:
                OranSupervision(**params)
            self.assertEqual(caught.exception.key, key)
        self.assertEqual(OranSupervision(supervision_notification_interval=60).margin, 6)


class SupervisionServiceTests(RunningService):
    """The running service and a simulated O-RU in its own process."""

    async def test_supervised_o_ru_and_one_that_refuses(self) -> None:
        good_key, good_fp = self.device_key("oru-1")
        bad_key, bad_fp = self.device_key("oru-2")
        service = self.start(
            f'[{{name: oru-1, host_keys: ["{good_fp}"], mode: persistent}}, {{name: oru-2, host_keys: ["{bad_fp}"], mode: persistent}}]',
            chains="{main: [{oran-supervision: {supervision_notification_interval: 2, guard_timer_overhead: 1}}]}",
            extra="alerts: []",
        )
        self.call(good_key)
        refusing = start_device("--manager", f"127.0.0.1:{self.port}", "--host-key", str(bad_key),
                                "--authorized-key", self.manager_pub, "--quiet", "--retries", "0", "--supervision-mode", "error")
        self.devices.append(refusing)
        registry = service.manager.registry
        await wait_for(lambda: getattr(registry.status.get("oru-2"), "status", None) == "supervision-failed", what="oru-2 failed")
        # oru-1 stays supervised past several intervals (the simulator would drop it otherwise).
        await wait_for(lambda: len(list((self.tmp / "results" / "oru-1").rglob("*notification*"))) >= 2, timeout=20,
                       what="supervision notifications from oru-1")
        self.assertIn("oru-1", service.manager.sessions)
        self.assertEqual(registry.status["oru-1"].status, "connected")
        self.assertIn("oru-2", service.manager.sessions, "the refusing O-RU keeps its session")
        events = (await self.get("/events?kind=supervision-failed")).json()["events"]
        self.assertEqual({e["device"] for e in events}, {"oru-2"})
