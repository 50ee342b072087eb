"""
twistd integration: the plugin, Options, makeService and the real command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from callhome import tap
from callhome.service import CallHomeService

REPO = Path(__file__).resolve().parent.parent


class TapTests(SynchronousTestCase):
    """The twistd plugin and tap module."""

    def test_plugin_is_discoverable(self):
        """`twistd callhome` finds our ServiceMaker through the plugin system."""
        import twisted.plugins

        paths = list(twisted.plugins.__path__)
        if str(REPO / "twisted" / "plugins") not in paths:
            twisted.plugins.__path__.append(str(REPO / "twisted" / "plugins"))
            self.addCleanup(lambda: twisted.plugins.__path__.remove(str(REPO / "twisted" / "plugins")))
        names = [p.tapname for p in getPlugins(IServiceMaker)]
        self.assertIn("callhome", names)

    def test_make_service_from_shipped_config(self):
        """makeService builds listeners for the shipped config, reactor injected."""
        cwd = os.getcwd()
        os.chdir(REPO)
        self.addCleanup(os.chdir, cwd)
        options = tap.Options()
        options.parseOptions(["-c", "etc/config.yaml"])
        reactor = MemoryReactorClock()
        service = tap.makeService(options, reactor=reactor)
        self.assertIsInstance(service, CallHomeService)
        service.startService()
        ((port, factory, backlog, interface), api) = reactor.tcpServers
        self.assertEqual((port, backlog), (4334, 1024))
        self.assertEqual((api[0], api[3]), (8080, "127.0.0.1"), "the API listens on loopback by default")

    def test_bad_config_is_a_usage_error(self):
        """A config error reaches twistd as one line naming the key path."""
        options = tap.Options()
        bad = Path(self.mktemp())
        bad.write_text("listen: [tcp:4334]\nbogus: 1\n")
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["-c", str(bad)])
        self.assertEqual(str(caught.exception), "config error: bogus: unknown key")

    def test_twistd_reports_config_error_without_traceback(self):
        """The real `twistd callhome` prints the error and exits non-zero."""
        bad = Path(self.mktemp()).absolute()
        bad.write_text("listen: [tcp:4334]\ndevices: [{name: x}]\n")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run(
            [sys.executable, "-m", "twisted", "--help"], capture_output=True, env=env, cwd=REPO
        )
        self.assertEqual(proc.returncode, 0)
        proc = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "callhome", "-c", str(bad)],
            capture_output=True, env=env, cwd=REPO, timeout=60,
        )
        output = (proc.stdout + proc.stderr).decode()
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("config error: devices[0]: missing host_keys", output)
        self.assertNotIn("Traceback", output)


class ListenerWiringTests(SynchronousTestCase):
    """listen: entries become the right factories."""

    def test_haproxy_listener_uses_our_proxy_wrapper(self):
        """haproxy: endpoints admit by the PROXY header's address (ProxiedCallFactory)."""
        from callhome import config as config_module
        from callhome.call.listener import CallHomeFactory, ProxiedCallFactory

        tmp = Path(self.mktemp())
        config = config_module.loads(
            f"listen: [tcp:4334, 'haproxy:tcp:4335']\nstate_dir: {tmp}/state\nstore: {{database: {tmp}/db.sqlite}}\napi: {{listen: null}}\n"
        )
        reactor = MemoryReactorClock()
        service = CallHomeService(config, reactor)
        service.startService()
        factories = {port: type(factory) for port, factory, _, _ in reactor.tcpServers}
        self.assertIs(factories[4334], CallHomeFactory)
        self.assertIs(factories[4335], ProxiedCallFactory)
