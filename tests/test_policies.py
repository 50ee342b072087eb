"""
Registry and policies in memory: duplicate sessions, unknown devices,
legacy algorithms, a forged host key, the idle timeout, device status.
"""

from __future__ import annotations


from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from callhome.call.admission import Admission
from callhome.config import AdmissionSettings
from callhome.simulator.ssh_server import DeviceTransport
from tests.helpers import make_keys, InMemoryCall, config_text, device_factory, make_config, memory_manager, new_key
from tests.test_hostile import Stalls

MSG_SERVICE_REQUEST = 5
MSG_USERAUTH_REQUEST = 50


class PolicyTests(SynchronousTestCase):
    """What the manager does with a device it knows, or does not."""

    def setUp(self) -> None:
        make_keys(self)

    def config(self, extra: str = "", devices=None, chain: str = "[{get: {}}]"):
        return make_config(self.tmp, devices or {"edge-1": self.device_key}, f"private_key: {self.key_path}", chain=chain, extra=extra)

    def factory(self, **kwargs):
        return device_factory(self.device_key, [self.manager_key], **kwargs)

    def test_status_through_a_call(self):
        """The registry follows a device through a call and counts it."""
        manager = memory_manager(self.config())
        seen = []
        original = manager.registry.transition
        manager.registry.transition = lambda d, s, **kw: (seen.append(s), original(d, s, **kw))
        InMemoryCall(manager, self.factory()).run()
        self.assertEqual(seen, ["connecting", "authenticating", "connected", "disconnected"])
        status = manager.registry.status["edge-1"]
        self.assertEqual((status.calls, status.last_error), (1, None))
        self.assertIsNotNone(status.last_source)

    def test_failed_auth_status(self):
        """A refused login leaves the device failed-auth with the reason."""
        manager = memory_manager(self.config())
        InMemoryCall(manager, device_factory(self.device_key, [new_key()])).run()
        status = manager.registry.status["edge-1"]
        self.assertEqual(status.status, "failed-auth")
        self.assertIn("authentication failed", status.last_error)

    def test_duplicate_replace(self):
        """A device calling again replaces its old session (the default)."""
        manager = memory_manager(self.config(chain="[{get: {}}, {get: {}}]"))
        first = InMemoryCall(manager, self.factory(netconf_protocol=Stalls))
        first.run()
        self.assertEqual(first.call.call.state, "running")
        second = InMemoryCall(manager, self.factory())
        second.run()
        first.run()
        second.run()
        self.assertEqual(first.call.call.outcome, "replaced")
        self.assertEqual(second.call.call.outcome, "ok", second.call.call.reason)

    def test_duplicate_reject(self):
        """With duplicate_sessions: reject, the new call is refused before login."""
        manager = memory_manager(self.config("duplicate_sessions: reject", chain="[{get: {}}, {get: {}}]"))
        first = InMemoryCall(manager, self.factory(netconf_protocol=Stalls))
        first.run()
        second = InMemoryCall(manager, self.factory())
        second.run()
        self.assertEqual(second.call.call.outcome, "duplicate-refused")
        self.assertNotIn(MSG_USERAUTH_REQUEST, second.device.seen)
        self.assertEqual(first.call.call.outcome, "open")
        self.assertEqual(manager.registry.status["edge-1"].status, "connected")

    def test_a_session_we_closed_is_no_duplicate(self):
        """
        A device whose session we closed (close-session answered) and that
        calls back before its old TCP connection is gone (libnetconf2's
        persistent call home does) is served, under reject too; the old
        call keeps its own outcome.
        """
        manager = memory_manager(self.config("duplicate_sessions: reject", chain="[{get: {}}, {get: {}}]"))
        first = InMemoryCall(manager, self.factory(netconf_protocol=Stalls))
        first.run()
        first.call.session.close_reason = "closed through the API"
        second = InMemoryCall(manager, self.factory())
        second.run()
        self.assertEqual(second.call.call.outcome, "ok", second.call.call.reason)
        self.assertNotEqual(first.call.call.outcome, "replaced")

    def test_quarantine_then_enroll_without_restart(self):
        """
        quarantine: an unknown key is refused without credentials and listed;
        once approved (what the API's approve does) the next call is served,
        no restart.
        """
        from callhome.call.registry import EnrollmentError

        stranger = new_key()
        config = self.config("unknown_devices: quarantine")
        manager = memory_manager(config)
        call = InMemoryCall(manager, device_factory(stranger, [self.manager_key]))
        call.run()
        self.assertNotIn(MSG_SERVICE_REQUEST, call.device.seen)
        self.assertEqual(call.call.call.reason, "unknown host key (quarantined)")
        (pending,) = manager.registry.pending.values()
        self.assertEqual(pending.key_type, "ssh-ed25519")

        registry = manager.registry
        self.assertRaises(EnrollmentError, registry.approve, pending.fingerprint, "edge-1")  # name taken
        self.assertRaises(EnrollmentError, registry.approve, pending.fingerprint, "new-box", "nope")  # no such group
        registry.approve(pending.fingerprint, "new-box")
        self.assertEqual(registry.pending, {})
        again = InMemoryCall(manager, device_factory(stranger, [self.manager_key]))
        again.run()
        self.assertEqual(again.call.call.outcome, "ok", again.call.call.reason)
        self.assertTrue(list((self.tmp / "results" / "new-box").glob("*-get.xml")))

    def test_offline_approval_through_enrolled_json(self):
        """callhome approve --offline writes enrolled.json; the registry applies it."""
        from callhome.tools.cli import CliError, approve_offline

        stranger = new_key()
        config = self.config("unknown_devices: quarantine")
        manager = memory_manager(config)
        InMemoryCall(manager, device_factory(stranger, [self.manager_key])).run()
        (pending,) = manager.registry.pending.values()
        path = self.tmp / "config.yaml"
        path.write_text(config_text(self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}", extra="unknown_devices: quarantine"))
        with self.assertRaises(CliError):
            approve_offline(str(path), pending.fingerprint, "edge-1", None)
        self.assertEqual(approve_offline(str(path), pending.fingerprint, "new-box", None), 0)
        manager.registry.tick()
        self.assertEqual(manager.registry.pending, {})
        again = InMemoryCall(manager, device_factory(stranger, [self.manager_key]))
        again.run()
        self.assertEqual(again.call.call.outcome, "ok", again.call.call.reason)

    def test_accept_runs_defaults(self):
        """accept (lab only): an unknown device is served with the defaults."""
        stranger = new_key()
        config = make_config(
            self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}",
            extra="unknown_devices: accept",
        )
        manager = memory_manager(config)
        call = InMemoryCall(manager, device_factory(stranger, [self.manager_key]))
        call.run()
        self.assertEqual(call.call.call.outcome, "ok", call.call.call.reason)
        self.assertTrue(call.call.call.device.name.startswith("unknown-"))

    def test_forged_host_key_gets_no_credentials(self):
        """
        A device presenting a known public key it cannot sign for (a copied
        public key) fails the exchange-hash signature check: no credentials.
        """
        factory = self.factory()
        impostor = new_key()
        factory.privateKeys = {b"ssh-ed25519": impostor}
        manager = memory_manager(self.config())
        call = InMemoryCall(manager, factory)
        call.run()
        self.assertNotIn(MSG_SERVICE_REQUEST, call.device.seen)
        self.assertNotIn(MSG_USERAUTH_REQUEST, call.device.seen)
        self.assertEqual(call.call.call.outcome, "handshake-failed")
        self.assertIn("signature", call.call.call.reason)

    def legacy_device(self):
        """A device whose SSH server only speaks aes128-cbc."""
        factory = self.factory()
        factory.protocol = type("CBCOnly", (DeviceTransport,), {"supportedCiphers": [b"aes128-cbc"]})
        return factory

    def test_legacy_algorithm_refused_by_default(self):
        """Without opt-in no legacy algorithm is offered: the exchange fails."""
        manager = memory_manager(self.config())
        self.assertNotIn(b"aes128-cbc", manager.offer["supportedCiphers"])
        call = InMemoryCall(manager, self.legacy_device())
        call.run()
        self.assertEqual(call.call.call.outcome, "handshake-failed")

    def test_legacy_algorithm_for_the_device_that_opted_in(self):
        """A device that opts into aes128-cbc is served with it."""
        from dataclasses import replace

        config = self.config()
        config = replace(config, devices=tuple(replace(d, legacy_algorithms=frozenset({"aes128-cbc"})) for d in config.devices))
        manager = memory_manager(config)
        call = InMemoryCall(manager, self.legacy_device())
        call.run()
        self.assertEqual(call.call.call.outcome, "ok", call.call.call.reason)

    def test_legacy_algorithm_not_for_others(self):
        """
        Another device's opt-in puts aes128-cbc on offer, but a device that
        did not opt in and negotiates it is refused before login.
        """
        other = new_key()
        config = make_config(
            self.tmp, {"edge-1": self.device_key, "old-box": other}, f"private_key: {self.key_path}",
            extra="groups: {old: {legacy_algorithms: [aes128-cbc]}}",
        )
        # make_config gives no group; put old-box in the legacy group by hand.
        from dataclasses import replace

        devices = tuple(replace(d, legacy_algorithms=frozenset({"aes128-cbc"})) if d.name == "old-box" else d for d in config.devices)
        manager = memory_manager(replace(config, devices=devices))
        self.assertIn(b"aes128-cbc", manager.offer["supportedCiphers"])
        call = InMemoryCall(manager, self.legacy_device())
        call.run()
        record = call.call.call
        self.assertEqual(record.outcome, "not-allowed")
        self.assertIn("aes128-cbc", record.reason)
        self.assertNotIn(MSG_USERAUTH_REQUEST, call.device.seen)
        self.assertEqual(manager.registry.status["edge-1"].status, "failed-not-allowed")

    def test_idle_timeout(self):
        """A connected device that sends nothing for idle_timeout is dropped."""
        manager = memory_manager(self.config("admission: {idle_timeout: 20}\nnetconf: {rpc_timeout: 1000}", chain="[{get: {}}, {get: {}}]"))
        call = InMemoryCall(manager, self.factory(netconf_protocol=Stalls))
        call.run()
        for _ in range(25):
            manager.clock.advance(1)
            call.run()
        self.assertEqual(call.call.call.outcome, "idle-timeout")
        self.assertIn("nothing received from the device for 20s", call.call.call.reason)


