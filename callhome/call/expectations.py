"""
Expected calls: which devices did *not* call.

A device with ``expect_call_every`` (device, group or defaults) that has not
called for that long plus ``expect_grace``, and holds no session now, is
``overdue``: its status says so, an ``overdue`` event is recorded when it
becomes overdue and an ``overdue-ended`` one when it calls again.

The reference time is the device's stored last call (so it survives a
restart), the end of its last persistent session when that is later, and
for a device that never called, the time the service started: a fresh
service does not call its whole fleet overdue at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime

from callhome.logs import LevelLogger

if TYPE_CHECKING:  # pragma: no cover
    from callhome.call.manager import Manager
    from callhome.config import Device

#: seconds between two checks.
CHECK_INTERVAL = 5.0

#: the status and event kinds.
OVERDUE = "overdue"
OVERDUE_ENDED = "overdue-ended"


class Expectations(Service):
    """
    Watches the devices that are expected to call (a service: it checks
    every C{CHECK_INTERVAL} seconds while it runs).

    @ivar overdue: device name -> since when it is overdue.
    @ivar held_until: device name -> when its last persistent session ended.
    """

    log = LevelLogger(namespace="callhome.expectations")

    def __init__(self, manager: "Manager", clock: IReactorTime) -> None:
        self.manager = manager
        self.clock = clock
        self.started = clock.seconds()
        self.overdue: dict[str, float] = {}
        self.held_until: dict[str, float] = {}
        #: whether this process decides who is overdue (in a cluster, one
        #: instance does: the others mirror the statuses it writes).
        self.deciding: Callable[[], bool] = lambda: True
        # Overdue before a restart: still overdue, without a second event.
        for name, status in manager.registry.status.items():
            if status.status == OVERDUE:
                self.overdue[name] = self.started

    def startService(self) -> None:
        """Check every few seconds."""
        super().startService()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(CHECK_INTERVAL, now=False)

    def stopService(self) -> None:
        """Stop checking."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def last_call(self, name: str) -> float | None:
        """When the device last called (or last held a session), if it ever did."""
        status = self.manager.registry.status.get(name)
        seen = status.last_seen if status is not None else None
        held = self.held_until.get(name)
        if name in self.manager.sessions:
            return self.clock.seconds()
        candidates = [t for t in (seen, held) if t is not None]
        return max(candidates) if candidates else None

    def check(self) -> None:
        """Mark devices overdue, or no longer overdue (run every few seconds)."""
        now = self.clock.seconds()
        registry = self.manager.registry
        if not self.deciding():
            # Another instance decides; our registry mirrors its statuses.
            self.overdue = {name: self.overdue.get(name, now) for name, status in registry.status.items() if status.status == OVERDUE}
            return
        for name in self.manager.sessions:
            # Seen holding a session now: a persistent device's "last call"
            # runs until its session ends (to within one check).
            self.held_until[name] = now
        for device in registry.devices():
            name = device.name
            status = registry.status.get(name)
            if name in self.overdue and (name in self.manager.sessions or (status is not None and status.status != OVERDUE)):
                self._ended(name, now)
                continue
            limit = device.overdue_after
            if limit is None or name in self.overdue or name in self.manager.sessions:
                continue
            last = self.last_call(name)
            reference = last if last is not None else self.started
            if now - reference > limit:
                self._became_overdue(device, now, last, limit)

    def _became_overdue(self, device: "Device", now: float, last: float | None, limit: float) -> None:
        name = device.name
        self.overdue[name] = now
        every = device.expect_every
        if last is None:
            message = f"device {name} has not called since the service started {now - self.started:.0f}s ago (expected every {every:g}s)"
        else:
            message = f"device {name} has not called for {now - last:.0f}s (expected every {every:g}s)"
        self.manager.registry.transition(device, OVERDUE, error=message)
        self.log.warn("{message}", message=message)
        self.manager.event(OVERDUE, message, name, expected_every=every, last_call=last)

    def _ended(self, name: str, now: float) -> None:
        since = self.overdue.pop(name)
        message = f"device {name} called again after {now - since:.0f}s overdue"
        self.log.info("{message}", message=message)
        self.manager.event(OVERDUE_ENDED, message, name, overdue_seconds=round(now - since, 3))

    def count(self) -> int:
        """Devices overdue now."""
        return len(self.overdue)

    def last_calls(self) -> list[tuple[str, float]]:
        """Every device's last call that is known (for the per-device metric)."""
        found = []
        for device in self.manager.registry.devices():
            last = self.last_call(device.name)
            if last is not None:
                found.append((device.name, last))
        return found

    def by_status(self) -> list[tuple[str, float]]:
        """How many devices have each status (``never-called``: no call yet)."""
        counts: dict[str, float] = {}
        for device in self.manager.registry.devices():
            status = self.manager.registry.status.get(device.name)
            key = status.status if status is not None else "never-called"
            counts[key] = counts.get(key, 0) + 1
        return sorted(counts.items())
