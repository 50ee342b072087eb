"""
The whole service on loopback with the real reactor, driven by
``callhome-device`` running as a separate process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lxml import etree
from twisted.internet import reactor, utils
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


class LoopbackTests(TestCase):
    """Many simulated devices calling a running service at once."""

    timeout = 120

    def start_service(self, tmp: Path, devices_yaml: str, chain: str = "[{get: {}}]", extra: str = "") -> CallHomeService:
        manager_key = write_key(tmp / "keys", "manager", new_key())
        config = config_module.loads(
            f"""
listen: ["tcp:0:interface=127.0.0.1"]
results_dir: {tmp / 'results'}
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
