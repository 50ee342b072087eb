"""
Integration: real devices (OpenSSH ``sshd -i`` + Debian's ``netconfd``) call
the manager home over TCP, and the manager does its job on them.

Everything the unit tests script by hand is real here: OpenSSH 9.2's key
exchange, host keys, authentication policy (no SHA-1 RSA signatures) and
netconfd's NETCONF framing and replies.  The device side is driven by
:mod:`realpeer`; the manager is the whole service, listening on loopback.

Skipped only when :func:`realpeer.available` gives a reason (packages
``openssh-server``, ``socat`` and ``netconfd`` missing, or not root).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
from pathlib import Path
from typing import Any, Callable

import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from lxml import etree
from twisted.conch.ssh import keys
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from callhome import config as callhome_config
from callhome.netconf import xml
from callhome.service import CallHomeService
from tests import realpeer

SKIP_REASON = realpeer.available()

NETCONF_NS = xml.NETCONF_NS
RPC_REPLY = f"{{{NETCONF_NS}}}rpc-reply"
DATA = f"{{{NETCONF_NS}}}data"

#: How long a call may take, end to end, before the test gives up.
CALL_DEADLINE = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manager_key(directory: Path, kind: str = "ed25519") -> tuple[Path, str]:
    """
    Generate a manager private key for this run.

    @return: the private key file and its OpenSSH public-key line.
    """
    if kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(kind)
    key = keys.Key(private)
    path = directory / f"manager_{kind}"
    path.write_bytes(key.toString("openssh"))
    path.chmod(0o600)
    public = key.public().toString("openssh").decode("ascii") + f" callhome-test-{kind}"
    return path, public


def other_public_key() -> str:
    """An ed25519 public-key line nobody holds the private half of here."""
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    return key.public().toString("openssh").decode("ascii") + " someone-else"


def sha256_fingerprint(public_line: str) -> str:
    """``SHA256:<unpadded base64>`` of a public key, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def other_fingerprint() -> str:
    """The SHA256 fingerprint of a host key no device has."""
    return sha256_fingerprint(other_public_key())


#: seconds the tests' chains wait after the hello (netconfd's hello quirk).
PAUSE = 0.1


