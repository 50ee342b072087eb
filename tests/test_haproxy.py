"""
A real HAProxy (Debian's 2.6) in front of the service, as operators run
it: ``send-proxy-v2`` to a ``haproxy:`` listener, with health checks that
send a PROXY v2 LOCAL header and close (``check check-send-proxy``).

The health checks are neither calls nor failures: nothing is logged as a
failed call, and admission does not count them against the balancer's
address; a device calling through the balancer is served.
"""

from __future__ import annotations

from twisted.trial.unittest import SkipTest

from tests import haproxy
from tests.service_harness import RunningService, free_port, wait_for


class HaproxyTests(RunningService):
    """The service behind a real HAProxy."""

    def setUp(self) -> None:
        reason = haproxy.available()
        if reason is not None:
            raise SkipTest(reason)
        super().setUp()

    def balancer(self, backend_port: int) -> int:
        """Start HAProxy on a free port in front of C{backend_port}; its port."""
        port = free_port()
        process = haproxy.start(self.tmp / "haproxy.cfg", port, [("m1", backend_port)], check="inter 100ms",
                                maxconn=200, timeout="60s")
        self.addCleanup(process.wait, 10)
        self.addCleanup(process.terminate)
        return port

    async def test_health_checks_are_not_calls_and_devices_are_served(self) -> None:
        key, fp = self.device_key("edge")
        backend = free_port()
        service = self.start(f'[{{name: edge, host_keys: ["{fp}"]}}]')
        # Replace the plain listener with a haproxy: one on a known port.
        self.write_config(f'[{{name: edge, host_keys: ["{fp}"]}}]', listen=f'["haproxy:tcp:{backend}:interface=127.0.0.1"]')
        service.reload("test")
        port = self.balancer(backend)
        manager = service.manager
        await wait_for(lambda: manager.health_checks >= 10, timeout=20, what="ten health checks")
        self.assertEqual(sum(manager.counts.values()), 0, f"no call was recorded: {manager.counts}")
        self.assertEqual(manager.admission.blocked(), {})
        self.assertEqual(manager.admission.pending, 0)
        await self.call(key, port=port).ended
        await wait_for(lambda: manager.counts.get("ok", 0) == 1, what="the call through HAProxy")
        self.assertEqual(dict(manager.counts), {"ok": 1})
        status = manager.registry.status["edge"]
        self.assertTrue(status.last_source.startswith("127.0.0.1:"), status.last_source)
