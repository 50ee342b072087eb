"""
Notifications without gaps across reconnects (RFC 5277 replay).

A device that subscribed before, and calls again, is subscribed with
``startTime`` set to the ``eventTime`` of the last notification saved for
it: the device replays what it raised while it was away.  The replay starts
with that last notification again (``startTime`` is inclusive), so until
``replayComplete`` the notifications already saved (same eventTime and
content) are dropped.  A device that refuses the replay (no replay support,
a startTime older than its log) is subscribed without one, and the gap is
recorded as a ``notification-gap`` event with its time span.  A replay that
never ends with ``replayComplete`` stops being de-duplicated after
C{REPLAY_TIMEOUT} seconds (logged, an event): live notifications flow
throughout.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from lxml import etree

from callhome.actions import ActionContext
from callhome.netconf import xml

#: seconds a replay may take before de-duplication stops waiting for replayComplete.
REPLAY_TIMEOUT = 60.0

_N = "{%s}" % xml.NOTIFICATION_NS


def event_time(root: etree._Element) -> str | None:
    """A notification's eventTime, as the device wrote it."""
    text = root.findtext(_N + "eventTime")
    return text.strip() if text else None


def digest(root: etree._Element) -> str:
    """What a notification says, apart from its time, canonically: replayed copies digest alike."""
    hashed = hashlib.sha256()
    for child in root:
        if child.tag != _N + "eventTime":
            # C14N 2.0 with prefixes rewritten: a replayed copy that names its
            # namespaces differently digests alike.
            hashed.update(etree.canonicalize(etree.tostring(child).decode("utf-8"), rewrite_prefixes=True, strip_text=True).encode("utf-8"))
    return hashed.hexdigest()


def is_replay_complete(root: etree._Element) -> bool:
    """
    RFC 5277's end of a replay.  Its module puts ``replayComplete`` in
    ``urn:ietf:params:xml:ns:netmod:notification`` (netconfd does); some
    servers use the notification namespace: the local name decides.
    """
    return any(etree.QName(child).localname in ("replayComplete", "notificationComplete")
               for child in root if isinstance(child.tag, str))


class ReplayFilter:
    """
    Between a resumed subscription and its ``replayComplete``: drops the
    notifications already saved, passes the others on.
    """

    def __init__(self, context: ActionContext, since: str, seen: set[str], deliver: Callable[[Any, bytes], None]) -> None:
        self.context = context
        self.since = since
        self.seen = seen
        self.deliver = deliver
        self.replaying = True
        self.dropped = 0
        self.timer: Any = context.clock.callLater(REPLAY_TIMEOUT, self._timed_out)
        context.session.closed.addBoth(self._stop)

    def __call__(self, root: Any, raw: bytes) -> None:
        """One notification from the device."""
        if self.replaying and is_replay_complete(root):
            self.replaying = False
            self._stop(None)
            self.context.log.info("replay for {device} complete: {dropped} already saved, dropped",
                                  device=self.context.device.name, dropped=self.dropped)
            return
        if self.replaying and event_time(root) == self.since and digest(root) in self.seen:
            self.dropped += 1
            return
        self.deliver(root, raw)

    def _timed_out(self) -> None:
        self.timer = None
        if not self.replaying:
            return
        self.replaying = False
        message = f"the replay since {self.since} sent no replayComplete within {REPLAY_TIMEOUT:g}s: de-duplication stopped"
        self.context.log.warn("{device}: {message}", device=self.context.device.name, message=message)
        if self.context.alarm is not None:
            self.context.alarm("replay-incomplete", message)

    def _stop(self, result: Any) -> Any:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        return result


def history(store: Any, device: str) -> Any:
    """
    The last saved notification's eventTime for C{device}, and the digests
    of every one saved with that time: a Deferred of (time, digests), or of
    None when none was saved (or they carry no time).
    """
    d = store.query("SELECT data FROM events WHERE device = ? AND kind = 'notification' ORDER BY id DESC LIMIT 100", (device,))

    def last(rows: list[dict[str, Any]]) -> tuple[str, set[str]] | None:
        import json

        found = [json.loads(r["data"]) for r in rows if r["data"]]
        found = [f for f in found if f.get("event_time")]
        if not found:
            return None
        newest = found[0]["event_time"]
        return newest, {f["digest"] for f in found if f["event_time"] == newest and f.get("digest")}

    return d.addCallback(last)
