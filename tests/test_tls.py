"""
TLS call home in memory: the manager's TLS calls and the simulated TLS
device, both inside Twisted's TLSMemoryBIOProtocol, connected by iosim on
a task.Clock.  Identity by pinned fingerprint and by CA, every refusal
with its reason, quarantine and approval, rotation, the keepalive probe.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from callhome import config as config_module
from callhome.call.listener import CallHomeFactory
from callhome.call.manager import Manager
from callhome.simulator.netconf_server import Datastore
from callhome.simulator.tls_device import TlsDeviceFactory
from callhome.tls.factory import TlsCalls
from tests.tls_certs import DAY, NOW, Issued, issue


class TlsCase(SynchronousTestCase):
    """A manager with TLS calls on a clock, and devices to connect to it."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir(parents=True)
        self.clock = task.Clock()
        self.clock.advance(time.time())  # certificates are dated in real time
        self.manager_cert = issue("callhome-manager")
        self.manager_pem, self.manager_key = self.manager_cert.write(self.tmp, "manager")

    def configure(self, devices: str, extra: str = "", unknown: str = "reject") -> Manager:
        text = f"""
listen_tls: ["tcp:4335"]
results_dir: {self.tmp / 'results'}
state_dir: {self.tmp / 'state'}
defaults: {{tls_certificate: {self.manager_pem}, tls_private_key: {self.manager_key}, chain: main}}
unknown_devices: {unknown}
devices: {devices}
chains: {{main: [{{get: {{}}}}]}}
{extra}
"""
        self.config = config_module.loads(text)
        self.manager = Manager(self.config, self.clock)
        self.factory = CallHomeFactory(self.manager, TlsCalls(self.manager), transport="tls")
        return self.manager

    def device(self, issued: Issued, trusted: bytes | None = None, pinned: frozenset[str] | None = None) -> TlsDeviceFactory:
        """A TLS device presenting C{issued}, accepting the manager's certificate by default."""
        return TlsDeviceFactory(
            issued.pem + issued.chain, issued.key_pem, Datastore.from_file(clock=self.clock), trusted,
            frozenset([self.manager_cert.fingerprint]) if pinned is None else pinned,
        )

    def connect(self, device: Protocol) -> tuple[Any, iosim.IOPump]:
        """Connect a device protocol to a new call; return the call's TlsCall and the pump."""
        call = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        assert call is not None
        pump = iosim.connect(
            call, iosim.makeFakeServer(call), device, iosim.makeFakeClient(device), greet=False, clock=self.clock,
        )
        return getattr(call, "wrappedProtocol", call), pump

    def run_call(self, device: TlsDeviceFactory) -> Any:
        """A whole call: connect, run until both sides are quiet; the TlsCall."""
        call, pump = self.connect(device.buildProtocol(None))
        for _ in range(20):
            pump.flush()
            self.clock.advance(0.01)
        return call

    def outcome(self, call: Any) -> tuple[str, str]:
        record = call.call
        return str(record.outcome), record.reason or ""


