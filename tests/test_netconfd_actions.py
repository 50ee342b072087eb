"""
Issue 3's actions against real software: OpenSSH's sshd -i serving
netconfd (yuma123).  get-schema downloads netconfd's modules; edit-config on
the candidate with lock/commit/unlock is read back; a persistent session's
subscription receives the notifications another session causes.
"""

from __future__ import annotations

import socket
from pathlib import Path

from lxml import etree
from twisted.internet import reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from callhome import config as config_module
from callhome.service import CallHomeService
from tests import realpeer
from tests.helpers import new_key, write_key

SYSTEM = "urn:ietf:params:xml:ns:yang:ietf-system"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NetconfdActionTests(TestCase):
    """Built-in actions against the real peer."""

    timeout = 60

    def setUp(self) -> None:
        reason = realpeer.available()
        if reason:
            raise SkipTest(reason)
        self.tmp = Path(self.mktemp()).absolute()
        self.key = write_key(self.tmp / "keys", "manager", new_key())
        self.public = Path(f"{self.key}.pub").read_text().strip()
        self.port = free_port()
        self.ended: list = []

    def device(self, name: str) -> realpeer.NetconfdDevice:
        device = realpeer.NetconfdDevice(str(self.tmp / name), [self.public])
        self.addCleanup(device.stop)
        return device

    def service(self, devices: str, chains: str) -> CallHomeService:
        config = config_module.loads(f"""
listen: ["tcp:{self.port}:interface=127.0.0.1"]
results_dir: {self.tmp}/results
state_dir: {self.tmp}/state
store: {{database: {self.tmp}/callhome.sqlite}}
api: {{listen: "tcp:0:interface=127.0.0.1"}}
defaults: {{username: root, private_key: {self.key}}}
netconf: {{rpc_timeout: 10}}
devices:
{devices}
chains:
{chains}
""")
        service = CallHomeService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        call_ended = service.manager.call_ended

        def ended(call):
            call_ended(call)
            self.ended.append(call.call)

        service.manager.call_ended = ended
        return service

    async def wait_for(self, condition, seconds: float = 20.0) -> None:
        deadline = reactor.seconds() + seconds
        while not condition():
            if reactor.seconds() > deadline:
                self.fail("timed out waiting")
            await task.deferLater(reactor, 0.05, lambda: None)

    async def test_get_schema_downloads_netconfds_modules_once(self):
        """
        Every module netconfd lists in /netconf-state/schemas is saved as a
        .yang file and cached; the second call fetches none of them again.
        """
        device = self.device("d")
        service = self.service(
            f'  - {{name: nc, host_keys: ["{device.host_key_fingerprint}"], chain: schemas}}',
            "  schemas: [{sleep: {seconds: 0.1}}, {get-schema: {}}]",
        )
        device.call_home(self.port)
        await self.wait_for(lambda: self.ended)
        record = self.ended[0]
        self.assertEqual(record.outcome, "ok", record.reason)
        files = sorted((self.tmp / "results" / "nc" / "schemas").glob("*.yang"))
        names = [f.name for f in files]
        self.assertGreater(len(files), 10)
        self.assertTrue(any(n.startswith("ietf-netconf-monitoring@2010-10-04") for n in names), names)
        self.assertIn("module ietf-netconf-monitoring", (self.tmp / "results" / "nc" / "schemas" / "ietf-netconf-monitoring@2010-10-04.yang").read_text())
        self.assertEqual(sorted(p.name for p in record.steps[1].result), names)
        # The schema cache: a second call fetches none of the modules the first one did.

        def fetched() -> float:
            return sum(s.value for f in service.metrics.registry.collect() if f.name == "callhome_rpcs"
                       for s in f.samples if s.name.endswith("_total") and s.labels["operation"] == "get-schema")

        first = fetched()
        self.assertEqual(first, len(files))
        device.call_home(self.port)
        await self.wait_for(lambda: len(self.ended) == 2)
        self.assertEqual(self.ended[1].outcome, "ok", self.ended[1].reason)
        second = {p.name for p in self.ended[1].steps[1].result}
        self.assertEqual(second & set(names), set(), "nothing cached is fetched again")
        self.assertEqual(fetched() - first, len(second))
        listed = await service.manager.schemas.listing("nc")
        self.assertEqual(len(listed), len(set(names) | second))
        self.assertTrue(all(row["sha256"] for row in listed), "every module it lists is cached")
        text = await service.manager.schemas.text("ietf-netconf-monitoring", "2010-10-04")
        self.assertIn("module ietf-netconf-monitoring", text)

    async def test_oran_supervision_names_what_netconfd_lacks(self):
        """netconfd (yuma123) has no o-ran-supervision module: the step fails saying so, before sending anything."""
        device = self.device("oru")
        self.service(
            f'  - {{name: oru, host_keys: ["{device.host_key_fingerprint}"], chain: supervise}}',
            "  supervise: [{oran-supervision: {}}]",
        )
        device.call_home(self.port)
        await self.wait_for(lambda: self.ended)
        step = self.ended[0].steps[0]
        self.assertFalse(step.ok)
        self.assertIn("does not announce o-ran-supervision", step.error)

    async def test_edit_commit_read_back_and_subscription(self):
        """
        A persistent device subscribes; another session locks the candidate,
        edits it, commits, unlocks and reads running back.  The change is
        there, and the subscriber got netconfd's notifications (the editing
        session's start, the config change, its end), saved as files.
        """
        watcher, editor = self.device("w"), self.device("e")
        service = self.service(
            f'  - {{name: watcher, host_keys: ["{watcher.host_key_fingerprint}"], chain: watch, mode: persistent}}\n'
            f'  - {{name: editor, host_keys: ["{editor.host_key_fingerprint}"], chain: edit}}',
            "  watch: [{sleep: {seconds: 0.1}}, {subscribe: {}}]\n"
            "  edit:\n"
            "    - sleep: {seconds: 0.1}\n"
            "    - lock: {target: candidate}\n"
            f"    - edit-config: {{target: candidate, config: \"<system xmlns='{SYSTEM}'><contact>callhome-test</contact></system>\"}}\n"
            "    - commit: {}\n"
            "    - unlock: {target: candidate}\n"
            f"    - get-config: {{source: running, subtree: \"<system xmlns='{SYSTEM}'/>\"}}\n",
        )
        watcher.call_home(self.port)
        await self.wait_for(lambda: service.manager.registry.status.get("watcher") and service.manager.registry.status["watcher"].status == "connected" and service.manager.sessions.get("watcher") and service.manager.sessions["watcher"].keepalive is not None)
        editor.call_home(self.port)
        await self.wait_for(lambda: self.ended and service.manager.notifications_received >= 3)
        record = self.ended[0]
        self.assertEqual(record.device.name, "editor")
        self.assertEqual(record.outcome, "ok", record.reason)
        (running,) = (self.tmp / "results" / "editor").glob("*-get-config.xml")
        contact = etree.parse(str(running)).getroot().findtext(f".//{{{SYSTEM}}}contact")
        self.assertEqual(contact, "callhome-test")
        notes = sorted((self.tmp / "results" / "watcher").glob("*-notification.xml"))
        kinds = {etree.QName(etree.parse(str(n)).getroot()[1]).localname for n in notes}
        self.assertIn("netconf-config-change", kinds)
        self.assertIn("netconf-session-start", kinds)
