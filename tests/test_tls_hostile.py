"""
The TLS hostile list, next to a good device: the real service on
loopback, hostile peers on the TLS port, and a simulated TLS device (its
own process, from 127.0.0.2) that must be served all the while.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from tests.service_harness import RunningService, free_port, start_device, wait_for
from tests.tls_certs import DAY, NOW, issue


class HostileTlsTests(RunningService):
    """Each hostile peer is refused with a specific reason; the good device is served."""

    timeout = 180

    def setUp(self) -> None:
        super().setUp()
        self.certs = self.tmp / "certs"
        self.manager_cert = issue("callhome-manager")
        manager_pem, manager_key = self.manager_cert.write(self.certs, "manager")
        self.good = issue("good")
        self.good_pem, self.good_key = self.good.write(self.certs, "good")
        self.tls_port = free_port()
        identity = f"tls_certificate: {manager_pem}, tls_private_key: {manager_key}"
        self.start(
            f'[{{name: good, certificates: ["{self.good.fingerprint}"], {identity}}}]',
            extra=f'listen_tls: ["tcp:{self.tls_port}:interface=127.0.0.1"]\n'
                  "ssh: {handshake_timeout: 4}\n"
                  "admission: {max_pending: 400, max_pending_per_source: 350}\n",
        )
        # Every call's reason, as its log line gives it.
        self.seen_reasons: list[str] = []
        manager = self.service.manager
        ended = manager.call_ended

        def note(call: Any) -> None:
            ended(call)
            self.seen_reasons.append(f"{call.call.outcome}: {call.call.reason}")

        manager.call_ended = note  # type: ignore[method-assign]

    def device(self, cert: Path, key: Path, *extra: str) -> Any:
        device = start_device(
            "--tls", "--manager", f"127.0.0.1:{self.tls_port}", "--certificate", str(cert), "--key", str(key),
            "--manager-fingerprint", self.manager_cert.fingerprint, "--quiet", "--retries", "0", "--timeout", "20", *extra,
        )
        self.devices.append(device)
        return device

    async def good_device_is_served(self) -> None:
        before = self.service.manager.counts["ok"]
        device = self.device(self.good_pem, self.good_key, "--source-address", "127.0.0.2")
        self.assertEqual(await device.ended, 0, device.output)
        await wait_for(lambda: self.service.manager.counts["ok"] == before + 1, what="the good device's call")

    async def ended_with(self, outcome: str, count: int = 1) -> None:
        await wait_for(lambda: self.service.manager.counts[outcome] >= count, timeout=30, what=f"{count} call(s) ending {outcome}")

    async def test_hostile_certificates_are_refused_and_the_good_device_served(self) -> None:
        # A chain of 100 certificates (the device sends them all).
        links = [issue("link-0", ca=True)]
        for i in range(1, 100):
            links.append(issue(f"link-{i}", issuer=links[-1], ca=True))
        long_chain = issue("long", issuer=links[-1])
        long_chain.chain = b"".join(l.pem for l in reversed(links))
        huge = issue("huge", padding=1_000_000)
        expired = issue("expired", not_before=NOW - 9 * DAY, not_after=NOW - DAY)
        for name, cert in (("long", long_chain), ("huge", huge), ("expired", expired)):
            cert_path, key_path = cert.write(self.certs, name)
            hostile = self.device(cert_path, key_path)
            await hostile.ended
        await wait_for(lambda: sum(self.service.manager.counts.values()) >= 3, what="three hostile calls to end")
        counts = self.service.manager.counts
        self.assertEqual(counts["ok"], 0, self.seen_reasons)
        joined = "\n".join(self.seen_reasons)
        self.assertEqual(len(self.seen_reasons), 3, joined)
        # The 100-certificate chain costs no more than an unknown leaf: not
        # pinned, refused (OpenSSL stops checking at depth 8).
        self.assertIn(f"unknown-certificate: unknown certificate {long_chain.fingerprint}", joined)
        # 1 MB is past OpenSSL's 100 KiB limit on a handshake message.
        self.assertIn("handshake-failed: TLS handshake failed: excessive message size", joined)
        self.assertIn("certificate-refused: certificate not trusted: expired on", joined)
        await self.good_device_is_served()

    async def test_ssh_banner_garbage_slow_drip_and_300_silent_connections(self) -> None:
        class Sender(Protocol):
            def __init__(self, data: bytes) -> None:
                self.data = data

            def connectionMade(self) -> None:
                self.transport.write(self.data)

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.tls_port)
        await connectProtocol(endpoint, Sender(b"SSH-2.0-OpenSSH_9.2p1\r\n"))
        await connectProtocol(endpoint, Sender(b"\x00\xff" * 3000))
        await self.ended_with("handshake-failed", 2)
        drip = await connectProtocol(endpoint, Protocol())
        loop = task.LoopingCall(lambda: drip.transport.write(b"\x16"))
        loop.clock = reactor
        loop.start(0.5)
        silent = []
        for _ in range(300):
            silent.append(await connectProtocol(endpoint, Protocol()))
        try:
            await self.good_device_is_served()
            # The slow drip and the silent ones end at the handshake deadline (4 s).
            await self.ended_with("timeout", 200)
        finally:
            loop.stop()
            for p in silent:
                p.transport.abortConnection()
            drip.transport.abortConnection()
        reasons = self.seen_reasons
        self.assertTrue(any("not TLS: the device sent an SSH banner" in r for r in reasons), reasons[:5])
        self.assertTrue(any("TLS handshake failed" in r for r in reasons), reasons[:5])
        self.assertTrue(any("stuck in TLS handshake" in r for r in reasons), reasons[:5])
