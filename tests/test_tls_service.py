"""
TLS call home end to end on loopback: the real service with ``listen_tls``
and simulated devices calling over TLS in their own processes.
"""

from __future__ import annotations

from pathlib import Path

from tests.service_harness import RunningService, free_port, start_device, wait_for
from tests.tls_certs import issue


class TlsServiceTests(RunningService):
    """The service serving TLS calls: identity by pinned certificate, the chain, the result."""

    def tls_setup(self) -> None:
        self.certs = self.tmp / "certs"
        self.manager_cert = issue("callhome-manager")
        self.manager_pem, self.manager_key_pem = self.manager_cert.write(self.certs, "manager")
        self.device_cert = issue("edge", names=("edge.example.net",))
        self.device_pem, self.device_key = self.device_cert.write(self.certs, "edge")

    def start_tls(self, devices: str, extra: str = "", chains: str = "{main: [{get: {}}]}") -> None:
        self.tls_port = free_port()
        self.start(devices, chains=chains, extra=f'listen_tls: ["tcp:{self.tls_port}:interface=127.0.0.1"]\n{extra}')

    def tls_call(self, cert: Path, key: Path, *extra: str) -> object:
        device = start_device(
            "--tls", "--manager", f"127.0.0.1:{self.tls_port}", "--certificate", str(cert), "--key", str(key),
            "--manager-fingerprint", self.manager_cert.fingerprint, "--quiet", "--retries", "0", *extra,
        )
        self.devices.append(device)
        return device

    async def test_a_pinned_device_is_served_over_tls(self) -> None:
        self.tls_setup()
        identity = f"tls_certificate: {self.manager_pem}, tls_private_key: {self.manager_key_pem}"
        self.start_tls(f'[{{name: edge, certificates: ["{self.device_cert.fingerprint}"], {identity}}}]')
        device = self.tls_call(self.device_pem, self.device_key)
        self.assertEqual(await device.ended, 0, device.output)
        manager = self.service.manager
        await wait_for(lambda: manager.counts["ok"] == 1, what="the TLS call to end ok")
        saved = list((self.tmp / "results" / "edge").glob("*get*"))
        self.assertEqual(len(saved), 1)
        self.assertIn(b"<data", saved[0].read_bytes())