class AdmissionTests(SynchronousTestCase):
    """Pending limits and per-source blocking."""

    def test_limits_and_blocking(self):
        clock = MemoryReactorClock()
        admission = Admission(AdmissionSettings(max_pending=3, max_pending_per_source=2, failed_auth_limit=3, failed_auth_window=60, block_seconds=100), clock)
        self.assertIsNone(admission.admit("a"))
        self.assertIsNone(admission.admit("a"))
        self.assertEqual(admission.admit("a"), "too-many-pending-from-source")
        self.assertIsNone(admission.admit("b"))
        self.assertEqual(admission.admit("c"), "too-many-pending")
        admission.authenticated("b")
        for _ in range(2):
            admission.failed_before_auth("a")
        self.assertIsNone(admission.admit("a"))
        admission.failed_before_auth("a")
        self.assertEqual(admission.admit("a"), "blocked")
        self.assertIsNone(admission.admit("c"), "other sources unaffected")
        clock.advance(101)
        self.assertIsNone(admission.admit("a"))
        self.assertEqual(admission.refused["blocked"], 1)

    def test_failures_outside_window_do_not_block(self):
        clock = MemoryReactorClock()
        admission = Admission(AdmissionSettings(failed_auth_limit=3, failed_auth_window=10), clock)
        for _ in range(5):
            admission.admit("a")
            admission.failed_before_auth("a")
            clock.advance(6)
        self.assertIsNone(admission.admit("a"))


