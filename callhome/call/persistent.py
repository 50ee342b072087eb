"""
What a persistent session does after its chain: keepalives (SSH) or
probes (TLS), the idle timeout, and the device's ``schedules`` (chains run
on an interval inside the session).

Schedules: each entry runs its chain every C{every} seconds.  The first run
comes at a random point of the first interval, so a fleet that calls home
at once (a reconnect storm) does not run its schedules at once; then the
period is kept.  A run still going when the next is due is not started
twice: the due run is skipped and counted.  A run is a chain run like any
other (timeouts, results saved, step metrics); a failing step ends the run,
and closes the session only when it says ``on_error: disconnect``.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from callhome.actions import ActionContext
from callhome.actions.chains import Step
from callhome.actions.runner import StepOutcome, run_chain
from callhome.call.record import Outcome
from callhome.config import Config, Device
from callhome.logs import LevelLogger
from callhome.metrics import Metrics

if TYPE_CHECKING:  # pragma: no cover
    from callhome.call.connection import CallConnection
    from callhome.netconf.session import NetconfSession


class Manager(Protocol):
    """What a persistent session needs of the manager (L{callhome.call.manager.Manager})."""

    config: Config
    clock: IReactorTime
    log: LevelLogger
    metrics: Metrics

    @property
    def chains(self) -> Mapping[str, Sequence[Step]]:
        """The config's chains, built."""

    def event(self, kind: str, message: str, device: str | None = None, **data: Any) -> None:
        """Record an event."""

    def step_context(self, device: Device, session: "NetconfSession", call_id: str) -> ActionContext:
        """A chain's context on this session."""

    def track(self, chain: defer.Deferred[Any]) -> None:
        """Keep a running chain for a graceful stop."""

    def disconnect(self, call: "CallConnection", reason: str) -> defer.Deferred[Any]:
        """Close a call's session politely."""


def keep(manager: Manager, call: "CallConnection", session: "NetconfSession", device: Device) -> None:
    """Persistent mode: keepalives, the idle timeout if the device has one, its schedules."""
    record = call.call
    if record is not None and record.transport == "tls":
        interval, missed = manager.config.tls.probe_interval, manager.config.tls.probe_max_missed
    else:
        interval, missed = manager.config.ssh.keepalive_interval, manager.config.ssh.keepalive_max_missed
    call.start_keepalive(interval, missed)
    manager.log.info(
        "persistent session with {device} open (keepalive every {interval:g}s)",
        device=device.name, interval=interval,
    )
    manager.event("session-open", f"persistent session with {device.name} open", device.name,
                  session=call.call.id if call.call else None)
    if device.idle_timeout:
        _idle_timeout(manager, call, session, device.idle_timeout)
    if device.schedules:
        Schedules(manager, call, session, device).start()


def _idle_timeout(manager: Manager, call: "CallConnection", session: "NetconfSession", idle: float) -> None:
    pending: list[Any] = []

    def check() -> None:
        pending.clear()
        quiet = manager.clock.seconds() - session.last_message_at
        if quiet >= idle:
            assert call.call is not None
            call.call.end(Outcome.IDLE_TIMEOUT, f"no NETCONF message for {idle:g}s (idle_timeout)")
            session.close()
        else:
            pending.append(manager.clock.callLater(idle - quiet, check))

    pending.append(manager.clock.callLater(idle, check))
    session.closed.addBoth(lambda _: [d.cancel() for d in pending if d.active()])


class Schedules:
    """
    The schedules of one persistent session.

    @ivar running: schedule index -> its run now going, if any.
    @ivar runs: schedule index -> runs started; C{skipped} likewise.
    """

    def __init__(self, manager: Manager, call: "CallConnection", session: "NetconfSession", device: Device,
                 offset: Callable[[float], float] = lambda every: random.uniform(0, every)) -> None:
        self.manager = manager
        self.call = call
        self.session = session
        self.device = device
        self.offset = offset
        self.timers: dict[int, Any] = {}
        self.running: dict[int, defer.Deferred[Any]] = {}
        self.runs: dict[int, int] = {}
        self.skipped: dict[int, int] = {}
        self.stopped = False

    def start(self) -> None:
        """Arm every schedule; stop them all when the session ends."""
        for index, schedule in enumerate(self.device.schedules):
            self._arm(index, self.offset(schedule.every))
        self.session.closed.addBoth(self._stop)

    def _stop(self, result: Any) -> Any:
        self.stopped = True
        for timer in self.timers.values():
            if timer.active():
                timer.cancel()
        for run in list(self.running.values()):
            run.cancel()
        return result

    def _arm(self, index: int, delay: float) -> None:
        self.timers[index] = self.manager.clock.callLater(delay, self._due, index)

    def _due(self, index: int) -> None:
        if self.stopped:
            return
        schedule = self.device.schedules[index]
        self._arm(index, schedule.every)
        metrics = self.manager.metrics.scheduled_runs
        if index in self.running:
            self.skipped[index] = self.skipped.get(index, 0) + 1
            metrics.labels(schedule.chain, "skipped").inc()
            self.manager.log.warn("schedule {chain} of {device}: the last run is still going, this one is skipped "
                                  "({count} so far)", chain=schedule.chain, device=self.device.name, count=self.skipped[index])
            return
        self.runs[index] = self.runs.get(index, 0) + 1
        record = self.call.call
        assert record is not None
        context = self.manager.step_context(self.device, self.session, record.id)
        steps = self.manager.chains[schedule.chain]
        run = run_chain(steps, context, self.manager.clock)
        self.running[index] = run
        self.manager.track(run)

        def finished(outcomes: list[StepOutcome]) -> None:
            self.running.pop(index, None)
            failed = [o for o in outcomes if not o.ok]
            metrics.labels(schedule.chain, "failed" if failed else "ok").inc()
            if not failed:
                return
            first = failed[0]
            reason = f"scheduled chain {schedule.chain}: step {first.index} {first.action}: {first.error}"
            self.manager.event("schedule-failed", reason, self.device.name, chain=schedule.chain,
                               session=record.id, step=first.index)
            if any(steps[o.index].on_error == "disconnect" for o in failed) and not self.stopped:
                record.note(reason)
                self.manager.disconnect(self.call, f"{reason} (on_error: disconnect)")

        def cut(failure: Any) -> None:
            self.running.pop(index, None)  # the session ended under it

        run.addCallbacks(finished, cut)
