"""
Notifications without gaps across reconnects: a persistent subscriber that
loses its session and calls again resumes with startTime = the last saved
eventTime; the replay's copies of what was saved are dropped; a device that
cannot replay leaves a notification-gap event; a replay that never
completes stops being de-duplicated after a while.  Against the simulator
in its own process (it keeps a replay log), and in memory on a clock.
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from callhome.actions import replay
from callhome.netconf import xml
from tests.service_harness import RunningService, wait_for

N = xml.NOTIFICATION_NS


def notification(when: str, body: str) -> etree._Element:
    return etree.fromstring(f'<notification xmlns="{N}"><eventTime>{when}</eventTime>{body}</notification>')


def context_with(session: Any, **extra: Any) -> Any:
    """An ActionContext for device edge on a clock; its alarms are kept in C{alarms}."""
    from callhome.actions import ActionContext

    class Device:
        name = "edge"

    alarms: list[tuple[str, str, dict[str, Any]]] = []
    context = ActionContext(device=Device(), session=session, results=None, clock=Clock(),  # type: ignore[arg-type]
                            alarm=lambda kind, message, **data: alarms.append((kind, message, data)), **extra)
    context.alarms = alarms  # type: ignore[attr-defined]
    return context


class ReplayFilterTests(SynchronousTestCase):
    """The filter between a resumed subscription and replayComplete."""

    def context(self) -> Any:
        class Session:
            closed: defer.Deferred[None] = defer.Deferred()

        return context_with(Session())

    def test_drops_what_was_saved_until_replay_complete(self) -> None:
        context, delivered = self.context(), []
        saved = notification("2026-12-06T01:00:00Z", '<beat xmlns="urn:x">7</beat>')
        seen = {replay.digest(saved)}
        flt = replay.ReplayFilter(context, "2026-12-06T01:00:00Z", seen, lambda root, raw: delivered.append(root))
        flt(notification("2026-12-06T01:00:00Z", '<beat xmlns="urn:x">7</beat>'), b"")  # the replayed copy
        flt(notification("2026-12-06T01:00:00Z", '<beat xmlns="urn:x">8</beat>'), b"")  # same time, other content
        flt(notification("2026-12-06T01:00:05Z", '<beat xmlns="urn:x">9</beat>'), b"")
        flt(notification("2026-12-06T01:00:06Z", "<replayComplete/>"), b"")
        flt(notification("2026-12-06T01:00:00Z", '<beat xmlns="urn:x">7</beat>'), b"")  # live after the replay: kept
        self.assertEqual([n.findtext(".//{urn:x}beat") for n in delivered], ["8", "9", "7"])
        self.assertEqual(flt.dropped, 1)

    def test_a_replay_that_never_completes(self) -> None:
        context, delivered = self.context(), []
        saved = notification("2026-12-06T01:00:00Z", '<beat xmlns="urn:x">7</beat>')
        flt = replay.ReplayFilter(context, "2026-12-06T01:00:00Z", {replay.digest(saved)}, lambda root, raw: delivered.append(root))
        context.clock.advance(replay.REPLAY_TIMEOUT + 1)
        self.assertEqual(context.alarms[0][0], "replay-incomplete")
        self.assertIn("no replayComplete", context.alarms[0][1])
        flt(saved, b"")
        self.assertEqual(len(delivered), 1, "no longer de-duplicated")

    def test_digest_ignores_prefixes_and_time(self) -> None:
        one = notification("2026-12-06T01:00:00Z", '<a:beat xmlns:a="urn:x">7</a:beat>')
        two = notification("2026-12-06T02:00:00Z", '<beat xmlns="urn:x">7</beat>')
        self.assertEqual(replay.digest(one), replay.digest(two))


def sequences(results: Any) -> list[int]:
    found = []
    for path in results.glob("*notification*.xml"):
        match = re.search(rb"<sequence>(\d+)</sequence>", path.read_bytes())
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


class ResumeServiceTests(RunningService):
    """A persistent subscriber loses its session and calls again: no gap, no duplicate."""

    async def test_resumes_without_gaps_or_duplicates(self) -> None:
        key, fp = self.device_key("edge")
        service = self.start(f'[{{name: edge, host_keys: ["{fp}"], mode: persistent}}]', chains="{main: [{subscribe: {}}]}")
        self.call(key, "--notify-every", "0.2", "--count", "0", "--interval", "1.5")
        results = self.tmp / "results" / "edge"
        await wait_for(lambda: len(sequences(results)) >= 4, timeout=20, what="notifications in the first session")
        first = service.manager.sessions["edge"]
        gone = await self.post("/devices/edge/disconnect")
        self.assertEqual(gone.code, 200, gone.body)
        # Away for ~1.5 s (about 7 heartbeats), then called again and resumed.
        await wait_for(lambda: "edge" in service.manager.sessions and service.manager.sessions["edge"] is not first,
                       timeout=20, what="the second session")
        await wait_for(lambda: len(sequences(results)) >= sequences(results)[0] + 14 - 1 if sequences(results) else False,
                       timeout=20, what="notifications in the second session")
        seen = sequences(results)
        self.assertEqual(seen, list(range(seen[0], seen[-1] + 1)), "contiguous: the replay filled the gap, no duplicate")
        events = (await self.get("/events?device=edge&kind=notification-gap")).json()["events"]
        self.assertEqual(events, [])


class GapTests(SynchronousTestCase):
    """A device that refuses the replay: subscribed without it, the gap recorded with its span."""

    def test_refused_replay_records_the_gap(self) -> None:
        from callhome.actions.builtin import Subscribe
        from callhome.netconf import operations as ops
        from callhome.netconf.session import RPCReply

        sent: list[etree._Element] = []
        deliver = lambda root, raw: None  # noqa: E731

        class Session:
            capabilities = [ops.CAPABILITY["notification"]]
            on_notification: Any = None
            closed: defer.Deferred[None] = defer.Deferred()

            def rpc(self, operation: etree._Element, timeout: float | None = None) -> defer.Deferred[Any]:
                sent.append(operation)
                if operation.find(f"{{{N}}}startTime") is not None:
                    error = xml.RPCError("invalid-value", "application", "error", "replay not supported", None, [], None)
                    return defer.fail(error)
                raw = b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="1"><ok/></rpc-reply>'
                return defer.succeed(RPCReply("1", raw, etree.fromstring(raw)))

        context = context_with(Session(), notifications=deliver,
                               notification_history=lambda: defer.succeed(("2026-12-06T01:00:00Z", {"x"})))
        alarms = context.alarms
        result = self.successResultOf(defer.Deferred.fromCoroutine(Subscribe()(context)))  # type: ignore[arg-type]
        self.assertEqual(result, "ok")
        self.assertEqual(len(sent), 2, "with startTime, refused; then without")
        self.assertIsNone(sent[1].find(f"{{{N}}}startTime"))
        self.assertIs(context.session.on_notification, deliver)
        (kind, message, data), = alarms
        self.assertEqual(kind, "notification-gap")
        self.assertEqual(data["gap_from"], "2026-12-06T01:00:00Z")
        self.assertIn("replay not supported", message)
