"""
Every built-in action against the project's simulator, in memory: the
manager's chain on one side, the simulator's NETCONF server (candidate,
locks, confirmed commit, notifications, get-schema) on the other.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree
from twisted.trial.unittest import SynchronousTestCase

from callhome.simulator.netconf_server import Datastore
from tests.helpers import make_keys, InMemoryCall, device_factory, make_config, memory_manager

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
SYS = "urn:ietf:params:xml:ns:yang:ietf-system"
IF = "urn:ietf:params:xml:ns:yang:ietf-interfaces"
CONTACT = f"<system xmlns='{SYS}'><contact>changed-by-callhome</contact></system>"


class ActionTests(SynchronousTestCase):
    """One chain per test; results, datastore state and step outcomes checked."""

    def setUp(self) -> None:
        make_keys(self)

    def run_chain(self, chain: str, extra: str = "", credentials_extra: str = "", advance: int = 0):
        config = make_config(
            self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}{credentials_extra}",
            chain=chain, extra=extra,
        )
        self.manager = memory_manager(config)
        self.datastore = Datastore.from_file(clock=self.manager.clock)
        self.call = InMemoryCall(self.manager, device_factory(self.device_key, [self.manager_key], datastore=self.datastore))
        self.call.run()
        for _ in range(advance):
            self.manager.clock.advance(1)
            self.call.run()
        return self.call.call.call

    def results(self, pattern: str) -> list[Path]:
        return sorted((self.tmp / "results" / "edge-1").glob(pattern))

    def running_contact(self, datastore: str = "running") -> str | None:
        for element in self.datastore.datastores[datastore]:
            if element.tag == f"{{{SYS}}}system":
                return element.findtext(f"{{{SYS}}}contact")
        return None

    def steps(self, record):
        return [(s.action, s.ok) for s in record.steps]

    def test_get_with_subtree_filter(self):
        """get with a subtree filter saves only what it selected."""
        record = self.run_chain(f"[{{get: {{subtree: \"<interfaces xmlns='{IF}'/>\"}}}}]")
        self.assertEqual(record.outcome, "ok", record.reason)
        (saved,) = self.results("*-get.xml")
        data = etree.parse(str(saved)).getroot().find(f"{{{NC}}}data")
        self.assertEqual([etree.QName(c).localname for c in data], ["interfaces"])

    def test_get_with_xpath_filter(self):
        """get with an XPath filter (the device advertises :xpath)."""
        record = self.run_chain(f"[{{get: {{xpath: /s:system, namespaces: {{s: '{SYS}'}}}}}}]")
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertIn(b"sim-device", self.results("*-get.xml")[0].read_bytes())

    def test_get_config_sources_and_with_defaults(self):
        """get-config of candidate and startup, and with-defaults, each saved."""
        record = self.run_chain("[{get-config: {source: candidate}}, {get-config: {source: startup, with_defaults: report-all}}]")
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertEqual(len(self.results("*-get-config*.xml")), 2)

    def test_lock_edit_commit_unlock(self):
        """The candidate workflow changes running; the reply of each step is ok."""
        record = self.run_chain(
            f"[{{lock: {{target: candidate}}}}, {{edit-config: {{target: candidate, config: \"{CONTACT}\"}}}},"
            " {validate: {source: candidate}}, {commit: {}}, {unlock: {target: candidate}}]"
        )
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertEqual(self.running_contact(), "changed-by-callhome")

    def test_edit_running_directly(self):
        """edit-config on running where :writable-running is advertised."""
        record = self.run_chain(f"[{{edit-config: {{target: running, config: \"{CONTACT}\", default_operation: merge}}}}]")
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertEqual(self.running_contact(), "changed-by-callhome")

    def test_edit_config_from_file(self):
        """config_file is read when the config loads."""
        path = self.tmp / "change.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(CONTACT)
        record = self.run_chain(f"[{{edit-config: {{target: running, config_file: {path}}}}}]")
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertEqual(self.running_contact(), "changed-by-callhome")

    def test_rpc_error_fails_the_step_with_its_fields(self):
        """A second lock of the same datastore: lock-denied, named in the step's error."""
        record = self.run_chain("[{lock: {target: running}}, {lock: {target: running}}]")
        self.assertEqual(self.steps(record), [("lock", True), ("lock", False)])
        self.assertIn("lock-denied", record.steps[1].error)
        self.assertEqual(record.outcome, "chain-failed")

    def test_discard_changes(self):
        """discard-changes resets the candidate to running."""
        record = self.run_chain(
            f"[{{lock: {{target: candidate}}}}, {{edit-config: {{config: \"{CONTACT}\"}}}},"
            " {discard-changes: {}}, {get-config: {source: candidate}}]"
        )
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertNotIn(b"changed-by-callhome", self.results("*-get-config.xml")[0].read_bytes())
        self.assertNotEqual(self.running_contact(), "changed-by-callhome")

    def test_confirmed_commit_rolls_back_without_confirmation(self):
        """
        A confirmed commit that is never confirmed is rolled back (here when
        the session that made it ends, RFC 6241 §8.4).
        """
        record = self.run_chain(
            f"[{{lock: {{target: candidate}}}}, {{edit-config: {{config: \"{CONTACT}\"}}}},"
            " {commit: {confirmed: true, confirm_timeout: 30}}, {get-config: {source: running}}]"
        )
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertIn(b"changed-by-callhome", self.results("*-get-config.xml")[0].read_bytes())
        self.assertNotEqual(self.running_contact(), "changed-by-callhome")

    def test_confirmed_commit_confirmed(self):
        """A confirming commit makes the change stick."""
        record = self.run_chain(
            f"[{{lock: {{target: candidate}}}}, {{edit-config: {{config: \"{CONTACT}\"}}}},"
            " {commit: {confirmed: true, confirm_timeout: 30}}, {commit: {}}]"
        )
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertEqual(self.running_contact(), "changed-by-callhome")

    def test_validate_failure(self):
        """validate of an invalid inline config fails with invalid-value."""
        record = self.run_chain(f"[{{validate: {{config: \"<system xmlns='{SYS}'><invalid/></system>\"}}}}]")
        self.assertEqual(self.steps(record), [("validate", False)])
        self.assertIn("invalid-value", record.steps[0].error)

    def test_copy_and_delete_config(self):
        """copy-config running to startup, then delete-config startup."""
        record = self.run_chain(
            f"[{{edit-config: {{target: running, config: \"{CONTACT}\"}}}}, {{copy-config: {{source: running, target: startup}}}}]"
        )
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertEqual(self.running_contact("startup"), "changed-by-callhome")
        record = self.run_chain("[{delete-config: {target: startup}}]")
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertEqual(self.datastore.datastores["startup"], [])

    def test_get_schema(self):
        """Every module the device lists is saved as <module>@<revision>.yang."""
        record = self.run_chain("[{get-schema: {}}]")
        self.assertEqual(record.outcome, "ok", record.reason)
        names = sorted(p.name for p in (self.tmp / "results" / "edge-1" / "schemas").glob("*.yang"))
        self.assertEqual(names, [f"{m.name}@{m.revision}.yang" for m in sorted(self.datastore.modules, key=lambda m: m.name)])
        self.assertIn("module example-sim-types", (self.tmp / "results" / "edge-1" / "schemas" / "example-sim-types@2024-05-01.yang").read_text())

    def test_get_schema_of_one_missing_module_fails(self):
        """Asking for a module the device does not list fails the step, naming it."""
        record = self.run_chain("[{get-schema: {modules: [no-such-module]}}]")
        self.assertIn("no-such-module", record.steps[0].error)

    def test_rpc_from_xml(self):
        """rpc sends any operation and saves the reply."""
        record = self.run_chain(f"[{{rpc: {{xml: \"<get-config xmlns='{NC}'><source><running/></source></get-config>\"}}}}]")
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertIn(b"sim-device", self.results("*-rpc.xml")[0].read_bytes())

    def test_save_and_log(self):
        """save writes the latest reply where asked, as data only; log logs."""
        record = self.run_chain(
            "[{get-config: {save: false}}, {save: {path: 'backups/{device}.xml', content: data}}, {log: {message: 'done {device}'}}]"
        )
        self.assertEqual(record.outcome, "ok", record.reason)
        backup = self.tmp / "results" / "backups" / "edge-1.xml"
        self.assertTrue(backup.read_bytes().startswith(b"<system"))
        self.assertEqual(self.results("*-get-config.xml"), [], "save: false kept the reply from the default place")

    def test_close_skips_the_rest(self):
        """close ends the session; later steps do not run."""
        record = self.run_chain("[{close: {}}, {get: {}}]")
        self.assertEqual(self.steps(record), [("close", True)])
        self.assertEqual(self.results("*-get.xml"), [])

    def test_subscribe_saves_notifications_and_runs_on_notification(self):
        """
        In persistent mode a subscription keeps delivering: each notification
        is saved and runs the device's on_notification chain.
        """
        record = self.run_chain(
            "[{subscribe: {}}]",
            extra="  alarm: [{log: {message: 'notification for {device}'}}]",
            credentials_extra="\n  mode: persistent\n  on_notification: alarm",
        )
        self.assertEqual(record.outcome, "ok", record.reason)
        event = etree.fromstring(b"<link-down xmlns='urn:example:events'><if>eth0</if></link-down>")
        self.datastore.notify(event)
        self.datastore.notify(event)
        self.call.run()
        notes = self.results("*-notification.xml")
        self.assertEqual(len(notes), 2)
        self.assertIn(b"link-down", notes[0].read_bytes())
        self.assertEqual(self.manager.notifications_received, 2)

    def test_missing_capability_is_named(self):
        """An action whose capability is missing fails with a message naming it."""
        from callhome.actions import builtin

        class Session:
            capabilities = ("urn:ietf:params:netconf:base:1.1",)

        class Context:
            session = Session()

        with self.assertRaises(builtin.MissingCapability) as caught:
            builtin.require(Context(), "candidate", "commit")  # type: ignore[arg-type]
        self.assertIn(":candidate", str(caught.exception))

    def test_bad_parameters_stop_start_up(self):
        """Bad action parameters are config errors with the key path."""
        from callhome import config as config_module

        for chain, path in (
            ("[{edit-config: {target: startup, config: '<a/>'}}]", "chains.main[0].edit-config.target"),
            ("[{edit-config: {config: '<a'}}]", "chains.main[0].edit-config.config"),
            ("[{commit: {confirm_timeout: soon}}]", "chains.main[0].commit.confirm_timeout"),
            ("[{rpc: {xml: '<rpc><get/></rpc>'}}]", "chains.main[0].rpc.xml"),
            ("[{save: {path: '../../etc/passwd'}}]", "chains.main[0].save.path"),
            ("[{subscribe: {stop_time: '2026-01-01T00:00:00Z'}}]", "chains.main[0].subscribe.stop_time"),
        ):
            with self.assertRaises(config_module.ConfigError) as caught:
                make_config(self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}", chain=chain)
            self.assertEqual(caught.exception.path, path, str(caught.exception))