class PinnedIdentityTests(TlsCase):
    """A device known by the fingerprint of its (self-signed) certificate."""

    def test_pinned_device_runs_its_chain_and_ends_ok(self) -> None:
        edge = issue("edge")
        manager = self.configure(f'[{{name: edge, certificates: ["{edge.fingerprint}"]}}]')
        call = self.run_call(self.device(edge))
        self.assertEqual(self.outcome(call)[0], "ok")
        self.assertEqual(call.call.device.name, "edge")
        self.assertEqual(call.call.transport, "tls")
        self.assertEqual(manager.counts["ok"], 1)
        saved = list((self.tmp / "results" / "edge").glob("*get*"))
        self.assertEqual(len(saved), 1)
        self.assertIn(b"<data", saved[0].read_bytes())

    def test_fingerprint_forms_openssl_prints_are_all_accepted(self) -> None:
        edge = issue("edge")
        lower = "sha256 Fingerprint=" + edge.fingerprint.lower()
        self.configure(f'[{{name: edge, certificates: ["{lower}"]}}]')
        self.assertEqual(self.outcome(self.run_call(self.device(edge)))[0], "ok")

    def test_rotation_two_certificates_one_device(self) -> None:
        old, new = issue("edge"), issue("edge")
        self.configure(f'[{{name: edge, certificates: ["{old.fingerprint}", "{new.fingerprint}"]}}]')
        for cert in (old, new):
            call = self.run_call(self.device(cert))
            self.assertEqual(self.outcome(call)[0], "ok")
            self.assertEqual(call.call.device.name, "edge")

    def test_expired_pinned_certificate_is_refused_with_its_date(self) -> None:
        edge = issue("edge", not_before=NOW - 30 * DAY, not_after=NOW - DAY)
        self.configure(f'[{{name: edge, certificates: ["{edge.fingerprint}"]}}]')
        outcome, reason = self.outcome(self.run_call(self.device(edge)))
        self.assertEqual(outcome, "certificate-refused")
        self.assertIn("certificate not trusted: expired on", reason)
        self.assertFalse(list((self.tmp / "results").glob("**/*.xml")))

    def test_not_yet_valid_certificate_is_refused(self) -> None:
        edge = issue("edge", not_before=NOW + DAY, not_after=NOW + 30 * DAY)
        self.configure(f'[{{name: edge, certificates: ["{edge.fingerprint}"]}}]')
        outcome, reason = self.outcome(self.run_call(self.device(edge)))
        self.assertEqual(outcome, "certificate-refused")
        self.assertIn("not yet valid", reason)

    def test_unknown_certificate_is_refused_before_anything_is_sent(self) -> None:
        self.configure(f'[{{name: edge, certificates: ["{issue("edge").fingerprint}"]}}]')
        stranger = self.device(issue("stranger"))
        protocol = stranger.buildProtocol(None)
        call, pump = self.connect(protocol)
        for _ in range(20):
            pump.flush()
            self.clock.advance(0.01)
        outcome, reason = self.outcome(call)
        self.assertEqual(outcome, "unknown-certificate")
        self.assertIn("(self-signed, not pinned)", reason)
        # The device's NETCONF server never saw our hello: nothing was sent.
        self.assertFalse(protocol.authenticated)

    def test_the_device_refusing_our_certificate_is_named(self) -> None:
        edge = issue("edge")
        self.configure(f'[{{name: edge, certificates: ["{edge.fingerprint}"]}}]')
        picky = self.device(edge, pinned=frozenset([issue("someone-else").fingerprint]))
        outcome, reason = self.outcome(self.run_call(picky))
        self.assertEqual(outcome, "auth-failed")
        self.assertIn("the device refused our certificate (TLS alert received:", reason)