class ImpersonationTests(SynchronousTestCase):
    """A copied public key must not be able to act as the device."""

    def setUp(self) -> None:
        make_keys(self)

    def test_forged_key_does_not_replace_the_real_session(self):
        """
        The real device holds a session; a call presenting its public key
        without the private key fails the signature check, and the real
        session, the session table and the registry are untouched.
        """
        config = make_config(self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}\n  mode: persistent")
        manager = memory_manager(config)
        real = InMemoryCall(manager, device_factory(self.device_key, [self.manager_key]))
        real.run()
        self.assertEqual(real.call.call.state, "running")
        calls_before = manager.registry.status["edge-1"].calls
        forged = device_factory(self.device_key, [self.manager_key])
        forged.privateKeys = {b"ssh-ed25519": new_key()}
        attacker = InMemoryCall(manager, forged)
        attacker.run()
        real.run()
        self.assertEqual(attacker.call.call.outcome, "handshake-failed")
        self.assertIn("signature", attacker.call.call.reason)
        self.assertFalse(real.pump.clientIO.disconnected, "the real session must survive")
        self.assertIs(manager.sessions["edge-1"], real.call)
        status = manager.registry.status["edge-1"]
        self.assertEqual((status.status, status.calls, status.last_error), ("connected", calls_before, None))

    def test_forged_unknown_key_is_not_quarantined(self):
        """Quarantine records only keys whose holder proved them."""
        config = make_config(self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}", extra="unknown_devices: quarantine")
        manager = memory_manager(config)
        forged = device_factory(new_key(), [self.manager_key])
        forged.privateKeys = {b"ssh-ed25519": new_key()}
        InMemoryCall(manager, forged).run()
        self.assertEqual(manager.registry.pending, {})
