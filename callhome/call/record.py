"""
A call's record: its lifecycle, in one place.

The states a call goes through (:class:`CallState`) and the ways it can end
(:class:`Outcome`) are enums whose values are the strings the log line, the
events, the API and the metrics have always shown.  Everything that ends a
call goes through :meth:`CallRecord.end`, where the "first reason wins"
rule lives; :meth:`CallRecord.advance` moves the state forward and refuses
to go back; :meth:`CallRecord.finish` closes the record when the
connection is gone.  The record belongs to the call, not to its transport:
an SSH and a TLS call end the same way.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from callhome.config import Device


class CallState(enum.StrEnum):
    """Where a call is, in the order a call goes through them."""

    #: TCP accepted; key exchange and host-key proof under way.
    SECURING = "securing"
    #: the device is identified; we log in with its credentials.
    AUTHENTICATING = "authenticating"
    #: logged in; opening the NETCONF channel.
    CHANNELLING = "channelling"
    #: waiting for the device's hello.
    HELLO = "hello"
    #: the NETCONF session is up: the chain runs (and a persistent session is held).
    RUNNING = "running"
    #: the connection is gone.
    DONE = "done"


_ORDER = list(CallState)


class Outcome(enum.StrEnum):
    """How a call ended (``open`` while it has not)."""

    OPEN = "open"
    OK = "ok"
    CHAIN_FAILED = "chain-failed"
    UNKNOWN_HOST_KEY = "unknown-host-key"
    #: TLS: a certificate no device pins (or no trusted CA's device names).
    UNKNOWN_CERTIFICATE = "unknown-certificate"
    #: TLS: a certificate that does not identify a device: expired, not yet valid, untrusted, wrong name.
    CERTIFICATE_REFUSED = "certificate-refused"
    DUPLICATE_REFUSED = "duplicate-refused"
    NOT_ALLOWED = "not-allowed"
    AUTH_FAILED = "auth-failed"
    HANDSHAKE_FAILED = "handshake-failed"
    SESSION_FAILED = "session-failed"
    #: no NETCONF session within ssh.handshake_timeout.
    TIMEOUT = "timeout"
    IDLE_TIMEOUT = "idle-timeout"
    KEEPALIVE_TIMEOUT = "keepalive-timeout"
    REPLACED = "replaced"
    DISCONNECTED = "disconnected"

    @property
    def is_refusal(self) -> bool:
        """A refusal by policy (counted with admission's refusals)."""
        return self in _REFUSALS

    @property
    def status(self) -> str:
        """The registry status a device has after a call that ended so."""
        return _STATUS_AFTER.get(self, "disconnected")

    @classmethod
    def of_unfinished(cls, state: CallState) -> "Outcome":
        """The outcome of a call that lost its connection in C{state} without one."""
        if state is CallState.SECURING:
            return cls.HANDSHAKE_FAILED
        if state is CallState.AUTHENTICATING:
            return cls.AUTH_FAILED
        return cls.SESSION_FAILED


_REFUSALS = frozenset([
    Outcome.UNKNOWN_HOST_KEY, Outcome.UNKNOWN_CERTIFICATE, Outcome.CERTIFICATE_REFUSED,
    Outcome.DUPLICATE_REFUSED, Outcome.NOT_ALLOWED,
])
_STATUS_AFTER = {Outcome.AUTH_FAILED: "failed-auth", Outcome.NOT_ALLOWED: "failed-not-allowed"}


@dataclass(eq=False, slots=True)
class CallRecord:
    """
    What we know about one call; the call's log line and status come from it.

    @ivar state: where the call is (L{CallState}).
    @ivar outcome: how it ended (L{Outcome.OPEN} until it has).
    @ivar reason: why it ended, when it ended early or badly; the first
        reason given wins.
    """

    peer: str
    started: float
    source: str = ""
    #: ``ssh`` or ``tls``: how the device called.
    transport: str = "ssh"
    state: CallState = CallState.SECURING
    authenticated: bool = False
    fingerprint: str | None = None
    key_type: str | None = None
    device: "Device | None" = None
    reason: str | None = None
    outcome: Outcome = Outcome.OPEN
    #: the chain's step outcomes (L{callhome.actions.runner.StepOutcome}).
    steps: list[Any] = field(default_factory=list)
    #: this call's id: tags its results and events (unique across restarts).
    id: str = field(default_factory=lambda: next_call_id())

    def advance(self, state: CallState) -> None:
        """
        Move to a later state.

        @raises ValueError: going back (a bug, not a device's doing).
        """
        if _ORDER.index(state) < _ORDER.index(self.state):
            raise ValueError(f"call {self.id}: cannot go from {self.state} back to {state}")
        self.state = state

    def end(self, outcome: Outcome, reason: str | None = None) -> None:
        """
        Say how the call ends and why.  The first reason wins.  The first
        outcome wins too, with one exception: L{Outcome.OK} is the chain's
        verdict, and a session held open after it (persistent mode) that is
        then replaced, dropped by keepalives or timed out ends with that
        outcome instead; a plain disconnect leaves it OK.
        """
        if self.outcome is Outcome.OPEN or (
            self.outcome is Outcome.OK and outcome is not Outcome.DISCONNECTED and self.state is not CallState.DONE
        ):
            self.outcome = outcome
        self.note(reason)

    def note(self, reason: str | None) -> None:
        """Keep C{reason} as why the call ends, unless one was given first."""
        if self.reason is None and reason is not None:
            self.reason = reason

    def finish(self) -> Outcome:
        """The connection is gone: settle the outcome (from the state, if none was given)."""
        if self.outcome is Outcome.OPEN:
            self.outcome = Outcome.of_unfinished(self.state)
        self.state = CallState.DONE
        return self.outcome


_BOOT = f"{int(time.time()):x}"
_call_prefix = _BOOT
_call_numbers = itertools.count(1)


def next_call_id() -> str:
    """
    A new call id: the service's start time and a counter, e.g. 6745a1b2-17;
    a worker process adds its number (6745a1b2w1-17), so ids stay unique
    across the processes sharing one database.
    """
    return f"{_call_prefix}-{next(_call_numbers)}"


def set_worker(index: int, boot: str | None = None) -> None:
    """Make this process's call ids those of worker C{index} (0: the main process)."""
    global _call_prefix
    base = boot or _BOOT
    _call_prefix = base if index == 0 else f"{base}w{index}"