class CaIdentityTests(TlsCase):
    """Devices whose certificates an operator CA issues, known by tls_names."""

    def setUp(self) -> None:
        super().setUp()
        self.root = issue("Operator Root CA", ca=True)
        self.issuing = issue("Operator Issuing CA", issuer=self.root, ca=True)
        self.root_path = self.tmp / "root.pem"
        self.root_path.write_bytes(self.root.pem)

    def ca_device(self, name: str, names: tuple[str, ...], **kw: Any) -> Issued:
        issued = issue(name, issuer=self.issuing, names=names, **kw)
        issued.chain = self.issuing.pem  # the device sends its intermediate
        return issued

    def test_ca_issued_certificate_identifies_by_name_through_the_intermediate_it_sends(self) -> None:
        self.configure('[{name: ru-1, tls_names: ["ru-1.example.net"]}]', extra=f"tls_trusted_ca: {self.root_path}")
        call = self.run_call(self.device(self.ca_device("ru-1", ("ru-1.example.net",))))
        self.assertEqual(self.outcome(call)[0], "ok")
        self.assertEqual(call.call.device.name, "ru-1")

    def test_trusting_only_the_intermediate_is_enough(self) -> None:
        issuing_only = self.tmp / "issuing.pem"
        issuing_only.write_bytes(self.issuing.pem)
        self.configure('[{name: ru-1, tls_names: ["192.0.2.7"]}]', extra=f"tls_trusted_ca: {issuing_only}")
        leaf = issue("ru-1", issuer=self.issuing, names=("192.0.2.7",))  # no chain sent at all
        self.assertEqual(self.outcome(self.run_call(self.device(leaf)))[0], "ok")

    def test_certificate_from_an_unknown_ca_is_not_trusted(self) -> None:
        other_ca = issue("Someone Else's CA", ca=True)
        self.configure('[{name: ru-1, tls_names: ["ru-1.example.net"]}]', extra=f"tls_trusted_ca: {self.root_path}")
        outcome, reason = self.outcome(self.run_call(self.device(issue("ru-1", issuer=other_ca, names=("ru-1.example.net",)))))
        self.assertEqual(outcome, "certificate-refused")
        self.assertIn("certificate not trusted: issued by a CA not in tls_trusted_ca", reason)

    def test_self_signed_certificate_is_not_trusted_with_a_ca(self) -> None:
        self.configure('[{name: ru-1, tls_names: ["ru-1.example.net"]}]', extra=f"tls_trusted_ca: {self.root_path}")
        outcome, reason = self.outcome(self.run_call(self.device(issue("ru-1", names=("ru-1.example.net",)))))
        self.assertEqual(outcome, "certificate-refused")
        self.assertIn("self-signed, and not issued by tls_trusted_ca", reason)

    def test_expired_ca_issued_certificate_names_the_date(self) -> None:
        self.configure('[{name: ru-1, tls_names: ["ru-1.example.net"]}]', extra=f"tls_trusted_ca: {self.root_path}")
        expired = self.ca_device("ru-1", ("ru-1.example.net",), not_before=NOW - 9 * DAY, not_after=NOW - DAY)
        outcome, reason = self.outcome(self.run_call(self.device(expired)))
        self.assertEqual(outcome, "certificate-refused")
        self.assertIn("expired on", reason)

    def test_pinned_device_with_tls_names_needs_the_name(self) -> None:
        edge = issue("edge", names=("wrong.example.net",))
        self.configure(f'[{{name: edge, certificates: ["{edge.fingerprint}"], tls_names: ["edge.example.net"]}}]',
                       extra=f"tls_trusted_ca: {self.root_path}")
        outcome, reason = self.outcome(self.run_call(self.device(edge)))
        self.assertEqual(outcome, "certificate-refused")
        self.assertIn("name mismatch", reason)
        self.assertIn("wrong.example.net", reason)

    def test_trusted_certificate_naming_no_device_is_quarantined(self) -> None:
        manager = self.configure('[{name: ru-1, tls_names: ["ru-1.example.net"]}]',
                                 extra=f"tls_trusted_ca: {self.root_path}", unknown="quarantine")
        stray = self.ca_device("ru-9", ("ru-9.example.net",))
        outcome, _ = self.outcome(self.run_call(self.device(stray)))
        self.assertEqual(outcome, "unknown-certificate")
        self.assertIn(stray.fingerprint, manager.registry.pending)


class QuarantineTests(TlsCase):
    """unknown_devices: quarantine records an unknown certificate; approval makes it a device."""

    def test_quarantined_then_approved_then_served(self) -> None:
        manager = self.configure("[]", unknown="quarantine")
        newcomer = issue("ru-new", names=("ru-new.example.net",))
        outcome, reason = self.outcome(self.run_call(self.device(newcomer)))
        self.assertEqual(outcome, "unknown-certificate")
        self.assertIn("quarantined", reason)
        pending = manager.registry.pending[newcomer.fingerprint]
        self.assertIn("CN=ru-new", pending.certificate or "")
        self.assertIn("not_after", pending.certificate or "")
        device = manager.registry.approve(newcomer.fingerprint.lower(), "ru-new")
        self.assertEqual(device.certificates, frozenset([newcomer.fingerprint]))
        self.assertNotIn(newcomer.fingerprint, manager.registry.pending)
        call = self.run_call(self.device(newcomer))
        self.assertEqual(self.outcome(call)[0], "ok")
        self.assertEqual(call.call.device.name, "ru-new")


