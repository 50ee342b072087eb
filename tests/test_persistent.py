"""
Persistent sessions (RFC 8071 §4): keepalives on schedule, a device that
stops answering is dropped, the device's own keepalives are answered, the
idle timeout.  In memory, time driven by hand.
"""

from __future__ import annotations

import sys


from twisted.trial.unittest import SynchronousTestCase

from callhome.timerwheel import wheel_for
from tests.helpers import make_keys, InMemoryCall, device_factory, make_config, memory_manager

MSG_GLOBAL_REQUEST = 80
MSG_REQUEST_SUCCESS = 81


class PersistentTests(SynchronousTestCase):
    """What happens after the chain when a device stays connected."""

    def setUp(self) -> None:
        make_keys(self)

    def start(self, extra: str = "", mode_extra: str = "") -> InMemoryCall:
        config = make_config(
            self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}\n  mode: persistent{mode_extra}",
            extra="ssh: {keepalive_interval: 10, keepalive_max_missed: 3}\n" + extra,
        )
        self.manager = memory_manager(config)
        call = InMemoryCall(self.manager, device_factory(self.device_key, [self.manager_key]))
        call.run()
        return call

    def advance(self, call: InMemoryCall, seconds: int) -> None:
        for _ in range(seconds):
            self.manager.clock.advance(1)
            call.run()

    def test_session_stays_open_after_the_chain(self):
        """Persistent: the chain ran, its result is saved, the session is kept."""
        call = self.start()
        record = call.call.call
        self.assertEqual(record.state, "running")
        self.assertEqual(record.outcome, "ok")
        self.assertFalse(call.pump.clientIO.disconnected)
        self.assertEqual(len(list((self.tmp / "results" / "edge-1").glob("*-get.xml"))), 1)
        self.assertEqual(self.manager.registry.status["edge-1"].status, "connected")

    def test_keepalives_on_schedule(self):
        """One keepalive per interval; answered ones keep the session."""
        call = self.start()
        self.assertEqual(call.device.seen.count(MSG_GLOBAL_REQUEST), 0)
        self.advance(call, 10)
        self.assertEqual(call.device.seen.count(MSG_GLOBAL_REQUEST), 1)
        self.advance(call, 50)
        self.assertEqual(call.device.seen.count(MSG_GLOBAL_REQUEST), 6)
        self.assertEqual(call.call.keepalive.missed, 0)
        self.assertFalse(call.pump.clientIO.disconnected)

    def test_silent_device_dropped_after_allowed_misses(self):
        """A device that stops answering keepalives is dropped after max_missed."""
        call = self.start()
        call.device.service.ssh_GLOBAL_REQUEST = lambda packet: None
        self.advance(call, 35)
        self.assertFalse(call.pump.clientIO.disconnected, "3 missed is still allowed")
        self.advance(call, 10)
        record = call.call.call
        self.assertEqual(record.outcome, "keepalive-timeout")
        self.assertIn("no answer to 3 keepalives", record.reason)
        self.assertTrue(call.pump.clientIO.disconnected)
        self.assertEqual(self.manager.registry.status["edge-1"].status, "disconnected")

    def test_keepalive_answered_by_success_or_failure(self):
        """OpenSSH answers keepalive@openssh.com with a failure, others with success: both prove the device alive."""
        for answer in (1, 0):
            call = self.start()
            call.device.service.gotGlobalRequest = lambda request, data, answer=answer: answer
            call.call.keepalive.missed = 2
            self.advance(call, 10)
            self.assertEqual(call.call.keepalive.missed, 0, f"answer {answer}")
            self.assertEqual(call.call.keepalive.sent, 1)
            self.assertFalse(call.pump.clientIO.disconnected)

    def test_unsolicited_global_answer_ends_the_call(self):
        """An answer to a global request we never sent is a protocol error: the call ends, saying so."""
        call = self.start()
        call.device.service.transport.sendPacket(MSG_REQUEST_SUCCESS, b"")
        call.run()
        record = call.call.call
        self.assertIn("the device sent a global request success for nothing we asked", record.reason)
        self.assertTrue(call.pump.clientIO.disconnected)

    def test_held_call_stays_small(self):
        """
        A held call's transport keeps its attributes in the smaller dict
        table (42 keys or fewer, even at the handshake's peak): the offer's
        lists live on the class and the handshake's leftovers are dropped.
        """
        call = self.start()
        transport = call.call
        self.assertNotIn("supportedCiphers", vars(transport))
        self.assertIs(type(transport), type(transport).offering(self.manager.offer))
        for leftover in ("instance", "ecPriv", "ecPub", "ourKexInitPayload", "otherKexInitPayload", "peerExtensions"):
            self.assertNotIn(leftover, vars(transport))

        class Bare:
            pass

        widest = Bare()
        for i in range(42):
            setattr(widest, f"attribute_{i}", i)
        self.assertLessEqual(sys.getsizeof(vars(transport)), sys.getsizeof(vars(widest)), sorted(vars(transport)))

    def test_idle_check_rides_on_the_keepalive(self):
        """
        A held session has one timer-wheel job: the admission.idle_timeout
        check runs on the keepalive's tick, and still drops a device that
        goes silent (keepalives unanswered, allowed to miss many).
        """
        call = self.start(extra="admission: {idle_timeout: 100}\n")
        transport = call.call
        transport.keepalive.max_missed = 1000
        self.assertIsNone(transport._idle_watch)
        self.assertIs(transport.keepalive.on_tick.__func__, type(transport)._check_idle)
        wheel = wheel_for(self.manager.clock)
        self.assertEqual(sum(len(jobs) for jobs in wheel.slots.values()), 1)
        call.device.service.ssh_GLOBAL_REQUEST = lambda packet: None
        self.advance(call, 95)
        self.assertFalse(call.pump.clientIO.disconnected)
        self.advance(call, 20)
        record = call.call.call
        self.assertEqual(record.outcome, "idle-timeout")
        self.assertIn("nothing received from the device for 100s", record.reason)

    def test_device_keepalive_is_answered(self):
        """The device's keepalive@openssh.com gets a success reply."""
        call = self.start()
        answers = []
        d = call.device.service.sendGlobalRequest(b"keepalive@openssh.com", b"", wantReply=True)
        d.addCallbacks(lambda r: answers.append("success"), lambda f: answers.append("failure"))
        call.run()
        self.assertEqual(answers, ["success"])

    def test_idle_timeout(self):
        """With idle_timeout, a persistent session with no NETCONF traffic is closed."""
        call = self.start(mode_extra="\n  idle_timeout: 30")
        self.advance(call, 25)
        self.assertFalse(call.pump.clientIO.disconnected)
        self.advance(call, 10)
        record = call.call.call
        self.assertEqual(record.outcome, "idle-timeout")
        self.assertTrue(call.pump.clientIO.disconnected)

    def test_periodic_is_the_default(self):
        """Without mode: persistent the session closes after the chain."""
        config = make_config(self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}")
        manager = memory_manager(config)
        call = InMemoryCall(manager, device_factory(self.device_key, [self.manager_key]))
        call.run()
        self.assertTrue(call.pump.clientIO.disconnected)
        self.assertIsNone(call.call.keepalive)

    def test_device_rekey_does_not_rerun_the_call(self):
        """
        A key re-exchange the device starts mid-session (conch calls
        connectionSecure after every NEWKEYS) must not run the policies or
        userauth again: the session carries on.
        """
        call = self.start()
        calls_before = self.manager.registry.status["edge-1"].calls
        call.device.sendKexInit()
        call.run()
        self.advance(call, 10)
        self.assertEqual(call.device.seen.count(5), 1, "one service request only")
        self.assertEqual(self.manager.registry.status["edge-1"].calls, calls_before)
        self.assertFalse(call.pump.clientIO.disconnected)
        self.assertEqual(call.call.keepalive.missed, 0, "keepalives still answered after the rekey")