class NetconfdCallHomeTests(unittest.TestCase):
    """The manager against sshd + netconfd calling home on loopback."""

    if SKIP_REASON is not None:
        skip = SKIP_REASON

    timeout = 90

    def setUp(self) -> None:
        # mktemp() is relative to the working directory: trial's _trial_temp,
        # or the scratch directory the repository's conftest.py moves to.
        self.root = Path(os.path.abspath(self.mktemp()))
        self.root.mkdir(parents=True)
        self.key_path, self.key_public = manager_key(self.root)
        self.records: list[Any] = []
        self.sessions: list[Any] = []
        self.transports: list[Any] = []

    # --- helpers ------------------------------------------------------------------

    def make_device(
        self,
        authorized_keys: list[str] | None = None,
        host_key_type: str = "ed25519",
        input_delay: float = 0.0,
        name: str = "dev",
        sshd_options: list[str] | None = None,
    ) -> realpeer.NetconfdDevice:
        """A device that lets our key (or C{authorized_keys}) log in as root."""
        device = realpeer.NetconfdDevice(
            str(self.root / name),
            [self.key_public] if authorized_keys is None else authorized_keys,
            host_key_type=host_key_type,
            input_delay=input_delay,
            sshd_options=sshd_options,
        )
        self.addCleanup(device.stop)
        return device

    def start_manager(
        self,
        device: realpeer.NetconfdDevice,
        chain: list[dict[str, Any]] | None = None,
        host_keys: list[str] | None = None,
        private_key: Path | None = None,
        netconf: dict[str, Any] | None = None,
        pause: bool = True,
    ) -> CallHomeService:
        """
        Start the service for one device named C{netconfd}; return it.

        @param pause: begin the chain with a short sleep.  netconfd ignores
            an ``<rpc>`` it reads together with our hello (see
            L{test_manager_survives_the_hello_quirk}); the issue allows the
            tests this pause, and operators have the same workaround.
        """
        self.port = free_port()
        self.results = self.root / "results"
        document = {
            "listen": [f"tcp:{self.port}:interface=127.0.0.1"],
            "results_dir": str(self.results),
            "state_dir": str(self.root / "state"),
            "store": {"database": str(self.root / "callhome.sqlite")},
            "api": {"listen": "tcp:0:interface=127.0.0.1"},
            "defaults": {
                "username": device.username,
                "private_key": str(private_key or self.key_path),
                "chain": "test",
            },
            "devices": [
                {
                    "name": "netconfd",
                    "host_keys": host_keys or [device.host_key_fingerprint],
                }
            ],
            "chains": {"test": ([{"sleep": {"seconds": PAUSE}}] if pause else []) + (chain or [{"get": {}}])},
            # Short enough that a stuck call ends well inside the deadline.
            "netconf": {"hello_timeout": 10, "rpc_timeout": 10, **(netconf or {})},
            "ssh": {"handshake_timeout": 10},
        }
        config = callhome_config.loads(yaml.safe_dump(document), environ={})
        service = CallHomeService(config, reactor)
        manager = service.manager

        # Spies, not fakes: remember each finished call and each session.
        call_ended, session_ready = manager.call_ended, manager.session_ready

        def spy_call_ended(call: Any) -> None:
            call_ended(call)
            self.records.append(call.call)

        def spy_session_ready(call: Any, session: Any) -> None:
            self.sessions.append(session)
            self.transports.append(call)
            session_ready(call, session)

        manager.call_ended = spy_call_ended  # type: ignore[method-assign]
        manager.session_ready = spy_session_ready  # type: ignore[method-assign]

        service.startService()
        self.addCleanup(service.stopService)
        self.service = service
        return service

    def diagnostics(self, device: realpeer.NetconfdDevice) -> str:
        """Everything that helps explain a failed call."""
        socat = ""
        try:
            socat = (Path(device.workdir) / "socat.log").read_text(errors="replace")
        except FileNotFoundError:
            pass
        records = "\n".join(
            f"  {r.outcome}: state={r.state} reason={r.reason!r} fingerprint={r.fingerprint}"
            for r in self.records
        )
        sessions = "\n".join(
            f"  {s.framing}: session-id={s.session_id} received={s.bytes_received} bytes, "
            f"{s._framer.buffered()} buffered, close reason {s.close_reason!r}"
            for s in self.sessions
        )
        hint = ""
        if any("no reply to rpc 1 " in (r.reason or "") for r in self.records):
            hint = (
                "\nhint: netconfd did not answer the first <rpc>: the netconfd quirk "
                "that test_device_that_reads_our_hello_late reproduces"
            )
        return (
            f"{hint}\ncounts: {dict(self.service.manager.counts)}\ncalls:\n{records}"
            f"\nNETCONF sessions:\n{sessions}"
            f"\n--- sshd log ---\n{device.sshd_log()}"
            f"\n--- socat log ---\n{socat}"
            f"\n--- netconfd log (tail) ---\n{realpeer.netconfd_log()[-3000:]}"
        )

    @defer.inlineCallbacks
    def wait_until(self, predicate: Callable[[], bool], what: str, device: realpeer.NetconfdDevice):
        """Poll C{predicate} until it holds, failing after L{CALL_DEADLINE}."""
        deadline = reactor.seconds() + CALL_DEADLINE
        while not predicate():
            if reactor.seconds() > deadline:
                self.fail(f"timed out after {CALL_DEADLINE:g}s waiting for {what}{self.diagnostics(device)}")
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def call(self, device: realpeer.NetconfdDevice, expected_total: int = 1):
        """
        Have C{device} call home once; wait until the manager has counted
        C{expected_total} finished calls and the device's sshd has exited.

        @return: the L{CallRecord} of this call.
        """
        process = device.call_home(self.port)
        counts = self.service.manager.counts
        yield self.wait_until(lambda: sum(counts.values()) >= expected_total, "the call to finish", device)
        # sshd writes its last log lines as it exits; wait for them too.
        yield self.wait_until(lambda: process.poll() is not None, "sshd to exit", device)
        self.assertEqual(sum(counts.values()), expected_total, self.diagnostics(device))
        self.assertEqual(self.service.manager.active, set(), "a call is still open")
        return self.records[-1]

    def result_files(self, action: str) -> list[Path]:
        """The results saved for the device by C{action}, oldest first."""
        return sorted((self.results / "netconfd").glob(f"*-{action}.xml"))

    def assert_reply_with_data(self, path: Path, minimum_size: int = 0) -> etree._Element:
        """C{path} holds a NETCONF C{<rpc-reply>} with a C{<data>} element."""
        size = path.stat().st_size
        self.assertGreater(size, minimum_size, f"{path.name} is only {size} bytes")
        root = etree.parse(str(path)).getroot()
        self.assertEqual(root.tag, RPC_REPLY)
        self.assertIsNotNone(root.find(DATA), f"no <data> in {path.name}")
        return root

    def assert_ok(self, record: Any, device: realpeer.NetconfdDevice) -> None:
        self.assertEqual(record.outcome, "ok", self.diagnostics(device))
        self.assertEqual(self.service.manager.counts["ok"], 1, self.diagnostics(device))

    # --- the tests ----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_get_base_1_1(self):
        """
        The main path: a real device calls home, the manager identifies it,
        logs in, speaks chunked framing (base:1.1) with netconfd and saves
        the whole ``<get>`` reply (~27 KB of state) as an XML result.
        """
        device = self.make_device()
        self.start_manager(device, chain=[{"get": {}}])
        record = yield self.call(device)

        self.assert_ok(record, device)
        self.assertEqual(record.device.name, "netconfd")
        self.assertEqual(record.fingerprint, device.host_key_fingerprint)
        self.assertEqual([s.framing for s in self.sessions], ["base:1.1"])
        [saved] = self.result_files("get")
        self.assert_reply_with_data(saved, minimum_size=10_000)
        self.assertIn(b"<data", saved.read_bytes())

    @defer.inlineCallbacks
    def test_get_base_1_0(self):
        """
        Devices (and operators) that stay on base:1.0 end-of-message framing
        must work too: with base:1.1 not offered, netconfd falls back and the
        same large reply arrives intact across many SSH packets.
        """
        device = self.make_device()
        self.start_manager(device, chain=[{"get": {}}], netconf={"offer_base_1_1": False})
        record = yield self.call(device)

        self.assert_ok(record, device)
        self.assertEqual([s.framing for s in self.sessions], ["base:1.0"])
        [saved] = self.result_files("get")
        self.assert_reply_with_data(saved, minimum_size=10_000)
        self.assertIn(b"<data", saved.read_bytes())

    @defer.inlineCallbacks
    def cipher_call(self, sshd_options: list[str]) -> Any:
        """One ``<get>`` call of a device whose sshd has C{sshd_options}: the transport, once checked."""
        device = self.make_device(sshd_options=sshd_options)
        self.start_manager(device, chain=[{"get": {}}])
        record = yield self.call(device)
        self.assert_ok(record, device)
        [saved] = self.result_files("get")
        self.assert_reply_with_data(saved, minimum_size=10_000)
        [transport] = self.transports
        return transport.currentEncryptions

    @defer.inlineCallbacks
    def test_aes128_gcm_offered_first(self):
        """
        With OpenSSH's default offer, the call runs on AES-GCM
        (callhome.ssh.aead): our first choice, one C call per packet, no
        separate MAC.
        """
        ciphers = yield self.cipher_call([])
        self.assertEqual((ciphers.outCipType, ciphers.inCipType), (b"aes128-gcm@openssh.com",) * 2)
        self.assertEqual((ciphers.outMACType, ciphers.inMACType), (b"implicit",) * 2)

    @defer.inlineCallbacks
    def test_aes256_gcm(self):
        """A device that offers only aes256-gcm@openssh.com is served with it."""
        ciphers = yield self.cipher_call(["Ciphers aes256-gcm@openssh.com"])
        self.assertEqual((ciphers.outCipType, ciphers.inCipType), (b"aes256-gcm@openssh.com",) * 2)

    @defer.inlineCallbacks
    def test_ctr_and_hmac_for_devices_without_gcm(self):
        """A device without AES-GCM gets CTR with the HMAC it offers (sha2-512 here)."""
        ciphers = yield self.cipher_call(["Ciphers aes256-ctr", "MACs hmac-sha2-512"])
        self.assertEqual((ciphers.outCipType, ciphers.inCipType), (b"aes256-ctr",) * 2)
        self.assertEqual((ciphers.outMACType, ciphers.inMACType), (b"hmac-sha2-512",) * 2)

    @defer.inlineCallbacks
    def test_gcm_across_rekeys_the_device_starts(self):
        """
        sshd re-keys after every KiB (RekeyLimit; it re-keys at least every
        64 blocks): the session crosses several key exchanges, each with
        fresh AES-GCM keys and counters, and the reply arrives whole.
        """
        ciphers = yield self.cipher_call(["Ciphers aes128-gcm@openssh.com", "RekeyLimit 1K", "LogLevel DEBUG1"])
        self.assertEqual(ciphers.inCipType, b"aes128-gcm@openssh.com")
        # sshd logs each key exchange's choice at DEBUG1: the first and the re-keys.
        log = (self.root / "dev" / "sshd.log").read_text(errors="replace")
        exchanges = log.count("kex: server->client cipher: aes128-gcm@openssh.com")
        self.assertGreaterEqual(exchanges, 3, log[-3000:])

    @defer.inlineCallbacks
    def test_chain_get_then_get_config(self):
        """
        A chain runs its steps in order on one session: both the ``<get>``
        and the ``<get-config>`` of running are saved, each as its own file.
        """
        device = self.make_device()
        self.start_manager(device, chain=[{"get": {}}, {"get-config": {"source": "running"}}])
        record = yield self.call(device)

        self.assert_ok(record, device)
        steps = [s for s in record.steps if s.action != "sleep"]
        self.assertEqual([(s.action, s.ok) for s in steps], [("get", True), ("get-config", True)])
        [get] = self.result_files("get")
        [get_config] = self.result_files("get-config")
        self.assert_reply_with_data(get, minimum_size=10_000)
        self.assert_reply_with_data(get_config)
        self.assertEqual([s.result for s in steps], [get, get_config])
        # The file names are UTC stamps: the get was saved first.
        self.assertLess(get.name, get_config.name)
        self.assertEqual(self.service.manager.counts["ok"], 1)

    @defer.inlineCallbacks
    def test_wrong_manager_key_refused_then_right_key_served(self):
        """
        A device that does not know our key refuses the login: the call ends
        cleanly as auth-failed with a reason that says so, nothing is saved,
        and the service keeps serving: the next call, with the key
        installed, succeeds.
        """
        device = self.make_device(authorized_keys=[other_public_key()])
        self.start_manager(device, chain=[{"get-config": {"source": "running"}}])
        refused = yield self.call(device)

        self.assertEqual(refused.outcome, "auth-failed", self.diagnostics(device))
        self.assertIn("authentication", refused.reason or "")
        self.assertEqual(dict(self.service.manager.counts), {"auth-failed": 1})
        self.assertEqual(self.sessions, [])
        self.assertFalse(self.results.exists() and any(self.results.rglob("*")))
        self.assertIn("Failed publickey for", device.sshd_log())

        device.authorized_keys = [self.key_public]
        accepted = yield self.call(device, expected_total=2)

        self.assertEqual(accepted.outcome, "ok", self.diagnostics(device))
        self.assertEqual(dict(self.service.manager.counts), {"auth-failed": 1, "ok": 1})
        [saved] = self.result_files("get-config")
        self.assert_reply_with_data(saved)

    @defer.inlineCallbacks
    def test_unknown_host_key_sends_no_credentials(self):
        """
        A device is known only by its host key.  One whose key is not in the
        config is refused before authentication: the manager never sends a
        credential, which the device's own sshd log confirms.
        """
        device = self.make_device()
        self.start_manager(device, host_keys=[other_fingerprint()])
        record = yield self.call(device)

        self.assertEqual(record.outcome, "unknown-host-key", self.diagnostics(device))
        self.assertEqual(record.fingerprint, device.host_key_fingerprint)
        self.assertIsNone(record.device)
        self.assertEqual(dict(self.service.manager.counts), {"unknown-host-key": 1})
        self.assertEqual(self.sessions, [])
        self.assertFalse(self.results.exists())
        log = device.sshd_log()
        # Not vacuous: sshd did see the connection and logged it.
        self.assertIn("Connection from 127.0.0.1", log)
        self.assertIsNone(
            re.search(r"Accepted |Failed publickey|Postponed publickey", log),
            f"a credential reached the device:\n{log}",
        )

    @defer.inlineCallbacks
    def test_rsa_manager_key_uses_sha2_signatures(self):
        """
        OpenSSH 8.8+ refuses SHA-1 ``ssh-rsa`` signatures; an RSA manager key
        must still log in, because we sign with rsa-sha2-256/512.
        """
        key_path, key_public = manager_key(self.root, "rsa")
        device = self.make_device(authorized_keys=[key_public])
        self.start_manager(device, private_key=key_path, chain=[{"get-config": {"source": "running"}}])
        record = yield self.call(device)

        self.assertEqual(record.outcome, "ok", self.diagnostics(device))
        accepted = [line for line in device.sshd_log().splitlines() if "Accepted publickey" in line]
        self.assertEqual(len(accepted), 1, device.sshd_log())
        self.assertIn(f"RSA {sha256_fingerprint(key_public)}", accepted[0])
        [saved] = self.result_files("get-config")
        self.assert_reply_with_data(saved)

    @defer.inlineCallbacks
    def check_host_key(self, host_key_type: str, wire_type: str, by_public_line: bool):
        device = self.make_device(host_key_type=host_key_type)
        entry = device.host_key_public if by_public_line else device.host_key_fingerprint
        self.start_manager(device, host_keys=[entry], chain=[{"get-config": {"source": "running"}}])
        record = yield self.call(device)

        self.assertEqual(record.outcome, "ok", self.diagnostics(device))
        self.assertEqual(record.key_type, wire_type)
        self.assertEqual(record.fingerprint, device.host_key_fingerprint)
        [saved] = self.result_files("get-config")
        self.assert_reply_with_data(saved)

    def test_rsa_host_key_by_fingerprint(self):
        """
        A device whose only host key is RSA is identified by that key's
        SHA256 fingerprint (negotiated as rsa-sha2-*, blob type ssh-rsa).
        """
        return self.check_host_key("rsa", "ssh-rsa", by_public_line=False)

    def test_rsa_host_key_by_public_line(self):
        """An RSA host key listed as a whole OpenSSH public-key line matches."""
        return self.check_host_key("rsa", "ssh-rsa", by_public_line=True)

    def test_ecdsa_host_key_by_fingerprint(self):
        """A device with an ECDSA P-256 host key is identified by fingerprint."""
        return self.check_host_key("ecdsa", "ecdsa-sha2-nistp256", by_public_line=False)

    def test_ecdsa_host_key_by_public_line(self):
        """An ECDSA host key listed as a whole OpenSSH public-key line matches."""
        return self.check_host_key("ecdsa", "ecdsa-sha2-nistp256", by_public_line=True)

    @defer.inlineCallbacks
    def test_manager_survives_the_hello_quirk(self):
        """
        netconfd (yuma123) does not answer an ``<rpc>`` that it reads in the
        same read as the client's ``<hello>`` until more input arrives.  A
        device that reads our bytes 20 ms late hits it every time when the
        chain sends its first RPC at once: the manager must survive it, with
        the step failing on its RPC timeout and the session closed cleanly
        (no call left active).
        """
        device = self.make_device(input_delay=0.02)
        service = self.start_manager(
            device, chain=[{"get-config": {"source": "running"}}], netconf={"rpc_timeout": 1}, pause=False
        )
        record = yield self.call(device)

        self.assertEqual(record.outcome, "chain-failed", self.diagnostics(device))
        self.assertIn("RPCTimeout", record.reason)
        self.assertEqual(service.manager.active, set())
        self.assertEqual(self.result_files("get-config"), [])

    @defer.inlineCallbacks
    def test_sleep_first_works_around_late_reading_device(self):
        """
        The documented workaround for that quirk: a short ``sleep`` as the
        chain's first step lets the device read our hello on its own, and
        the same slow-reading device then answers.
        """
        device = self.make_device(input_delay=0.02)
        self.start_manager(
            device,
            chain=[{"sleep": {"seconds": 0.2}}, {"get-config": {"source": "running"}}],
            netconf={"rpc_timeout": 2},
            pause=False,
        )
        record = yield self.call(device)

        self.assertEqual(record.outcome, "ok", self.diagnostics(device))
        self.assertEqual([(s.action, s.ok) for s in record.steps], [("sleep", True), ("get-config", True)])
        [saved] = self.result_files("get-config")
        self.assert_reply_with_data(saved)
