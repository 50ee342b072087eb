"""
The whole service on loopback with the real reactor, driven by
``callhome-device`` running as a separate process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lxml import etree
from twisted.internet import reactor, task, utils
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from callhome import config as config_module
from callhome import fingerprints
from callhome.service import CallHomeService
from callhome.simulator.ssh_server import load_or_create_host_key
from tests.helpers import new_key, write_key

REPO = Path(__file__).resolve().parent.parent


def run_device(*args: str):
    """Run callhome-device (this checkout's) in its own process."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return utils.getProcessOutputAndValue(
        sys.executable, ["-m", "callhome.simulator.cli", *args], env=env, reactor=reactor
    )


class ServiceTestCase(TestCase):
    """Runs the service on loopback for a test."""

    timeout = 120

    def start_service(self, tmp: Path, devices_yaml: str, chain: str = "[{get: {}}]", extra: str = "") -> CallHomeService:
        manager_key = write_key(tmp / "keys", "manager", new_key())
        config = config_module.loads(
            f"""
listen: ["tcp:0:interface=127.0.0.1"]
results_dir: {tmp / 'results'}
store: {{database: {tmp / 'callhome.sqlite'}}}
api: {{listen: "tcp:0:interface=127.0.0.1"}}
defaults: {{username: admin, private_key: {manager_key}, chain: main}}
{devices_yaml}
chains: {{main: {chain}}}
{extra}
"""
        )
        service = CallHomeService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.manager_pub = f"{manager_key}.pub"
        return service


