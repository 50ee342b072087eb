"""
Admission control: what a connection must get past before it costs us more.

A call-home port is reachable by anything on the management network
(RFC 8071 §5).  Two checks run when a connection is accepted, before any
SSH work:

* limits on connections that have not yet authenticated, in all and per
  source address (a flood of silent connections cannot exhaust the manager
  or crowd out other sources; the handshake timeout clears them);
* per-source-address blocking: an address whose calls failed before
  authentication ``failed_auth_limit`` times within ``failed_auth_window``
  seconds is refused for ``block_seconds``.

Refusals are counted by reason; they are logged once per block, not once
per connection, so a flood cannot flood the log either.
"""

from __future__ import annotations

from collections import Counter, deque

from twisted.internet.interfaces import IReactorTime

from callhome.logs import LevelLogger
from callhome.config import AdmissionSettings

#: Sources tracked at most; the oldest are forgotten first (a spoofing-free
#: TCP source cannot make this grow faster than connections arrive anyway).
MAX_TRACKED_SOURCES = 100_000


class Admission:
    """
    Counts pending handshakes and failures per source; decides admission.

    @ivar pending: connections accepted and not yet authenticated.
    @ivar refused: refusals by reason (``too-many-pending``,
        ``too-many-pending-from-source``, ``blocked``).
    """

    log = LevelLogger(namespace="callhome.call.admission")

    def __init__(self, settings: AdmissionSettings, clock: IReactorTime) -> None:
        self.settings = settings
        self.clock = clock
        self.pending = 0
        self._pending_by_source: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._failures: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}

    def admit(self, source: str) -> str | None:
        """Return None to accept a connection from C{source}, or why not."""
        until = self._blocked_until.get(source)
        if until is not None:
            if until > self.clock.seconds():
                self.refused["blocked"] += 1
                return "blocked"
            del self._blocked_until[source]
        if self.pending >= self.settings.max_pending:
            self.refused["too-many-pending"] += 1
            if self.refused["too-many-pending"] % 100 == 1:
                self.log.warn(
                    "refusing calls: {pending} connections are still unauthenticated "
                    "(admission.max_pending); {count} refused so far",
                    pending=self.pending, count=self.refused["too-many-pending"],
                )
            return "too-many-pending"
        if self._pending_by_source[source] >= self.settings.max_pending_per_source:
            self.refused["too-many-pending-from-source"] += 1
            return "too-many-pending-from-source"
        self.pending += 1
        self._pending_by_source[source] += 1
        return None

    def _done_pending(self, source: str) -> None:
        self.pending -= 1
        self._pending_by_source[source] -= 1
        if self._pending_by_source[source] <= 0:
            del self._pending_by_source[source]

    def authenticated(self, source: str) -> None:
        """An admitted connection authenticated: it no longer counts as pending."""
        self._done_pending(source)

    def failed_before_auth(self, source: str) -> None:
        """
        An admitted connection ended before authenticating: it no longer
        counts as pending, and its source gets a failure.
        """
        self._done_pending(source)
        now = self.clock.seconds()
        window = self._failures.get(source)
        if window is None:
            if len(self._failures) >= MAX_TRACKED_SOURCES:
                self._failures.pop(next(iter(self._failures)))
            window = self._failures[source] = deque()
        window.append(now)
        while window and window[0] <= now - self.settings.failed_auth_window:
            window.popleft()
        if len(window) >= self.settings.failed_auth_limit:
            self._blocked_until[source] = now + self.settings.block_seconds
            del self._failures[source]
            self.log.warn(
                "blocking {source} for {seconds:g}s after {count} failed calls within {window:g}s",
                source=source, seconds=self.settings.block_seconds,
                count=self.settings.failed_auth_limit, window=self.settings.failed_auth_window,
            )

    def blocked(self) -> dict[str, float]:
        """Sources blocked now, with the time their block ends."""
        now = self.clock.seconds()
        return {s: t for s, t in self._blocked_until.items() if t > now}

    def prune(self) -> None:
        """Forget expired blocks and failure windows (called periodically)."""
        now = self.clock.seconds()
        for source in [s for s, t in self._blocked_until.items() if t <= now]:
            del self._blocked_until[source]
        horizon = now - self.settings.failed_auth_window
        for source in [s for s, w in self._failures.items() if not w or w[-1] <= horizon]:
            del self._failures[source]
