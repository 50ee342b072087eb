"""
Action plugins: discovered on the plugin path, or referenced by
module:callable; a misbehaving plugin fails only its own step.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from callhome import config as config_module
from tests.helpers import make_keys, InMemoryCall, device_factory, make_config, memory_manager, new_key

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "plugins"


class PluginTests(SynchronousTestCase):
    """Plugins in real calls against the simulator (in memory)."""

    def setUp(self) -> None:
        make_keys(self)
        self.good_key = new_key()

    def run_chain(self, chain: str, extra: str = "", advance: float = 0):
        config = make_config(
            self.tmp, {"edge-1": self.device_key, "good": self.good_key}, f"private_key: {self.key_path}",
            chain=chain, extra=extra,
        )
        manager = memory_manager(config)
        call = InMemoryCall(manager, device_factory(self.device_key, [self.manager_key]))
        good = InMemoryCall(manager, device_factory(self.good_key, [self.manager_key]))
        call.run()
        good.run()
        for _ in range(int(advance)):
            manager.clock.advance(1)
            call.run()
            good.run()
        return call.call.call, good.call.call

    def test_example_plugin_discovered_from_plugin_path(self):
        """
        The shipped backup plugin is found by getPlugins on the plugin path,
        writes a canonical backup, and does not rewrite an unchanged one.
        """
        backups = self.tmp / "backups"
        chain = f"[{{backup-running: {{directory: {backups}}}}}]"
        record, _ = self.run_chain(chain, extra=f"plugin_paths: [{EXAMPLES}]")
        self.assertEqual(record.outcome, "ok", record.reason)
        target = backups / "edge-1.xml"
        self.assertEqual(record.steps[0].result, str(target))
        first = target.read_bytes()
        self.assertIn(b"<hostname>sim-device</hostname>", first)
        mtime = target.stat().st_mtime_ns
        record, _ = self.run_chain(chain, extra=f"plugin_paths: [{EXAMPLES}]")
        self.assertEqual(record.steps[0].result, "unchanged")
        self.assertEqual(target.stat().st_mtime_ns, mtime)

    def test_plugin_found_without_plugin_path_fails_clearly(self):
        """Without the plugin path the action is unknown, and the error says how to fix it."""
        from callhome.actions import plugins

        self.addCleanup(plugins.discovered, True)
        import callhome.actions as package

        package.__path__[:] = [p for p in package.__path__ if "examples" not in p]
        plugins.discovered(refresh=True)
        with self.assertRaises(config_module.ConfigError) as caught:
            make_config(self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}", chain="[{backup-running: {}}]")
        self.assertIn("unknown action 'backup-running'", str(caught.exception))
        self.assertIn("package.module:callable", str(caught.exception))

    def test_function_reference(self):
        """A module:callable function runs with the context and its parameters."""
        record, _ = self.run_chain("[{'tests.plugin_samples:record': {value: 42}}]")
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertEqual(record.steps[0].result, {"device": "edge-1", "value": 42})

    def test_class_reference(self):
        """A module:callable class is built once with the step's parameters."""
        record, _ = self.run_chain("[{'tests.plugin_samples:Greeting': {text: hi}}]")
        self.assertEqual(record.steps[0].result, "hi edge-1")

    def test_reference_errors_at_load(self):
        """Bad references and parameters stop start-up with the key path."""
        for chain, text in (
            ("[{'tests.nope:x': {}}]", "cannot import tests.nope"),
            ("[{'tests.plugin_samples:nope': {}}]", "has no nope"),
            ("[{'tests.plugin_samples:record': {bogus: 1}}]", "unknown parameter"),
        ):
            with self.assertRaises(config_module.ConfigError) as caught:
                make_config(self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}", chain=chain)
            self.assertIn(text, str(caught.exception))
            self.assertTrue(caught.exception.path.startswith("chains.main[0]"))

    def test_raising_plugin_fails_only_its_step(self):
        """A plugin that raises fails its step (reason logged); the chain goes on if told to."""
        record, good = self.run_chain("[{'tests.plugin_samples:explode': {}, on_error: continue}, {get: {}}]")
        self.assertEqual([(s.action, s.ok) for s in record.steps], [("tests.plugin_samples:explode", False), ("get", True)])
        self.assertIn("RuntimeError: plugin went bang", record.steps[0].error)
        self.assertEqual(record.outcome, "chain-failed")

    def test_hanging_plugin_times_out(self):
        """A plugin that never finishes fails its step after its timeout."""
        record, good = self.run_chain("[{'tests.plugin_samples:hang': {}, timeout: 5}, {get: {}}]", advance=7)
        self.assertEqual(record.steps[0].ok, False)
        self.assertIn("no result within 5s", record.steps[0].error)
        self.assertEqual(len(record.steps), 1, "on_error defaults to stop")
        self.assertEqual(record.outcome, "chain-failed")

    def test_garbage_result_fails_its_step(self):
        """A plugin returning something odd fails its step with the type named."""
        record, _ = self.run_chain("[{'tests.plugin_samples:garbage': {}}]")
        self.assertIn("unsupported result of type object", record.steps[0].error)

    def test_default_step_timeout(self):
        """Steps without a timeout get step_timeout, so nothing hangs for ever."""
        record, _ = self.run_chain("[{'tests.plugin_samples:hang': {}}]", extra="step_timeout: 3", advance=5)
        self.assertIn("no result within 3s", record.steps[0].error)
