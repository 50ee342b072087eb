"""
Issue 3's actions against real software: OpenSSH's sshd -i serving
netconfd (yuma123).  get-schema downloads netconfd's modules; edit-config on
the candidate with lock/commit/unlock is read back; a persistent session's
subscription receives the notifications another session causes.
"""

from __future__ import annotations

import re

import socket
from pathlib import Path

from lxml import etree

from callhome.actions import replay
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

    async def test_a_resumed_subscription_against_netconfd(self):
        """
        What Debian's netconfd (yuma123 2.13) does with a resumed
        subscription: the watcher subscribes, is disconnected, another
        session comes and goes while it is away, and the watcher calls back
        and subscribes with startTime = the last saved eventTime.  netconfd
        keeps a replay buffer: the notifications raised while the watcher
        was away are replayed and saved, and the one already saved is
        dropped; no gap is recorded.
        """
        watcher, visitor = self.device("rw"), self.device("rv")
        service = self.service(
            f'  - {{name: watcher, host_keys: ["{watcher.host_key_fingerprint}"], chain: watch, mode: persistent}}\n'
            f'  - {{name: visitor, host_keys: ["{visitor.host_key_fingerprint}"], chain: visit}}',
            "  watch: [{sleep: {seconds: 0.1}}, {subscribe: {}}]\n"
            "  visit: [{sleep: {seconds: 0.1}}, {get-config: {source: running}}]\n",
        )
        manager = service.manager

        def subscribed() -> bool:
            call = manager.sessions.get("watcher")
            return bool(call is not None and call.keepalive is not None)

        watcher.call_home(self.port)
        await self.wait_for(subscribed)
        visitor.call_home(self.port)
        await self.wait_for(lambda: len(self.ended) == 1 and manager.notifications_received >= 2)
        before = manager.notifications_received
        seen_before = {int(i) for n in (self.tmp / "results" / "watcher").glob("*-notification.xml")
                       for i in re.findall(rb"<session-id>(\d+)</session-id>", n.read_bytes())}
        await manager.disconnect(manager.sessions["watcher"], "test: away")
        await self.wait_for(lambda: "watcher" not in manager.sessions)
        visitor.call_home(self.port)  # session start and end while the watcher is away
        await self.wait_for(lambda: sum(1 for r in self.ended if r.device and r.device.name == "visitor") == 2)
        watcher.call_home(self.port)
        await self.wait_for(subscribed)
        await self.wait_for(lambda: manager.notifications_received >= before + 2)
        notes = sorted((self.tmp / "results" / "watcher").glob("*-notification.xml"))
        digests = [replay.digest(etree.parse(str(n)).getroot()) + replay.event_time(etree.parse(str(n)).getroot()) for n in notes]
        self.assertEqual(len(digests), len(set(digests)), "no notification saved twice")
        kinds: dict[str, set[str]] = {}
        for n in notes:
            root = etree.parse(str(n)).getroot()
            kinds.setdefault(etree.QName(root[1]).localname, set()).add(root.findtext(".//{*}session-id") or "")
        self.assertNotIn("replayComplete", kinds, "the end of the replay is not a notification to keep")
        visits = {int(i) for i in kinds["netconf-session-start"] & kinds["netconf-session-end"]}
        self.assertTrue(any(v > max(seen_before) for v in visits),
                        f"the visit while the watcher was away was replayed: {kinds}, before: {seen_before}")
        gaps = await service.store.events(device="watcher", kind="notification-gap")
        self.assertEqual(gaps, [])
