"""
The chain runner: one Deferred chain per session.

Each step is added with ``addCallback``, so a step runs only after the one
before it finished.  A step may return a value, a Deferred or a coroutine;
it may have a ``timeout`` (its Deferred is cancelled after that many
seconds) and ``on_error: continue`` (the chain goes on after it fails).
Every outcome is logged with the device name and kept in order, and a step's
failure never escapes the chain: the session that ran it ends normally, and
no other device's session notices.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from callhome.actions import ActionContext
from callhome.actions.plugins import check_result
from callhome.actions.chains import Step


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one step did: its result, or why it failed, and how long it took."""

    index: int
    action: str
    ok: bool
    duration: float
    result: Any = None
    error: str | None = None


def describe_failure(failure: Failure) -> str:
    """A one-line reason for a failed step, for logs and status."""
    value = failure.value
    text = str(value)
    name = type(value).__name__
    return f"{name}: {text}" if text else name


def _checked(result: Any) -> Any:
    check_result(result)
    return result


def run_chain(steps: Sequence[Step], context: ActionContext, clock: IReactorTime) -> defer.Deferred[list[StepOutcome]]:
    """
    Run C{steps} in order for one session.

    @return: a Deferred that fires with every step's L{StepOutcome} (steps
        skipped after a stopping failure have none); it never fails.
    """
    stopped = False

    def run_step(_: object, index: int, step: Step) -> defer.Deferred[None] | None:
        if stopped or context.stop:
            return None
        started = clock.seconds()
        d = defer.maybeDeferred(step.action, context)
        d.addCallback(lambda r: defer.Deferred.fromCoroutine(r) if inspect.iscoroutine(r) else r)
        d.addCallback(_checked)
        if step.timeout is not None:
            d.addTimeout(step.timeout, clock)

        def record(result: Any) -> None:
            nonlocal stopped
            duration = clock.seconds() - started
            if isinstance(result, Failure):
                if result.check(defer.TimeoutError):
                    reason = f"StepTimeout: no result within {step.timeout:g}s"
                else:
                    reason = describe_failure(result)
                outcome = StepOutcome(index, step.name, False, duration, error=reason)
                context.log.warn(
                    "step {index} {action} of {device} failed after {duration:.3f}s: {reason}",
                    index=index, action=step.name, device=context.device.name,
                    duration=duration, reason=reason,
                )
                if step.on_error in ("stop", "disconnect"):
                    stopped = True
            else:
                outcome = StepOutcome(index, step.name, True, duration, result=result)
                context.log.debug(
                    "step {index} {action} of {device} ok in {duration:.3f}s",
                    index=index, action=step.name, device=context.device.name, duration=duration,
                )
            context.outcomes.append(outcome)
            if context.step_done is not None:
                context.step_done(outcome)

        return d.addBoth(record)

    chain: defer.Deferred[Any] = defer.succeed(None)
    for index, step in enumerate(steps):
        chain.addCallback(run_step, index, step)
    chain.addCallback(lambda _: context.outcomes)
    return chain
