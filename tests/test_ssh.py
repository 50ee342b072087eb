"""
The SSH side of a call home, in memory: our conch client transport against
the simulator's conch server, wired with iosim, time driven by hand.
"""

from __future__ import annotations

import struct

from twisted.conch.ssh import common, userauth
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from callhome.ssh.transport import CallHomeTransport
from callhome.ssh.userauth import CallHomeUserAuth
from tests.helpers import make_keys, InMemoryCall, device_factory, make_config, memory_manager, new_key

MSG_SERVICE_REQUEST = 5
MSG_USERAUTH_REQUEST = 50


class CallHomeSSHTests(SynchronousTestCase):
    """Identity before credentials, and each way of logging in."""

    def setUp(self) -> None:
        make_keys(self)

    def call(self, config, factory) -> InMemoryCall:
        manager = memory_manager(config)
        call = InMemoryCall(manager, factory)
        call.run()
        return call

    def test_unknown_host_key_gets_no_credentials(self):
        """
        RFC 8071 C5-C7: a device whose host key we do not know must never see
        a credential; the device never even receives a service request.
        """
        config = make_config(self.tmp, {"known": new_key()}, f"private_key: {self.key_path}\n  password: secret")
        call = self.call(config, device_factory(self.device_key, [self.manager_key], password="secret"))
        self.assertNotIn(MSG_SERVICE_REQUEST, call.device.seen)
        self.assertNotIn(MSG_USERAUTH_REQUEST, call.device.seen)
        record = call.call.call
        self.assertEqual(record.outcome, "unknown-host-key")
        self.assertEqual(record.fingerprint, call.device.factory.fingerprint)
        self.assertEqual(record.key_type, "ssh-ed25519")
        self.assertEqual(call.manager.counts["unknown-host-key"], 1)
        self.assertFalse(list((self.tmp / "results").glob("**/*.xml")))

    def test_known_device_runs_chain_with_one_auth_request(self):
        """
        A known device is logged in with its key in a single signed request
        (no 'none' probe, no key query), its chain runs and the reply is saved.
        """
        config = make_config(self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}")
        call = self.call(config, device_factory(self.device_key, [self.manager_key]))
        record = call.call.call
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertEqual(call.device.seen.count(MSG_USERAUTH_REQUEST), 1)
        (saved,) = (self.tmp / "results" / "edge-1").glob("*-get.xml")
        self.assertIn(b"<hostname>sim-device</hostname>", saved.read_bytes())

    def test_device_listed_by_public_key_line(self):
        """host_keys may hold an OpenSSH public-key line instead of a fingerprint."""
        from callhome import config as config_module

        line = self.device_key.public().toString("openssh").decode()
        config = config_module.loads(
            f"listen: [tcp:0]\nresults_dir: {self.tmp}/results\n"
            f"devices: [{{name: d, host_keys: ['{line}'], private_key: {self.key_path}, username: admin, chain: c}}]\n"
            "chains: {c: [get: {}]}\n"
        )
        call = self.call(config, device_factory(self.device_key, [self.manager_key]))
        self.assertEqual(call.call.call.outcome, "ok", call.call.call.reason)

    def test_wrong_key_is_refused_with_reason(self):
        """A device that does not accept our key ends the call, reason given."""
        config = make_config(self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}")
        call = self.call(config, device_factory(self.device_key, [new_key()]))
        record = call.call.call
        self.assertEqual(record.outcome, "auth-failed")
        self.assertIn("authentication failed: tried publickey", record.reason)

    def test_password_login(self):
        """Password credentials log in where keys are not configured."""
        config = make_config(self.tmp, {"edge-1": self.device_key}, "password: s3cret")
        call = self.call(config, device_factory(self.device_key, password="s3cret"))
        self.assertEqual(call.call.call.outcome, "ok", call.call.call.reason)

    def test_wrong_password_is_refused_and_bounded(self):
        """A wrong password fails once per method, not in a loop."""
        config = make_config(self.tmp, {"edge-1": self.device_key}, "password: wrong")
        call = self.call(config, device_factory(self.device_key, password="right"))
        record = call.call.call
        self.assertEqual(record.outcome, "auth-failed")
        self.assertIn("tried password", record.reason)
        self.assertLessEqual(call.device.seen.count(MSG_USERAUTH_REQUEST), 2)

    def test_key_then_password_fallback(self):
        """With a key and a password, a device refusing the key takes the password."""
        config = make_config(self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}\n  password: pw")
        call = self.call(config, device_factory(self.device_key, [new_key()], password="pw"))
        self.assertEqual(call.call.call.outcome, "ok", call.call.call.reason)

    def test_base_1_0_device(self):
        """A base:1.0-only device is served with end-of-message framing."""
        config = make_config(self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}")
        call = self.call(config, device_factory(self.device_key, [self.manager_key], offer_base_1_1=False))
        self.assertEqual(call.call.call.outcome, "ok", call.call.call.reason)
        self.assertEqual(call.call.session.framing, "base:1.0")

    def test_handshake_timeout(self):
        """A peer that connects and never speaks is dropped after handshake_timeout."""
        config = make_config(self.tmp, {"edge-1": self.device_key}, "password: x", extra="ssh: {handshake_timeout: 5}")
        manager = memory_manager(config)
        manager.admit("192.168.1.1")
        call = manager.new_call()
        tr = StringTransport()
        call.makeConnection(tr)
        manager.clock.advance(4)
        self.assertFalse(tr.disconnecting)
        manager.clock.advance(2)
        self.assertTrue(tr.disconnecting)
        self.assertIn("no NETCONF session within 5s", call.call.reason)
        call.connectionLost(None)
        self.assertEqual(manager.counts["timeout"], 1)

    def test_garbage_instead_of_version(self):
        """Something that is not SSH gets disconnected without harm."""
        config = make_config(self.tmp, {"edge-1": self.device_key}, "password: x")
        manager = memory_manager(config)
        call = CallHomeTransport(manager, 5)
        tr = StringTransport()
        call.makeConnection(tr)
        call.dataReceived(b"x" * 5000)
        self.assertTrue(tr.disconnecting)
        self.assertIn("version string", call.call.reason)