class LoopbackTests(ServiceTestCase):
    """Many simulated devices calling a running service at once."""

    async def test_hundred_devices_at_once(self):
        """
        100 devices, each with its own host key, call at the same moment; every
        one is identified, logged in, and its <get> reply saved.
        """
        tmp = Path(self.mktemp())
        count = 100
        paths = [tmp / "devices" / f"device-{i:04d}_ed25519" for i in range(count)]
        lines = ["devices:"]
        for i, path in enumerate(paths):
            key = load_or_create_host_key(path)
            lines.append(f"  - {{name: sim-{i:04d}, host_keys: [\"{fingerprints.of_key(key)}\"]}}")
        service = self.start_service(tmp, "\n".join(lines))
        port = service.addresses()[0].port
        out, err, code = await run_device(
            "--manager", f"127.0.0.1:{port}", "--host-key", str(tmp / "devices" / "base"),
            "--devices", str(count), "--count", str(count), "--concurrency", str(count),
            "--authorized-key", self.manager_pub, "--quiet",
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace")[-2000:])
        self.assertIn(b"100 calls served, 0 failed", out)
        self.assertEqual(service.manager.counts["ok"], count, dict(service.manager.counts))
        for i in range(count):
            (saved,) = (tmp / "results" / f"sim-{i:04d}").glob("*-get.xml")
            root = etree.parse(str(saved)).getroot()
            self.assertEqual(root.tag, "{urn:ietf:params:xml:ns:netconf:base:1.0}rpc-reply")

    async def test_unknown_device_does_not_disturb_a_known_one(self):
        """
        An unknown device calling alongside a known one is refused, and the
        known one is served all the same.
        """
        tmp = Path(self.mktemp())
        known = load_or_create_host_key(tmp / "known")
        load_or_create_host_key(tmp / "stranger")
        service = self.start_service(tmp, f"devices: [{{name: known, host_keys: [\"{fingerprints.of_key(known)}\"]}}]")
        port = service.addresses()[0].port
        common = ["--manager", f"127.0.0.1:{port}", "--authorized-key", self.manager_pub, "--quiet"]
        from twisted.internet import defer

        results = await defer.gatherResults([
            run_device("--host-key", str(tmp / "stranger"), *common),
            run_device("--host-key", str(tmp / "known"), *common),
        ])
        (_, _, stranger_code), (_, _, known_code) = results
        self.assertEqual(stranger_code, 1)
        self.assertEqual(known_code, 0)
        self.assertEqual(service.manager.counts["unknown-host-key"], 1)
        self.assertEqual(service.manager.counts["ok"], 1)
        self.assertFalse((tmp / "results" / "stranger").exists())


class Silent(Protocol):
    """A client that connects and never says anything."""

    def connectionMade(self) -> None:
        self.factory.connected.append(self)

    def connectionLost(self, reason=None) -> None:
        self.factory.lost.append(self)


class AdmissionLoopbackTests(ServiceTestCase):
    """Abuse from one address does not stop a device calling from another."""

    def setUp(self) -> None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4096 <= hard or (hard == resource.RLIM_INFINITY and soft < 4096):
            resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))

    def known_device(self, tmp: Path) -> tuple[str, str]:
        """Two known devices, good and bad; the good one's key path and the devices YAML."""
        good = load_or_create_host_key(tmp / "good")
        bad = load_or_create_host_key(tmp / "bad")
        return str(tmp / "good"), (
            f"devices: [{{name: good, host_keys: [\"{fingerprints.of_key(good)}\"]}},"
            f" {{name: bad, host_keys: [\"{fingerprints.of_key(bad)}\"]}}]"
        )

    async def test_silent_flood_from_one_address(self):
        """
        500 connections from 127.0.0.1 that never speak: all but the
        per-source allowance are closed at once, and a device calling from
        127.0.0.2 at the same time is served.
        """
        from twisted.internet.protocol import ClientFactory

        tmp = Path(self.mktemp())
        key_path, devices = self.known_device(tmp)
        service = self.start_service(tmp, devices, extra="admission: {max_pending_per_source: 20, max_pending: 100}")
        port = service.addresses()[0].port
        factory = ClientFactory.forProtocol(Silent)
        factory.connected, factory.lost = [], []
        for _ in range(500):
            reactor.connectTCP("127.0.0.1", port, factory)
        deadline = reactor.seconds() + 20
        while len(factory.lost) < 480 and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertGreaterEqual(len(factory.lost), 480)
        self.assertEqual(service.manager.admission.pending, 20)
        out, err, code = await run_device(
            "--manager", f"127.0.0.1:{port}", "--host-key", key_path, "--source-address", "127.0.0.2",
            "--authorized-key", self.manager_pub, "--quiet", "--retries", "0",
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace")[-2000:])
        self.assertEqual(service.manager.counts["ok"], 1)
        self.assertGreaterEqual(service.manager.admission.refused["too-many-pending-from-source"], 480)
        for protocol in factory.connected:
            protocol.transport.loseConnection()
        await task.deferLater(reactor, 0.1, lambda: None)

    async def test_failed_logins_block_the_address_not_others(self):
        """
        50 calls with a key the device refuses, from 127.0.0.1: the address
        is blocked after failed_auth_limit failures; a correct device from
        127.0.0.2 is served meanwhile.
        """
        tmp = Path(self.mktemp())
        key_path, devices = self.known_device(tmp)
        wrong = write_key(tmp / "wrong", "wrong", new_key())
        service = self.start_service(tmp, devices, extra="admission: {failed_auth_limit: 10, failed_auth_window: 60, block_seconds: 600}")
        port = service.addresses()[0].port
        bad = run_device(
            "--manager", f"127.0.0.1:{port}", "--host-key", str(tmp / "bad"), "--source-address", "127.0.0.1",
            "--authorized-key", f"{wrong}.pub", "--count", "50", "--concurrency", "1", "--quiet", "--retries", "0",
        )
        good = run_device(
            "--manager", f"127.0.0.1:{port}", "--host-key", key_path, "--source-address", "127.0.0.2",
            "--authorized-key", self.manager_pub, "--quiet", "--retries", "0",
        )
        from twisted.internet import defer

        (bad_out, _, bad_code), (good_out, good_err, good_code) = await defer.gatherResults([bad, good])
        self.assertEqual(good_code, 0, (good_out + good_err).decode(errors="replace"))
        self.assertEqual(bad_code, 1)
        manager = service.manager
        self.assertIn("127.0.0.1", manager.admission.blocked())
        self.assertNotIn("127.0.0.2", manager.admission.blocked())
        self.assertGreaterEqual(manager.counts["auth-failed"], 10)
        self.assertGreater(manager.admission.refused["blocked"], 0)
        self.assertEqual(manager.counts["auth-failed"] + manager.admission.refused["blocked"], 50)


class HAProxyTests(ServiceTestCase):
    """A haproxy: listener admits by the device's address from the PROXY header."""

    async def test_admission_by_proxied_source(self):
        """
        Two silent calls proxied for 10.9.9.9 and one for 10.9.9.8, with one
        pending call allowed per source: the second from .9 is refused, the
        others are held, and the counts are by the proxied addresses, not
        the balancer's.
        """
        from twisted.internet.protocol import ClientFactory

        tmp = Path(self.mktemp())
        key = load_or_create_host_key(tmp / "good")
        service = self.start_service(
            tmp, f"devices: [{{name: good, host_keys: [\"{fingerprints.of_key(key)}\"]}}]",
            extra="admission: {max_pending_per_source: 1}",
        )
        # start_service listened on plain tcp; add a haproxy: listener.
        from twisted.internet.endpoints import serverFromString

        from callhome.call.listener import ProxiedCallFactory

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(ProxiedCallFactory(service.manager))
        self.addCleanup(port.stopListening)

        class Proxied(Protocol):
            def connectionMade(self) -> None:
                self.factory.opened.append(self)
                self.transport.write(f"PROXY TCP4 {self.factory.source} 127.0.0.1 40000 4334\r\n".encode())

            def connectionLost(self, reason=None) -> None:
                self.factory.lost.append(self)

        factories = []
        for source in ("10.9.9.9", "10.9.9.9", "10.9.9.8"):
            factory = ClientFactory.forProtocol(Proxied)
            factory.source, factory.opened, factory.lost = source, [], []
            factories.append(factory)
            reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
            await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual([len(f.lost) for f in factories], [0, 1, 0])
        self.assertEqual(service.manager.admission.pending, 2)
        self.assertEqual(service.manager.admission._pending_by_source, {"10.9.9.9": 1, "10.9.9.8": 1})
        peers = sorted(c.call.peer for c in service.manager.active)
        self.assertEqual(peers, ["10.9.9.8:40000", "10.9.9.9:40000"])
        for f in factories:
            for p in f.opened:
                p.transport.loseConnection()
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(service.manager.admission.pending, 0)

        class Garbage(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"GET / HTTP/1.0\r\n\r\n")

            def connectionLost(self, reason=None) -> None:
                self.factory.lost.append(self)

        garbage = ClientFactory.forProtocol(Garbage)
        garbage.lost = []
        reactor.connectTCP("127.0.0.1", port.getHost().port, garbage)
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(garbage.lost), 1, "no PROXY header: closed")
        self.assertEqual(service.manager.admission.pending, 0)

    async def test_call_through_a_proxy(self):
        """A whole call through a PROXY-header relay is served, logged with the device's address."""
        from twisted.internet.endpoints import serverFromString
        from twisted.protocols import portforward

        from callhome.call.listener import ProxiedCallFactory

        tmp = Path(self.mktemp())
        key = load_or_create_host_key(tmp / "good")
        service = self.start_service(tmp, f"devices: [{{name: good, host_keys: [\"{fingerprints.of_key(key)}\"]}}]")
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(ProxiedCallFactory(service.manager))
        self.addCleanup(port.stopListening)

        class HeaderClient(portforward.ProxyClient):
            def connectionMade(self) -> None:
                self.transport.write(b"PROXY TCP4 192.0.2.44 127.0.0.1 50000 4334\r\n")
                super().connectionMade()

        class HeaderClientFactory(portforward.ProxyClientFactory):
            protocol = HeaderClient

        class Relay(portforward.ProxyServer):
            clientProtocolFactory = HeaderClientFactory

        relay_factory = portforward.ProxyFactory("127.0.0.1", port.getHost().port)
        relay_factory.protocol = Relay
        relay = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(relay_factory)
        self.addCleanup(relay.stopListening)
        ended = []
        call_ended = service.manager.call_ended
        service.manager.call_ended = lambda call: (call_ended(call), ended.append(call.call))
        out, err, code = await run_device(
            "--manager", f"127.0.0.1:{relay.getHost().port}", "--host-key", str(tmp / "good"),
            "--authorized-key", self.manager_pub, "--quiet", "--retries", "0",
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
        self.assertEqual(ended[0].outcome, "ok", ended[0].reason)
        self.assertEqual(ended[0].peer, "192.0.2.44:50000")
