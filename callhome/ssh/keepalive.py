"""
SSH keepalives for persistent sessions.

Every ``interval`` seconds we send ``keepalive@openssh.com`` with want-reply
(the way OpenSSH's ``ServerAliveInterval`` does).  Any answer, success or
failure, proves the device alive.  After ``max_missed`` unanswered requests
the call is ended with a reason, so a device that vanished behind a NAT
does not hold a session for ever.
"""

from __future__ import annotations

from typing import Callable

from twisted.conch.ssh import common
from twisted.internet.interfaces import IReactorTime

from callhome.ssh.connection import CallHomeConnection
from callhome.timerwheel import Job, wheel_for

KEEPALIVE_REQUEST = b"keepalive@openssh.com"
#: The global request's payload, built once: name, want-reply, no data.
KEEPALIVE_PAYLOAD = common.NS(KEEPALIVE_REQUEST) + b"\xff"

class Keepalive:
    """
    Sends keepalives on one SSH connection and counts the unanswered ones.

    @ivar missed: keepalives sent and not answered.
    @ivar sent: keepalives sent in all.
    """

    # One per held session: no per-instance dict.
    __slots__ = ("conn", "interval", "max_missed", "on_dead", "on_tick", "missed", "sent", "clock", "_job")

    def __init__(
        self,
        conn: CallHomeConnection,
        clock: IReactorTime,
        interval: float,
        max_missed: int,
        on_dead: Callable[[str], None],
        on_tick: Callable[[], bool] | None = None,
    ) -> None:
        self.conn = conn
        #: run first on every tick (the call's idle check, sharing this
        #: job); False means the call is over: no keepalive.
        self.on_tick = on_tick
        self.interval = interval
        self.max_missed = max_missed
        self.on_dead = on_dead
        self.missed = 0
        self.sent = 0
        self.clock = clock
        self._job: Job | None = None

    def start(self) -> None:
        """Start sending, first one after C{interval}."""
        # One timer for every session's keepalives (callhome.timerwheel).
        self._job = wheel_for(self.clock).every(self.interval, self._tick)

    def stop(self) -> None:
        """Stop sending (the call ended)."""
        if self._job is not None:
            self._job.stop()
            self._job = None

    def _tick(self) -> None:
        if self.on_tick is not None and not self.on_tick():
            self.stop()
            return
        if self.missed >= self.max_missed:
            self.stop()
            self.on_dead(f"no answer to {self.missed} keepalives in {self.missed * self.interval:g}s")
            return
        self.missed += 1
        self.sent += 1
        # Success or failure: either way the device answered.
        self.conn.send_global_request(KEEPALIVE_PAYLOAD, self._answered)

    def _answered(self) -> None:
        self.missed = 0
