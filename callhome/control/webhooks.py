"""
Webhook alerts (``alerts:``) for operators without Prometheus: each event
a target asked for is posted to it as one JSON object.

A call never waits for a webhook: an event is put in the target's queue
(bounded: past C{MAX_QUEUED} the oldest is dropped, and counted) and the
target's one sender posts them in order.  A post that fails (connection
refused, timeout, a status other than 2xx) is retried with a growing delay
(C{RETRY_DELAYS}); after the last retry the event is dropped, counted and
logged.  A target that hangs or answers 500 holds only its own queue.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from io import BytesIO
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from callhome.config.model import AlertTarget
from callhome.logs import LevelLogger
from callhome.reactor import IServiceReactor

#: events kept waiting per target; past this the oldest is dropped.
MAX_QUEUED = 1000
#: seconds before each retry of a failed post; after the last, the event is dropped.
RETRY_DELAYS = (1.0, 5.0, 30.0)


def alert_name(kind: str, data: dict[str, Any] | None) -> str | None:
    """Which alert an event is (L{callhome.config.model.ALERT_EVENTS}), if any."""
    if kind == "call":
        outcome = (data or {}).get("outcome")
        if outcome in ("auth-failed", "certificate-refused"):
            return "auth-failed"
        return "call-failed" if outcome not in (None, "ok", "replaced", "disconnected") else None
    return kind


@dataclass
class TargetState:
    """One webhook's queue and counts."""

    target: AlertTarget
    queue: deque[dict[str, Any]] = field(default_factory=deque)
    sending: bool = False
    sent: int = 0
    dropped: int = 0
    failed_posts: int = 0


class Webhooks(Service):
    """Posts events to the configured webhooks (a service: it stops its retries when stopped)."""

    log = LevelLogger(namespace="callhome.alerts")

    def __init__(self, targets: tuple[AlertTarget, ...], reactor: IServiceReactor, instance: str | None = None) -> None:
        self.reactor = reactor
        self.instance = instance
        self.targets = [TargetState(t) for t in targets]
        self.agent = Agent(reactor)
        self._in_flight: set[defer.Deferred[Any]] = set()

    def event(self, kind: str, message: str, device: str | None, data: dict[str, Any] | None, when: float) -> None:
        """An event was recorded: queue it for every target that asked for it (never blocks)."""
        name = alert_name(kind, data)
        if name is None:
            return
        body: dict[str, Any] | None = None
        for state in self.targets:
            if name not in state.target.events:
                continue
            if body is None:
                body = {
                    "event": name, "kind": kind, "device": device, "message": message,
                    "time": datetime.fromtimestamp(when, timezone.utc).isoformat().replace("+00:00", "Z"),
                    "data": data or {},
                }
                if self.instance is not None:
                    body["instance"] = self.instance
            if len(state.queue) >= MAX_QUEUED:
                state.queue.popleft()
                self._dropped(state, "its queue is full")
            state.queue.append(body)
            if not state.sending and self.running:
                self._send_next(state)

    def startService(self) -> None:
        """Send what was queued before the service ran."""
        super().startService()
        for state in self.targets:
            if state.queue and not state.sending:
                self._send_next(state)

    def stopService(self) -> None:
        """Stop posting: requests in flight are cancelled; what is still queued is lost (said once)."""
        super().stopService()
        for d in list(self._in_flight):
            d.cancel()
        waiting = sum(len(s.queue) for s in self.targets)
        if waiting:
            self.log.warn("stopping with {count} webhook events not delivered", count=waiting)

    def _send_next(self, state: TargetState) -> None:
        if not state.queue or not self.running:
            state.sending = False
            return
        state.sending = True
        d = self._deliver(state, state.queue[0], 0)

        def done(_: object) -> None:
            if state.queue:
                state.queue.popleft()
            self._send_next(state)

        d.addBoth(done)

    @defer.inlineCallbacks
    def _deliver(self, state: TargetState, body: dict[str, Any], attempt: int) -> Any:
        """Post one event, retrying; fires when it is delivered or dropped."""
        while True:
            error = yield self._post(state.target, body)
            if error is None:
                state.sent += 1
                return
            state.failed_posts += 1
            if attempt >= len(RETRY_DELAYS) or not self.running:
                self._dropped(state, f"{len(RETRY_DELAYS) + 1} posts failed, the last: {error}")
                return
            if attempt == 0:
                self.log.warn("webhook {url} failed ({error}): retrying", url=state.target.url, error=error)
            yield task.deferLater(self.reactor, RETRY_DELAYS[attempt], lambda: None)
            attempt += 1

    def _post(self, target: AlertTarget, body: dict[str, Any]) -> defer.Deferred[str | None]:
        """One POST; fires with None when the target took it, else why not."""
        headers = Headers({"Content-Type": ["application/json"], "User-Agent": ["callhome"]})
        if target.token is not None:
            headers.addRawHeader("Authorization", f"Bearer {target.token}")
        producer = FileBodyProducer(BytesIO(json.dumps(body).encode("utf-8")))
        d: defer.Deferred[Any] = self.agent.request(b"POST", target.url.encode("ascii"), headers, producer)
        d.addTimeout(target.timeout, self.reactor)
        self._in_flight.add(d)

        def settled(result: Any) -> Any:
            self._in_flight.discard(d)
            return result

        d.addBoth(settled)

        def answered(response: Any) -> Any:
            # Read (and discard) the body so the connection ends cleanly.
            reading = readBody(response)
            reading.addTimeout(target.timeout, self.reactor)
            status = response.code
            return reading.addBoth(lambda _: None if 200 <= status < 300 else f"HTTP {status}")

        def failed(failure: Any) -> str:
            if failure.check(defer.CancelledError):
                return "cancelled: the service is stopping"
            if failure.check(defer.TimeoutError):
                return f"no answer within {target.timeout:g}s"
            return failure.getErrorMessage() or failure.type.__name__

        return d.addCallbacks(answered, failed)

    def _dropped(self, state: TargetState, why: str) -> None:
        state.dropped += 1
        self.log.error("webhook {url}: an event was dropped ({why}); {count} so far",
                       url=state.target.url, why=why, count=state.dropped)

    def counts(self) -> dict[str, int]:
        """Sent, dropped and failed posts over every target (metrics)."""
        return {
            "sent": sum(s.sent for s in self.targets),
            "dropped": sum(s.dropped for s in self.targets),
            "failed_posts": sum(s.failed_posts for s in self.targets),
            "queued": sum(len(s.queue) for s in self.targets),
        }
