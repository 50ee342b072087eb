"""
The cluster as operators run it: three ``twistd callhome`` processes on one
real PostgreSQL, behind a real HAProxy (PROXY v2, health checks), with
simulated devices in their own processes calling through the balancer.

* 600 periodic calls spread over all three; 8 persistent devices listed by
  one instance's ``/sessions`` with their instances; RPCs through every
  instance reach every session.
* One instance killed with SIGKILL under load: later calls are all served,
  its persistent devices are served elsewhere, its claims are gone after
  the lease, and its results are still served by the others after its
  ``results_dir`` is deleted.
* PostgreSQL stopped and started again under load: calls go on, nothing
  saved is lost, and the instance says how many queued records it wrote.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, TestCase

from callhome import fingerprints
from callhome.simulator.ssh_server import load_or_create_host_key
from tests import haproxy, pgserver
from tests.helpers import new_key, write_key
from tests.service_harness import REPO, Device, free_port, http, start_device

GET = b'<get xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"/>'
LEASE = 3


class Twistd(ProcessProtocol):
    """One instance: a twistd process and what it printed."""

    def __init__(self, name: str, port: int, api_port: int, results: Path) -> None:
        self.name, self.port, self.api_port, self.results = name, port, api_port, results
        self.api = f"http://127.0.0.1:{api_port}"
        self.ended: defer.Deferred[Any] = defer.Deferred()
        self.out = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


class ClusterProcessTests(TestCase):
    """Three instances behind HAProxy on one PostgreSQL."""

    timeout = 400

    def setUp(self) -> None:
        for reason in (pgserver.available(), haproxy.available()):
            if reason is not None:
                raise SkipTest(reason)
        self.pg = pgserver.shared()
        self.url = self.pg.create_database("procs")
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir(parents=True)
        self.manager_key = write_key(self.tmp / "keys", "manager", new_key())
        self.devices: list[Device] = []
        self.addCleanup(self._devices_ended)

    # --- the pieces ------------------------------------------------------------------------

    def fleet(self, periodic: int, persistent: int) -> str:
        """Host keys for the simulated devices; the config's devices: list."""
        lines = []
        for i in range(periodic):
            key = load_or_create_host_key(self.tmp / "fleet" / f"device-{i:04d}_ed25519")
            lines.append(f'  - {{name: sim-{i:04d}, host_keys: ["{fingerprints.of_key(key)}"]}}')
        for i in range(persistent):
            key = load_or_create_host_key(self.tmp / "held" / f"p{i}")
            lines.append(f'  - {{name: held-{i}, host_keys: ["{fingerprints.of_key(key)}"], mode: persistent}}')
        return "\n".join(lines)

    async def instance(self, name: str, devices: str) -> Twistd:
        port, api_port = free_port(), free_port()
        process = Twistd(name, port, api_port, self.tmp / name / "results")
        config = self.tmp / f"{name}.yaml"
        config.write_text(f"""
listen: ["haproxy:tcp:{port}:interface=127.0.0.1"]
results_dir: {process.results}
state_dir: {self.tmp / name / 'state'}
store: {{database: "{self.url}", password_env: CALLHOME_TEST_PGPASSWORD}}
cluster: {{instance: {name}, lease: {LEASE}}}
api: {{listen: "tcp:{api_port}:interface=127.0.0.1"}}
admission: {{max_pending_per_source: 200, failed_auth_limit: 100000}}
log: {{level: warn}}
shutdown_grace: 2
defaults: {{username: admin, private_key: {self.manager_key}, chain: main}}
devices:
{devices}
chains: {{main: [{{get: {{}}}}]}}
""")
        env = dict(os.environ, PYTHONPATH=str(REPO), CALLHOME_TEST_PGPASSWORD=pgserver.PASSWORD)
        reactor.spawnProcess(
            process, sys.executable,
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "callhome", "-c", str(config)],
            env=env, path=str(self.tmp),
        )

        def kill_if_running() -> Any:
            if not process.ended.called:
                process.transport.signalProcess("KILL")
            return process.ended

        self.addCleanup(kill_if_running)
        for _ in range(600):
            if process.ended.called:
                raise AssertionError(f"{name} exited: {process.out.decode(errors='replace')[-3000:]}")
            try:
                if (await http("GET", process.api + "/healthz")).code == 200:
                    return process
            except Exception:
                pass
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"{name} did not come up: {process.out.decode(errors='replace')[-3000:]}")

    def balancer(self, instances: list[Twistd]) -> int:
        port = free_port()
        process = haproxy.start(self.tmp / "haproxy.cfg", port, [(i.name, i.port) for i in instances],
                                check="inter 200ms fall 2 rise 1", timeout="120s", connect="1s",
                                defaults=("retries 3", "option redispatch"))
        self.addCleanup(process.wait, 10)
        self.addCleanup(process.terminate)
        return port

    def load(self, port: int, count: int, concurrency: int = 12) -> Device:
        device = start_device(
            "--manager", f"127.0.0.1:{port}", "--host-key", str(self.tmp / "fleet" / "device"), "--devices", "60",
            "--authorized-key", f"{self.manager_key}.pub", "--count", str(count), "--concurrency", str(concurrency),
            "--retries", "20", "--retry-delay", "0.5", "--quiet",
        )
        self.devices.append(device)
        return device

    def held(self, port: int, index: int) -> Device:
        """A persistent device: calls, keeps its session, calls again when it ends."""
        device = start_device(
            "--manager", f"127.0.0.1:{port}", "--host-key", str(self.tmp / "held" / f"p{index}"),
            "--authorized-key", f"{self.manager_key}.pub", "--count", "0", "--interval", "0.3",
            "--retries", "50", "--retry-delay", "0.3", "--quiet",
        )
        self.devices.append(device)
        return device

    async def _devices_ended(self) -> None:
        for device in self.devices:
            if not device.ended.called:
                device.transport.signalProcess("KILL")
                await device.ended

    def sql(self, statement: str, *parameters: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, password=pgserver.PASSWORD) as connection:
            return connection.execute(statement, parameters).fetchall()

    async def poll(self, predicate: Any, timeout: float, what: str) -> None:
        for _ in range(int(timeout / 0.2)):
            if await defer.maybeDeferred(predicate):
                return
            await task.deferLater(reactor, 0.2, lambda: None)
        raise AssertionError(f"timed out waiting for {what}")

    async def held_sessions(self, via: Twistd) -> dict[str, str]:
        sessions = (await http("GET", via.api + "/sessions")).json()["sessions"]
        return {s["device"]: s["instance"] for s in sessions if s["device"] and s["device"].startswith("held-")}

    # --- the tests -----------------------------------------------------------------------------

    async def test_three_instances_behind_haproxy_and_one_killed(self) -> None:
        devices = self.fleet(60, 8)
        instances = [await self.instance(name, devices) for name in ("ch-1", "ch-2", "ch-3")]
        port = self.balancer(instances)
        await task.deferLater(reactor, 1.0, lambda: None)  # the first health checks
        for i in range(8):
            self.held(port, i)

        periodic = self.load(port, 600)
        await periodic.ended
        self.assertIn(b"600 calls served, 0 failed", periodic.output, periodic.output)
        def by_instance() -> dict[str, int]:
            return dict(self.sql("SELECT instance, count(*) FROM results WHERE device LIKE 'sim-%%' GROUP BY instance"))

        await self.poll(lambda: sum(by_instance().values()) == 600, 10, "600 result rows")
        spread = by_instance()
        self.assertEqual(sorted(spread), ["ch-1", "ch-2", "ch-3"], f"spread over all three: {spread}")

        first = instances[0]

        async def all_held() -> bool:
            return len(await self.held_sessions(first)) == 8

        await self.poll(all_held, 30, "8 persistent sessions in ch-1's /sessions")
        held = await self.held_sessions(first)
        for via in instances:
            for device in sorted(held):
                reply = await http("POST", f"{via.api}/devices/{device}/rpc", GET, content_type="application/xml")
                self.assertEqual(reply.code, 200, f"{device} on {held[device]} via {via.name}: {reply.body[:300]!r}")
                self.assertIn(b"<rpc-reply", reply.body)

        # Kill the instance holding the most persistent sessions, under load.
        victim = max(instances, key=lambda i: sum(1 for v in held.values() if v == i.name))
        survivors = [i for i in instances if i is not victim]
        during = self.load(port, 300)
        await task.deferLater(reactor, 1.0, lambda: None)
        victim.transport.signalProcess("KILL")
        await victim.ended
        await during.ended
        served_during = int(during.output.split(b" calls served")[0].rsplit(b" ", 1)[-1])
        self.assertGreaterEqual(served_during, 300 - 12, f"at most the calls in flight on {victim.name} fail: {during.output!r}")

        after = self.load(port, 200)
        await after.ended
        self.assertIn(b"200 calls served, 0 failed", after.output, after.output)

        async def rehomed() -> bool:
            now = await self.held_sessions(survivors[0])
            return len(now) == 8 and victim.name not in now.values()

        await self.poll(rehomed, LEASE + 20, f"the persistent devices of {victim.name} served elsewhere")

        async def no_claims_left() -> bool:
            return not self.sql("SELECT device FROM sessions WHERE instance = %s", victim.name)

        await self.poll(no_claims_left, LEASE + 10, f"{victim.name}'s claims gone")

        # Its results, without its files: served by the others from the database.
        shutil.rmtree(victim.results)
        (result_id, sha256), = self.sql("SELECT id, sha256 FROM results WHERE instance = %s ORDER BY id LIMIT 1", victim.name)
        for via in survivors:
            served = await http("GET", f"{via.api}/results/{result_id}")
            self.assertEqual(served.code, 200, served.body[:300])
            self.assertEqual(hashlib.sha256(served.body).hexdigest(), sha256)

    async def test_postgres_restarted_under_load(self) -> None:
        """Calls go on while the database is gone; every saved result has its row afterwards."""
        devices = self.fleet(60, 2)
        instances = [await self.instance(name, devices) for name in ("pg-1", "pg-2")]
        port = self.balancer(instances)
        await task.deferLater(reactor, 1.0, lambda: None)
        for i in range(2):
            self.held(port, i)

        async def both_held() -> bool:
            return len(await self.held_sessions(instances[0])) == 2

        await self.poll(both_held, 30, "2 persistent sessions")
        before = {s["device"]: s["id"] for s in (await http("GET", instances[0].api + "/sessions")).json()["sessions"]
                  if s["device"].startswith("held-")}
        load = self.load(port, 300, concurrency=6)
        await task.deferLater(reactor, 1.0, lambda: None)
        # Longer than the lease: every lease runs out while the database is away.
        await threads.deferToThread(self.pg.stop, "fast")
        try:
            await task.deferLater(reactor, LEASE + 2.0, lambda: None)
        finally:
            await threads.deferToThread(self.pg.start)
        await load.ended
        self.assertIn(b"300 calls served, 0 failed", load.output, load.output)
        self.assertEqual(sum(len(list(i.results.glob("sim-*/*.xml"))) for i in instances), 300)
        files = sum(len(list(i.results.rglob("*.xml"))) for i in instances)

        async def all_indexed() -> bool:
            try:
                return self.sql("SELECT count(*) FROM results")[0][0] == files
            except Exception:
                return False

        await self.poll(all_indexed, 60, "every result's row")
        logs = b"".join(i.out for i in instances)
        self.assertIn(b"database writes work again", logs)
        self.assertLessEqual(logs.count(b"cannot record sessions in the cluster database"), 2, "once per instance and outage")
        # The sessions held across the outage are the same sessions, and claimed again.
        await task.deferLater(reactor, LEASE, lambda: None)
        after = {s["device"]: s["id"] for s in (await http("GET", instances[1].api + "/sessions")).json()["sessions"]
                 if s["device"].startswith("held-")}
        self.assertEqual(after, before)
        self.assertNotIn(b"replaced by a new call", logs)
