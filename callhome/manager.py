"""
The manager: what happens to a call once the device is identified.

It answers the transport's questions (:class:`callhome.ssh.CallHandler`):
which device owns this host key, which NETCONF settings apply, and, once the
NETCONF hello is in, it runs the device's chain and closes the session.  It
writes the one log line per call and keeps the counts the service reports.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from callhome.actions import ActionContext
from callhome.actions.runner import StepOutcome, run_chain
from callhome.config import Config, Device, NetconfSettings
from callhome.results import ResultsWriter

if TYPE_CHECKING:  # pragma: no cover
    from callhome.netconf.session import NetconfSession
    from callhome.ssh import CallHomeTransport


class Manager:
    """
    Serves call homes for one configuration.

    @ivar active: the calls now connected.
    @ivar counts: finished calls by outcome.
    """

    log = Logger(namespace="callhome")

    def __init__(self, config: Config, clock: IReactorTime, results: ResultsWriter | None = None) -> None:
        self.config = config
        self.clock = clock
        self.results = results or ResultsWriter(config.results_dir)
        self._devices = config.device_by_fingerprint()
        self.active: set["CallHomeTransport"] = set()
        self.counts: Counter[str] = Counter()
        self._chains_running: set[defer.Deferred[object]] = set()

    # --- CallHandler ---------------------------------------------------------------

    def identify(self, fingerprint: str) -> Device | None:
        """Return the device whose host key has this fingerprint."""
        return self._devices.get(fingerprint)

    def netconf_settings(self, device: Device) -> NetconfSettings:
        """The NETCONF settings for a device's session."""
        return self.config.netconf

    def call_started(self, call: "CallHomeTransport") -> None:
        """Track a new connection."""
        self.active.add(call)

    def session_ready(self, call: "CallHomeTransport", session: "NetconfSession") -> None:
        """Run the device's chain, then close the session (periodic mode)."""
        record = call.call
        assert record is not None and record.device is not None
        device = record.device
        context = ActionContext(
            device=device,
            session=session,
            results=self.results,
            log=Logger(namespace=f"callhome.device.{device.name}"),
        )
        chain = run_chain(self.config.chains[device.chain], context, self.clock)
        self._chains_running.add(chain)

        def finished(outcomes: list[StepOutcome]) -> defer.Deferred[str]:
            self._chains_running.discard(chain)
            record.steps = outcomes
            failed = [o for o in outcomes if not o.ok]
            if failed and record.reason is None:
                record.reason = f"step {failed[0].index} {failed[0].action}: {failed[0].error}"
            record.outcome = "chain-failed" if failed else "ok"
            return session.close()

        chain.addCallback(finished)
        chain.addErrback(lambda f: self.log.failure("chain runner failed for {device}", f, device=device.name))

    def call_ended(self, call: "CallHomeTransport") -> None:
        """Log the call's one line and count its outcome."""
        self.active.discard(call)
        record = call.call
        assert record is not None
        if record.outcome == "open":
            record.outcome = _outcome_from_state(record.state, record.reason)
        self.counts[record.outcome] += 1
        steps = record.steps
        ok_steps = sum(1 for s in steps if s.ok)
        duration = self.clock.seconds() - record.started
        level = self.log.info if record.outcome == "ok" else self.log.warn
        level(
            "call from {peer}: device {device}, key {fingerprint}, outcome {outcome}, "
            "steps {ok_steps}/{total_steps}, {duration:.3f}s{why}",
            peer=record.peer,
            device=record.device.name if record.device else "-",
            fingerprint=record.fingerprint or "-",
            key_type=record.key_type,
            outcome=record.outcome,
            ok_steps=ok_steps,
            total_steps=len(steps),
            duration=duration,
            reason=record.reason,
            why=f" ({record.reason})" if record.reason and record.outcome != "ok" else "",
        )

    def close_all(self) -> defer.Deferred[object]:
        """Close every open session politely; fires when all are gone."""
        waits = []
        for call in list(self.active):
            if call.session is not None:
                waits.append(call.session.close())
            else:
                call.transport.loseConnection()
        return defer.DeferredList(waits, consumeErrors=True)


def _outcome_from_state(state: str, reason: str | None) -> str:
    """Name the outcome of a call that ended before its chain finished."""
    if state == "securing":
        return "handshake-failed"
    if state == "authenticating":
        return "auth-failed"
    return "session-failed"
