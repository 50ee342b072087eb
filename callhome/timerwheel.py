"""
One reactor timer for many periodic jobs: the keepalives of 10,000 held
sessions are 10,000 ``LoopingCall``s (each a DelayedCall in the reactor's
heap, re-armed every period), or one wheel that wakes once a second and
runs the jobs due in that second.  Jobs run to the nearest C{resolution}
(a keepalive every 30 s does not mind a second; they come up to one
resolution early, never late).
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime


class TimerWheel:
    """
    Periodic jobs in one-C{resolution} slots.

    @ivar slots: slot number -> the jobs due then.
    """

    def __init__(self, clock: IReactorTime, resolution: float = 1.0) -> None:
        self.clock = clock
        self.resolution = resolution
        self.slots: dict[int, dict[int, "Job"]] = {}
        self._timer: Any = None
        self._next = 0
        self._count = 0
        self._ticking = False

    def every(self, interval: float, work: Callable[[], Any]) -> "Job":
        """Run C{work} every C{interval} seconds, the first time after one interval; cancel with the job's C{stop}."""
        self._count += 1
        job = Job(self, self._count, interval, work)
        now = self.clock.seconds()
        # The slot that starts at or before now + interval: a job may run up to
        # one resolution early, never late (a keepalive must not slip past its
        # period, or a device's idle timer could fire first).
        first = int(math.floor((now + interval) / self.resolution))
        self._put(job, max(first, int(math.floor(now / self.resolution)) + 1))
        return job

    def _slot(self, when: float) -> int:
        return int(math.floor(when / self.resolution))

    def _put(self, job: "Job", slot: int) -> None:
        job.slot = slot
        self.slots.setdefault(slot, {})[job.ident] = job
        if not self._ticking and (self._timer is None or slot < self._next):
            self._arm(slot)

    def _arm(self, slot: int) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._next = slot
        self._timer = self.clock.callLater(max(0.0, slot * self.resolution - self.clock.seconds()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._slot(self.clock.seconds())
        self._ticking = True
        try:
            for slot in sorted(s for s in self.slots if s <= now):
                for job in list(self.slots.pop(slot).values()):
                    # Re-armed before it runs: a job that stops itself just leaves.
                    self._put(job, slot + max(1, int(round(job.interval / self.resolution))))
                    job.work()
        finally:
            self._ticking = False
            if self.slots and self._timer is None:
                self._arm(min(self.slots))

    def remove(self, job: "Job") -> None:
        """Forget a job."""
        bucket = self.slots.get(job.slot)
        if bucket is not None:
            bucket.pop(job.ident, None)
            if not bucket:
                del self.slots[job.slot]
        if not self.slots and self._timer is not None and self._timer.active():
            self._timer.cancel()
            self._timer = None


class Job:
    """One periodic job of a L{TimerWheel}."""

    __slots__ = ("wheel", "ident", "interval", "work", "slot", "running")

    def __init__(self, wheel: TimerWheel, ident: int, interval: float, work: Callable[[], Any]) -> None:
        self.wheel = wheel
        self.ident = ident
        self.interval = interval
        self.work = work
        self.slot = 0
        self.running = True

    def stop(self) -> None:
        """Stop running it."""
        if self.running:
            self.running = False
            self.wheel.remove(self)


_wheels: "weakref.WeakKeyDictionary[Any, TimerWheel]" = weakref.WeakKeyDictionary()


def wheel_for(clock: IReactorTime) -> TimerWheel:
    """The wheel of a clock (one per reactor, or per test clock)."""
    wheel = _wheels.get(clock)
    if wheel is None:
        wheel = _wheels[clock] = TimerWheel(clock)
    return wheel
