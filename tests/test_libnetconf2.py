"""
TLS call home against a NETCONF server we did not write: Debian's
libnetconf2 2.0.x is the device (tests/libnetconf2_peer.py builds and runs
tests/peers/nc_tls_callhome.c), the real service the manager, on loopback.
libnetconf2 dials out, is the TLS server, checks our certificate (its
trusted list, then cert-to-name) and speaks NETCONF; we are the TLS and
NETCONF client (RFC 8071 §4, RFC 7589).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest

from tests import libnetconf2_peer
from tests.libnetconf2_peer import Libnetconf2Device
from tests.service_harness import RunningService, free_port, wait_for
from tests.tls_certs import issue

_SKIP = libnetconf2_peer.available()

#: The username libnetconf2's cert-to-name maps our certificate's fingerprint to.
USERNAME = "callhome-admin"
#: The namespace of the driver's data (tests/peers/nc_tls_callhome.c).
DATA_NS = "urn:example:callhome:libnetconf2-peer"


class Libnetconf2TlsTests(RunningService):
    """The service and a libnetconf2 device calling it over TLS."""

    timeout = 90

    def setUp(self) -> None:
        if _SKIP is not None:
            raise SkipTest(_SKIP)
        super().setUp()
        try:
            libnetconf2_peer.build()
        except RuntimeError as e:  # the tools are there: a build that fails is a failure, not a skip
            self.fail(str(e))
        certs = self.tmp / "certs"
        self.manager_cert = issue("callhome-manager")
        self.manager_pem, self.manager_key_pem = self.manager_cert.write(certs, "manager")
        self.device_cert = issue("lnc2-device", names=("lnc2-device.example.net",))
        self.device_pem, self.device_key_pem = self.device_cert.write(certs, "device")
        self.hostname = f"lnc2-{uuid.uuid4().hex[:8]}"

    def start_service(self, mode: str = "periodic", extra: str = "",
                      chains: str = "{main: [{get: {}}, {get-config: {source: running}}]}") -> None:
        """The service with a TLS listener and the device known by its certificate's fingerprint."""
        self.tls_port = free_port()
        identity = f"tls_certificate: {self.manager_pem}, tls_private_key: {self.manager_key_pem}"
        self.start(
            f'[{{name: lnc2, certificates: ["{self.device_cert.fingerprint}"], mode: {mode}, {identity}}}]',
            chains=chains,
            extra=f'listen_tls: ["tcp:{self.tls_port}:interface=127.0.0.1"]\n{extra}',
        )

    async def device(self, mode: str = "periodic", sessions: int = 0, trusted: Path | None = None) -> Libnetconf2Device:
        """The libnetconf2 device, calling the service until it has served C{sessions} (0: until stopped)."""
        device = Libnetconf2Device(
            self.tmp / "lnc2", self.tls_port, self.device_pem, self.device_key_pem,
            trusted or self.manager_pem, self.manager_cert.fingerprint, username=USERNAME,
            mode=mode, hostname=self.hostname, sessions=sessions,
        )
        # Cleanups run last-in first-out: the device stops (SIGTERM: it stops
        # calling and closes its sessions) before the service does.
        self.addCleanup(device.stop)
        device.start()
        await wait_for(device.ready, timeout=15, what="nc_tls_callhome ready")
        return device

    def saved(self, action: str) -> str:
        files = sorted((self.tmp / "results" / "lnc2").glob(f"*-{action}.xml"))
        self.assertEqual(len(files), 1, f"one {action} result: {files}")
        return files[0].read_text()

    def served_call(self) -> str | None:
        """The id of the device's call whose chain has run, if it has one."""
        call = self.service.manager.sessions.get("lnc2")
        record = call.call if call is not None else None
        return record.id if record is not None and record.steps else None

    async def call_events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = (await self.get("/events?kind=call")).json()["events"]
        return events

    async def test_periodic_call_runs_the_chain(self) -> None:
        """get and get-config on libnetconf2: saved with the device's data; the call ends ok with close-session."""
        self.start_service()
        device = await self.device(sessions=1)
        manager = self.service.manager
        await wait_for(lambda: manager.counts["ok"] == 1, timeout=30, what=f"the call to end ok\n{device.log()}")
        self.assertEqual(sum(manager.counts.values()), 1, manager.counts)
        get, get_config = self.saved("get"), self.saved("get-config")
        # <get>: config and state; the state names the user cert-to-name gave us.
        self.assertIn(f'<device xmlns="{DATA_NS}"><hostname>{self.hostname}</hostname>', get)
        self.assertIn(f"<tls-username>{USERNAME}</tls-username>", get)
        self.assertRegex(get, r"<netconf-session-id>\d+</netconf-session-id>")
        # <get-config>: config only.
        self.assertIn(f'<device xmlns="{DATA_NS}"><hostname>{self.hostname}</hostname>', get_config)
        self.assertNotIn("<state>", get_config)
        # libnetconf2 answered our close-session and ended the session; the
        # driver then exits (sessions=1).
        await wait_for(lambda: device.returncode is not None, timeout=15, what=f"the device to exit\n{device.log()}")
        self.assertEqual(device.returncode, 0, device.log())
        log = device.log()
        self.assertIn("Cert verify CTN: entry with a matching fingerprint found", log)
        self.assertIn(f'username recognized as "{USERNAME}"', log)
        self.assertIn("session 1 ended (closed by <close-session>)", log)
        events = await self.call_events()
        self.assertEqual(len(events), 1, events)
        self.assertEqual(events[0]["device"], "lnc2")
        self.assertEqual((events[0]["data"]["outcome"], events[0]["data"]["transport"]), ("ok", "tls"))
        self.assertEqual(events[0]["data"]["fingerprint"], self.device_cert.fingerprint)
        self.assertEqual([(s["action"], s["ok"]) for s in events[0]["data"]["steps"]], [("get", True), ("get-config", True)])
        info = (await self.get("/devices/lnc2")).json()
        self.assertEqual((info["calls"], info["last_error"]), (1, None), info)

    async def test_end_of_message_framing(self) -> None:
        """Offering only base:1.0, the session with libnetconf2 (which offers 1.0 and 1.1) uses ]]>]]> framing."""
        # Held by us (mode: persistent) so /sessions shows it; libnetconf2's
        # periodic connection does not call again when it ends.
        self.start_service("persistent", extra="netconf: {offer_base_1_1: false}\n", chains="{main: [{get: {}}]}")
        device = await self.device(sessions=1)
        await self.session_of("lnc2")
        sessions = (await self.get("/sessions")).json()["sessions"]
        self.assertEqual([(s["device"], s["framing"]) for s in sessions], [("lnc2", "base:1.0")])
        self.assertIn(f"<tls-username>{USERNAME}</tls-username>", self.saved("get"))
        reply = await self.post("/devices/lnc2/rpc", b'{"get-config": {"source": "running"}}', content_type="application/json")
        self.assertIn(f"<hostname>{self.hostname}</hostname>", reply.json()["reply"])
        self.assertEqual((await self.post("/devices/lnc2/disconnect")).code, 200)
        await wait_for(lambda: device.returncode is not None, timeout=15, what=f"the device to exit\n{device.log()}")
        self.assertIn("session 1 ended (closed by <close-session>)", device.log())
        manager = self.service.manager
        await wait_for(lambda: not manager.active, timeout=15, what="the call to end")
        self.assertEqual(dict(manager.counts), {"ok": 1}, f"{(await self.get('/events')).body.decode()}\n{device.log()}")

    async def test_persistent_session_probed_and_used_through_the_api(self) -> None:
        """A held session: libnetconf2 answers the keepalive probes, the session lives, the API runs RPCs on it."""
        self.start_service("persistent", extra="tls: {probe_interval: 1, probe_max_missed: 3}\n",
                           chains="{main: [{get-config: {source: running}}]}")
        device = await self.device("persistent")
        manager = self.service.manager
        await self.session_of("lnc2")
        call = manager.sessions["lnc2"]
        assert call.call is not None
        first = call.call.id
        # The probe is <get> with an empty subtree filter; the driver logs each one it answered (with <data/>).
        await wait_for(lambda: device.count("probe answered") >= 3, timeout=30, what=f"3 probes answered\n{device.log()}")
        probe = call.keepalive
        assert probe is not None
        self.assertGreaterEqual(probe.sent, 3)
        self.assertLess(probe.missed, 3)
        # One session all along: no call ended, none replaced it.
        self.assertIs(manager.sessions["lnc2"], call)
        self.assertEqual(sum(manager.counts.values()), 0, manager.counts)
        self.assertEqual(device.count("established with call-home client"), 1)
        sessions = (await self.get("/sessions")).json()["sessions"]
        self.assertEqual([(s["device"], s["transport"], s["framing"]) for s in sessions], [("lnc2", "tls", "base:1.1")])

        # RPCs through the API on the live session: an XML operation, a JSON action.
        reply = await self.post("/devices/lnc2/rpc", b'<get xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"/>',
                                content_type="application/xml")
        self.assertEqual(reply.code, 200, reply.body)
        self.assertIn(f"<hostname>{self.hostname}</hostname>".encode(), reply.body)
        self.assertIn(f"<tls-username>{USERNAME}</tls-username>".encode(), reply.body)
        action = await self.post("/devices/lnc2/rpc", b'{"get-config": {"source": "running"}}', content_type="application/json")
        self.assertEqual(action.code, 200, action.body)
        answer = action.json()
        self.assertTrue(answer["ok"], answer)
        self.assertIn(f"<hostname>{self.hostname}</hostname>", answer["reply"])
        self.assertNotIn("<state>", answer["reply"])
        # The probe itself: an empty subtree filter selects nothing.
        probed = await self.post("/devices/lnc2/rpc", b'<get xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                 b'<filter type="subtree"/></get>', content_type="application/xml")
        self.assertEqual((probed.code, probed.header("X-Netconf-Outcome")), (200, "ok"), probed.body)
        self.assertRegex(probed.body, rb"<data/>|<data></data>")
        # What the device does not do: libnetconf2 sends our callback's rpc-error.
        refused = await self.post("/devices/lnc2/rpc", b'<lock xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                  b"<target><running/></target></lock>", content_type="application/xml")
        self.assertEqual((refused.code, refused.header("X-Netconf-Outcome")), (200, "rpc-error"), refused.body)
        self.assertIn(b"<error-tag>operation-not-supported</error-tag>", refused.body)
        self.assertIs(manager.sessions["lnc2"], call)
        metrics = (await self.get("/metrics")).body.decode()
        self.assertIn('callhome_calls_accepted_total{transport="tls"} 1.0', metrics)

        # Closed through the API: libnetconf2 answers our close-session and,
        # its connection being persistent, calls again at once.
        disconnected = await self.post("/devices/lnc2/disconnect")
        self.assertEqual(disconnected.code, 200, disconnected.body)
        await wait_for(lambda: self.served_call() not in (None, first), timeout=30,
                       what=f"the device to call again\n{device.log()}")
        self.assertIn("session 1 ended (closed by <close-session>)", device.log())
        self.assertEqual(device.count("established with call-home client"), 2)
        second = self.served_call()

        # SIGTERM: the device stops calling and closes its session; the call ends ok.
        device.terminate()
        await wait_for(lambda: device.returncode is not None, timeout=15, what=f"the device to exit\n{device.log()}")
        self.assertEqual(device.returncode, 0, device.log())
        await wait_for(lambda: "lnc2" not in manager.sessions, timeout=30, what="the second call to end")
        self.assertEqual(sum(manager.counts.values()), 2, manager.counts)
        outcomes = {e["data"]["session"]: e["data"]["outcome"] for e in await self.call_events()}
        self.assertEqual(outcomes.keys(), {first, second})
        self.assertEqual(outcomes[second], "ok")

    async def test_device_refusing_our_certificate(self) -> None:
        """libnetconf2 trusts another certificate: its TLS alert is the call's reason, in status and events."""
        self.start_service()
        stranger_pem, _ = issue("someone-else").write(self.tmp / "certs", "stranger")
        device = await self.device(trusted=stranger_pem)
        manager = self.service.manager
        await wait_for(lambda: manager.counts["auth-failed"] >= 1, timeout=30, what=f"a refused call\n{device.log()}")
        # libnetconf2 would try again every second: stop it, let the calls end.
        device.terminate()
        await wait_for(lambda: device.returncode is not None, timeout=15, what=f"the device to exit\n{device.log()}")
        self.assertEqual(device.returncode, 0, device.log())
        await wait_for(lambda: not manager.active, timeout=15, what="the calls to end")
        self.assertEqual(manager.counts["ok"], 0)
        # libnetconf2's side: our self-signed certificate is not in its trusted list.
        self.assertIn("Cert verify: fail (self-signed certificate)", device.log())
        why = re.compile(r"^the device refused our certificate \(TLS alert received: .*alert unknown ca\)$")
        refused = [e for e in await self.call_events() if e["data"]["outcome"] == "auth-failed"]
        self.assertTrue(refused)
        self.assertEqual(refused[0]["device"], "lnc2")
        self.assertRegex(refused[0]["data"]["reason"], why)
        self.assertIn("unknown ca", refused[0]["message"])
        info = (await self.get("/devices/lnc2")).json()
        self.assertEqual(info["status"], "failed-auth", info)
        self.assertRegex(info["last_error"] or "", why)
        metrics = (await self.get("/metrics")).body.decode()
        self.assertRegex(metrics, r'callhome_calls_finished_total\{outcome="auth-failed",transport="tls"\} [1-9]')
        self.assertFalse(list((self.tmp / "results").glob("lnc2/*")), "nothing saved")
