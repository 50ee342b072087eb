"""
TLS call home end to end on loopback: the real service with ``listen_tls``
and simulated devices calling over TLS in their own processes.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor, task

from tests.service_harness import RunningService, free_port, start_device, wait_for
from tests.tls_certs import issue


class TlsServiceTests(RunningService):
    """The service serving TLS calls: identity by pinned certificate, the chain, the result."""

    def tls_setup(self) -> None:
        self.certs = self.tmp / "certs"
        self.manager_cert = issue("callhome-manager")
        self.manager_pem, self.manager_key_pem = self.manager_cert.write(self.certs, "manager")
        self.device_cert = issue("edge", names=("edge.example.net",))
        self.device_pem, self.device_key_pem = self.device_cert.write(self.certs, "edge")

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
        device = self.tls_call(self.device_pem, self.device_key_pem)
        self.assertEqual(await device.ended, 0, device.output)
        manager = self.service.manager
        await wait_for(lambda: manager.counts["ok"] == 1, what="the TLS call to end ok")
        saved = list((self.tmp / "results" / "edge").glob("*get*"))
        self.assertEqual(len(saved), 1)
        self.assertIn(b"<data", saved[0].read_bytes())

    async def test_one_device_over_both_transports_and_the_api_on_its_tls_session(self) -> None:
        """A device known by a host key and a certificate is one device: TLS replaces its SSH session; the API reaches it."""
        self.tls_setup()
        key_path, host_fp = self.device_key("edge")
        identity = f"tls_certificate: {self.manager_pem}, tls_private_key: {self.manager_key_pem}"
        self.start_tls(
            f'[{{name: edge, host_keys: ["{host_fp}"], certificates: ["{self.device_cert.fingerprint}"], '
            f'mode: persistent, {identity}}}]',
        )
        manager = self.service.manager
        ssh_device = self.call(key_path, "--timeout", "60")
        await self.session_of("edge")
        self.assertEqual(manager.sessions["edge"].call.transport, "ssh")
        tls_device = self.tls_call(self.device_pem, self.device_key_pem, "--timeout", "60")
        await wait_for(lambda: "edge" in manager.sessions and manager.sessions["edge"].call.transport == "tls"
                       and manager.sessions["edge"].call.steps, what="the TLS session to replace the SSH one")
        self.assertEqual(await ssh_device.ended, 0)
        self.assertEqual(manager.counts["replaced"], 1)
        sessions = (await self.get("/sessions")).json()["sessions"]
        self.assertEqual([(s["device"], s["transport"]) for s in sessions], [("edge", "tls")])
        reply = await self.post("/devices/edge/rpc", b'<get-config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                b"<source><running/></source></get-config>", content_type="application/xml")
        self.assertEqual(reply.code, 200, reply.body)
        self.assertIn(b"<data", reply.body)
        metrics = (await self.get("/metrics")).body.decode()
        self.assertIn('callhome_calls_finished_total{outcome="replaced",transport="ssh"} 1.0', metrics)
        self.assertIn('callhome_calls_accepted_total{transport="tls"} 1.0', metrics)
        disconnected = await self.post("/devices/edge/disconnect")
        self.assertEqual(disconnected.code, 200, disconnected.body)
        self.assertEqual(await tls_device.ended, 0, tls_device.output)

    async def test_tls_calls_with_workers(self) -> None:
        """workers: 2: the worker inherits the TLS listener too and serves the calls; the main process's metrics count them."""
        self.tls_setup()
        identity = f"tls_certificate: {self.manager_pem}, tls_private_key: {self.manager_key_pem}"
        self.start_tls(f'[{{name: edge, certificates: ["{self.device_cert.fingerprint}"], {identity}}}]', extra="workers: 2\n")
        pool = self.service.pool
        assert pool is not None
        await wait_for(lambda: 1 in pool.workers and pool.workers[1].pid is not None, what="worker 1 ready")
        # The main process stops accepting: every call goes to the worker.
        for listener in self.service.listeners.values():
            listener.port.stopReading()
        for _ in range(6):
            device = self.tls_call(self.device_pem, self.device_key_pem)
            self.assertEqual(await device.ended, 0, device.output)

        async def accepted() -> str:
            return (await self.get("/metrics")).body.decode()

        for _ in range(100):
            text = await accepted()
            if 'callhome_calls_finished_total{outcome="ok",transport="tls"} 6.0' in text:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        self.assertIn('callhome_calls_finished_total{outcome="ok",transport="tls"} 6.0', text)
