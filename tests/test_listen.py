"""
`callhome listen`: one call, one operation, the reply on stdout; against
the simulator and against OpenSSH + netconfd, each in its own process.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from lxml import etree
from twisted.internet import defer, reactor, task, utils
from twisted.trial.unittest import SkipTest, TestCase

from callhome import fingerprints
from callhome.simulator.ssh_server import load_or_create_host_key
from tests import realpeer
from tests.helpers import new_key, write_key

REPO = Path(__file__).resolve().parent.parent
NC = "{urn:ietf:params:xml:ns:netconf:base:1.0}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_module(module: str, *args: str):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return utils.getProcessOutputAndValue(sys.executable, ["-m", module, *args], env=env, reactor=reactor)


class ListenTests(TestCase):
    """The one-shot listener."""

    timeout = 60

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.key = write_key(self.tmp / "keys", "manager", new_key())
        self.device_key_path = self.tmp / "device"
        self.device_fp = fingerprints.of_key(load_or_create_host_key(self.device_key_path))
        self.port = free_port()

    def listen(self, *args: str):
        return run_module(
            "callhome.tools.cli", "listen", "--port", str(self.port), "--interface", "127.0.0.1",
            "--private-key", str(self.key), "--timeout", "20", *args,
        )

    async def call(self, listening, *device_args: str):
        """Start the listener, let the simulator call, return the listener's result."""
        await task.deferLater(reactor, 0.8, lambda: None)
        device = run_module(
            "callhome.simulator.cli", "--manager", f"127.0.0.1:{self.port}", "--host-key", str(self.device_key_path),
            "--authorized-key", f"{self.key}.pub", "--quiet", "--retries", "3", *device_args,
        )
        (out, err, code), _ = await defer.gatherResults([listening, device])
        return out, err.decode(), code

    async def test_get_prints_the_reply(self):
        """--get with the device's fingerprint: the reply on stdout, exit 0."""
        out, err, code = await self.call(self.listen("--host-key", self.device_fp, "--get"))
        self.assertEqual(code, 0, err)
        root = etree.fromstring(out)
        self.assertEqual(root.tag, NC + "rpc-reply")
        self.assertIn(b"<hostname>sim-device</hostname>", out)

    async def test_rpc_from_file(self):
        """--rpc FILE runs that operation; an rpc-error is a failure with its message."""
        rpc = self.tmp / "op.xml"
        rpc.write_text('<get-config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><source><running/></source></get-config>')
        out, err, code = await self.call(self.listen("--host-key", self.device_fp, "--rpc", str(rpc)))
        self.assertEqual(code, 0, err)
        self.assertIn(b"<data>", out)

    async def test_wrong_host_key_refused(self):
        """A device with another key is refused before login: exit 1, reason, no output."""
        other = fingerprints.of_key(new_key())
        out, err, code = await self.call(self.listen("--host-key", other, "--get"))
        self.assertEqual(code, 1)
        self.assertIn("unknown host key", err)
        self.assertEqual(out, b"")

    async def test_accept_any_prints_fingerprint(self):
        """--accept-any-host-key says which key it accepted."""
        out, err, code = await self.call(self.listen("--accept-any-host-key", "--get-config"))
        self.assertEqual(code, 0, err)
        self.assertIn(self.device_fp, err)

    async def test_nobody_calls(self):
        """No call within --timeout: exit 2 with a clear message."""
        out, err, code = await run_module(
            "callhome.tools.cli", "listen", "--port", str(self.port), "--interface", "127.0.0.1",
            "--private-key", str(self.key), "--host-key", self.device_fp, "--get", "--timeout", "1",
        )
        self.assertEqual(code, 2)
        self.assertIn(b"no device called within 1s", err)

    async def test_needs_a_host_key_choice(self):
        """Neither --host-key nor --accept-any-host-key: refused, nothing listens."""
        out, err, code = await run_module("callhome.tools.cli", "listen", "--get", "--private-key", str(self.key))
        self.assertEqual(code, 2)
        self.assertIn(b"--host-key", err)

    async def test_against_openssh_and_netconfd(self):
        """`callhome listen --get` against the real peer: netconfd's state on stdout."""
        reason = realpeer.available()
        if reason:
            raise SkipTest(reason)
        public = (Path(f"{self.key}.pub").read_text()).strip()
        device = realpeer.NetconfdDevice(str(self.tmp / "netconfd"), [public])
        self.addCleanup(device.stop)
        listening = self.listen("--host-key", device.host_key_fingerprint, "--get", "--sleep", "0.1", "--username", device.username)
        await task.deferLater(reactor, 0.8, lambda: None)
        device.call_home(self.port)
        out, err, code = await listening
        self.assertEqual(code, 0, err.decode() + device.sshd_log())
        self.assertGreater(len(out), 10_000)
        self.assertEqual(etree.fromstring(out).find(NC + "data") is not None, True)


class ListenTlsTests(TestCase):
    """``callhome listen --tls``: one TLS call, one operation."""

    timeout = 60

    async def test_tls_get_with_a_pinned_certificate(self):
        from tests.tls_certs import issue

        tmp = Path(self.mktemp())
        manager, device = issue("manager"), issue("device")
        cert, key = manager.write(tmp, "manager")
        device_cert, device_key = device.write(tmp, "device")
        port = free_port()
        listening = run_module(
            "callhome.tools.cli", "listen", "--tls", "--port", str(port), "--interface", "127.0.0.1",
            "--certificate", str(cert), "--key", str(key), "--pin", "sha256 Fingerprint=" + device.fingerprint,
            "--get", "--timeout", "20",
        )
        await task.deferLater(reactor, 0.8, lambda: None)
        calling = run_module(
            "callhome.simulator.cli", "--tls", "--manager", f"127.0.0.1:{port}", "--certificate", str(device_cert),
            "--key", str(device_key), "--manager-fingerprint", manager.fingerprint, "--quiet", "--retries", "3",
        )
        (out, err, code), _ = await defer.gatherResults([listening, calling])
        self.assertEqual(code, 0, err)
        self.assertIn(b"<rpc-reply", out)
        self.assertIn(b"<data", out)
        self.assertIn(f"device certificate {device.fingerprint}".encode(), err)

    async def test_tls_needs_an_identity_for_the_device(self):
        out, err, code = await run_module("callhome.tools.cli", "listen", "--tls", "--get", "--certificate", "a", "--key", "b")
        self.assertEqual(code, 2)
        self.assertIn(b"--pin FINGERPRINT or --ca", err)