class FakeAuthTransport:
    """Just enough of a transport for CallHomeUserAuth."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []
        self.failed: str | None = None
        self.sessionID = b"sid"
        self.peerExtensions: dict[bytes, bytes] = {}

    def sendPacket(self, number: int, payload: bytes) -> None:
        self.packets.append((number, payload))

    def fail(self, reason: str, code: int = 0) -> None:
        self.failed = reason


class UserAuthTests(SynchronousTestCase):
    """The bounded userauth client, packet by packet."""

    def make(self, **credentials):
        from callhome.config import Credentials

        class Next:
            name = b"ssh-connection"

        auth = CallHomeUserAuth(Credentials(username="admin", **credentials), Next())
        auth.transport = FakeAuthTransport()
        auth.serviceStarted()
        return auth

    def info_request(self, prompts: int) -> bytes:
        body = common.NS(b"") + common.NS(b"") + common.NS(b"") + struct.pack("!L", prompts)
        return body + (common.NS(b"Password: ") + b"\x00") * prompts

    def test_keyboard_interactive_answers_with_password(self):
        """keyboard-interactive prompts are answered with the password."""
        auth = self.make(password="pw")
        auth.ssh_USERAUTH_FAILURE(common.NS(b"keyboard-interactive") + b"\x00")
        self.assertEqual(auth.transport.packets[-1][0], userauth.MSG_USERAUTH_REQUEST)
        auth.ssh_USERAUTH_PK_OK(self.info_request(1))
        number, payload = auth.transport.packets[-1]
        self.assertEqual(number, userauth.MSG_USERAUTH_INFO_RESPONSE)
        self.assertEqual(payload, struct.pack("!L", 1) + common.NS(b"pw"))

    def test_keyboard_interactive_loop_is_bounded(self):
        """
        A device that keeps asking (conch's client would answer forever,
        burning a core) is given up on after a few rounds.
        """
        auth = self.make(password="pw")
        auth.ssh_USERAUTH_FAILURE(common.NS(b"keyboard-interactive") + b"\x00")
        for _ in range(10):
            if auth.transport.failed:
                break
            auth.ssh_USERAUTH_PK_OK(self.info_request(1))
        self.assertIn("more than 3 rounds", auth.transport.failed)

    def test_only_configured_methods_are_tried(self):
        """Without a password, a device offering only password is given up on at once."""
        from tests.helpers import new_key

        auth = self.make(private_keys=(new_key(),))
        self.assertEqual(len(auth.transport.packets), 1)
        auth.ssh_USERAUTH_FAILURE(common.NS(b"password,keyboard-interactive") + b"\x00")
        self.assertIn("tried publickey; device allows keyboard-interactive,password", auth.transport.failed)

    def test_rsa_signed_with_sha2(self):
        """RSA keys are signed rsa-sha2-*, which OpenSSH 8.8+ requires."""
        from cryptography.hazmat.primitives.asymmetric import rsa
        from twisted.conch.ssh import keys

        key = keys.Key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        auth = self.make(private_keys=(key,))
        number, payload = auth.transport.packets[0]
        user, service, method, rest = common.getNS(payload, 3)
        algorithm = common.getNS(rest[1:])[0]
        self.assertEqual(algorithm, b"rsa-sha2-256")
        auth2 = CallHomeUserAuth(auth.credentials, auth.instance)
        auth2.transport = FakeAuthTransport()
        auth2.transport.peerExtensions = {b"server-sig-algs": b"ssh-ed25519,rsa-sha2-512,rsa-sha2-256"}
        auth2.serviceStarted()
        rest = common.getNS(auth2.transport.packets[0][1], 3)[3]
        self.assertEqual(common.getNS(rest[1:])[0], b"rsa-sha2-512")

    def test_expired_password_fails_clearly(self):
        """A password-change request is a clear failure, not a prompt."""
        auth = self.make(password="pw")
        auth.ssh_USERAUTH_FAILURE(common.NS(b"password") + b"\x00")
        auth.ssh_USERAUTH_PK_OK(common.NS(b"change it") + common.NS(b""))
        self.assertIn("password expired", auth.transport.failed)





class ChannelOpenFailedTests(SynchronousTestCase):
    """conch reports a channel that never opened in two ways; both end the call with a reason."""

    def channel(self) -> tuple[object, list[str]]:
        from callhome.config import NetconfSettings
        from callhome.ssh.connection import NetconfChannel

        reasons: list[str] = []

        class Side:
            def fail(self, reason: str) -> None:
                reasons.append(reason)

        return NetconfChannel(Side(), NetconfSettings()), reasons  # type: ignore[arg-type]

    def test_connection_lost_while_opening(self) -> None:
        """serviceStopped passes a bare ConnectionLost, not a Failure (a crash before)."""
        from twisted.internet.error import ConnectionLost

        channel, reasons = self.channel()
        channel.openFailed(ConnectionLost())  # type: ignore[attr-defined]
        self.assertEqual(reasons, ["connection lost while opening the session channel"])

    def test_device_refused_the_channel(self) -> None:
        from twisted.conch.error import ConchError
        from twisted.python.failure import Failure

        channel, reasons = self.channel()
        channel.openFailed(Failure(ConchError("administratively prohibited", 1)))  # type: ignore[attr-defined]
        self.assertEqual(len(reasons), 1)
        self.assertIn("device refused the session channel", reasons[0])
