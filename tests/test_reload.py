"""
Live reload while a persistent session stays up: a device added, a chain
changed, a listener removed, a broken config refused (the old one kept).
"""

from __future__ import annotations

from callhome.control.errors import ReloadRefused as ReloadError
from tests.service_harness import RunningService, free_port, wait_for


class ReloadTests(RunningService):
    """Each change applies to new calls; the open session is untouched."""

    async def test_reload_keeps_the_persistent_session(self):
        edge_key, edge_fp = self.device_key("edge")
        new_key, new_fp = self.device_key("newcomer")
        second_port = free_port()
        self.start(f'[{{name: edge, host_keys: ["{edge_fp}"], mode: persistent}}]')
        # Two listeners; the persistent device calls on the second one.
        self.write_config(
            f'[{{name: edge, host_keys: ["{edge_fp}"], mode: persistent}}]',
            listen=f'["tcp:{self.port}:interface=127.0.0.1", "tcp:{second_port}:interface=127.0.0.1"]',
        )
        summary = (await self.post("/reload")).json()
        self.assertEqual(summary["listeners_added"], [f"tcp:{second_port}:interface=127.0.0.1"])
        edge_device = self.call(edge_key, port=second_port)
        await self.session_of("edge")
        edge_call = self.service.manager.sessions["edge"]

        # The newcomer is unknown: refused.
        self.assertEqual(await self.call(new_key).ended, 1)

        # Add the newcomer, change the chain, drop the second listener.
        self.write_config(
            f'[{{name: edge, host_keys: ["{edge_fp}"], mode: persistent}}, {{name: newcomer, host_keys: ["{new_fp}"]}}]',
            chains="{main: [{get-config: {source: running}}]}",
        )
        reloaded = await self.post("/reload")
        self.assertEqual(reloaded.code, 200, reloaded.body)
        self.assertEqual(reloaded.json()["listeners_removed"], [f"tcp:{second_port}:interface=127.0.0.1"])
        self.assertEqual(reloaded.json()["devices"], 2)

        self.assertEqual(await self.call(new_key).ended, 0, "the added device is served")
        saved = sorted(p.name for p in (self.tmp / "results" / "newcomer").iterdir())
        self.assertEqual(len(saved), 1)
        self.assertTrue(saved[0].endswith("-get-config.xml"), "the changed chain ran")
        self.assertEqual(await self.call(new_key, port=second_port).ended, 1, "the removed listener refuses calls")

        # A broken config is refused; the running one stays.
        self.config_path.write_text(self.config_path.read_text() + "\nbogus_key: 1\n")
        broken = await self.post("/reload")
        self.assertEqual(broken.code, 422)
        self.assertIn("bogus_key: unknown key", broken.json()["error"])
        self.assertEqual(await self.call(new_key).ended, 0, "still served with the old config")
        with self.assertRaises(ReloadError):
            self.service.reload("test")

        # Through all of it the persistent session stayed the same one.
        self.assertIs(self.service.manager.sessions["edge"], edge_call)
        self.assertFalse(edge_device.ended.called)
        reply = await self.post("/devices/edge/rpc", b'{"get": {}}', content_type="application/json")
        self.assertTrue(reply.json()["ok"])
        kinds = [e["kind"] for e in (await self.get("/events")).json()["events"]]
        self.assertEqual(kinds.count("reload"), 2)
        self.assertEqual(kinds.count("reload-refused"), 2)

    async def test_removed_device_loses_its_session(self):
        """A device taken out of the config is no longer allowed: its session is closed."""
        edge_key, edge_fp = self.device_key("edge")
        _, other_fp = self.device_key("other")
        self.start(f'[{{name: edge, host_keys: ["{edge_fp}"], mode: persistent}}, {{name: other, host_keys: ["{other_fp}"]}}]')
        edge_device = self.call(edge_key)
        await self.session_of("edge")
        self.write_config(f'[{{name: other, host_keys: ["{other_fp}"]}}]')
        self.service.reload("test")
        self.assertEqual(await edge_device.ended, 0)
        await wait_for(lambda: "edge" not in self.service.manager.sessions, what="edge's session to end")

    async def test_listener_that_cannot_bind_refuses_the_reload(self):
        """A new listener that cannot bind refuses the whole reload: nothing changes."""
        _, fp = self.device_key("edge")
        _, extra_fp = self.device_key("extra")  # a real second key: never equal to edge's
        self.start(f'[{{name: edge, host_keys: ["{fp}"]}}]')
        taken = self.service.api_address().port  # the API's port is certainly taken
        self.write_config(
            f'[{{name: edge, host_keys: ["{fp}"]}}, {{name: extra, host_keys: ["{extra_fp}"]}}]',
            listen=f'["tcp:{self.port}:interface=127.0.0.1", "tcp:{self.port + 0}:interface=127.0.0.2", "tcp:{taken}:interface=127.0.0.1"]',
        )
        with self.assertRaises(ReloadError) as caught:
            self.service.reload("test")
        self.assertIn(f"cannot listen on tcp:{taken}", str(caught.exception))
        self.assertEqual(list(self.service.listeners), [f"tcp:{self.port}:interface=127.0.0.1"])
        self.assertEqual(len(self.service.manager.registry.devices()), 1)