class NotTlsTests(TlsCase):
    """What arrives on the TLS port that is not a TLS server, each named."""

    def raw(self, data: bytes) -> tuple[str, str]:
        self.configure(f'[{{name: edge, certificates: ["{issue("edge").fingerprint}"]}}]')

        class Sender(Protocol):
            def dataReceived(self, _: bytes) -> None:
                assert self.transport is not None
                self.transport.write(data)

        call, pump = self.connect(Sender())
        for _ in range(10):
            pump.flush()
            self.clock.advance(0.01)
        return self.outcome(call)

    def test_ssh_banner_on_the_tls_port(self) -> None:
        outcome, reason = self.raw(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        self.assertEqual(outcome, "handshake-failed")
        self.assertIn("not TLS: the device sent an SSH banner", reason)

    def test_garbage_instead_of_a_server_hello(self) -> None:
        outcome, reason = self.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
        self.assertEqual(outcome, "handshake-failed")
        self.assertIn("TLS handshake failed:", reason)

    def test_silent_device_times_out_in_the_handshake(self) -> None:
        self.configure(f'[{{name: edge, certificates: ["{issue("edge").fingerprint}"]}}]')
        call, pump = self.connect(Protocol())
        pump.flush()
        self.clock.advance(self.config.ssh.handshake_timeout + 1)
        pump.flush()
        outcome, reason = self.outcome(call)
        self.assertEqual(outcome, "timeout")
        self.assertIn("stuck in TLS handshake", reason)


class ProbeTests(TlsCase):
    """Persistent TLS sessions: the NETCONF probe keeps them checked."""

    def test_probe_answered_keeps_the_session_and_silence_drops_it(self) -> None:
        edge = issue("edge")
        manager = self.configure(
            f'[{{name: edge, certificates: ["{edge.fingerprint}"], mode: persistent}}]',
            extra="tls: {probe_interval: 10, probe_max_missed: 2}",
        )
        call, pump = self.connect(self.device(edge).buildProtocol(None))
        for _ in range(20):
            pump.flush()
            self.clock.advance(0.01)
        self.assertIn("edge", manager.sessions)
        probe = call.keepalive
        self.assertIsNotNone(probe)
        for _ in range(3):
            self.clock.advance(10)
            pump.flush()
        self.assertEqual(probe.sent, 3)
        self.assertEqual(probe.missed, 0)
        # The device goes quiet: the pump stops, so nothing reaches us any more.
        # (One second at a time: task.Clock runs what a long advance makes due
        # at its end time, so a probe sent then would time out late.)
        for _ in range(40):
            self.clock.advance(1)
        outcome, reason = self.outcome(call)
        self.assertEqual(outcome, "keepalive-timeout")
        self.assertIn("no answer to 2 NETCONF keepalive probes", reason)


class LingeringCloseTests(TlsCase):
    """A device that answers close-session but never closes its side."""

    def test_a_closing_connection_is_aborted_after_five_seconds(self) -> None:
        edge = issue("edge")
        self.configure(f'[{{name: edge, certificates: ["{edge.fingerprint}"], mode: persistent}}]')
        call, pump = self.connect(self.device(edge).buildProtocol(None))
        for _ in range(20):
            pump.flush()
            self.clock.advance(0.01)
        self.assertIn("edge", self.manager.sessions)

        class Lingering:
            """Stands for the TLS transport once our close_notify went unanswered."""

            disconnecting = connected = True
            aborted = lost = 0

            def loseConnection(self) -> None:
                self.lost += 1

            def abortConnection(self) -> None:
                self.aborted += 1

        lingering = Lingering()
        call.transport = lingering
        call.session._disconnect("closed by manager")  # the session's own close, as after close-session
        self.clock.advance(4.9)
        self.assertEqual(lingering.aborted, 0)
        self.clock.advance(0.2)
        self.assertEqual(lingering.aborted, 1, "the abort is armed although the transport was already closing")
        self.assertEqual(lingering.lost, 0, "no second close_notify")
