"""
The manager: the policies of a call, from admission to its log line.

It answers the transport's questions (:class:`callhome.ssh.CallHandler`):
may this connection in (admission), whose host key is this and may it call
now (registry, unknown-device and duplicate-session policies), and once the
NETCONF hello is in it runs the device's chain and closes the session.  It
keeps each device's status in the registry, writes the one log line per
call and keeps the counts the service reports.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from callhome import algorithms
from callhome.actions import ActionContext
from callhome.actions.runner import StepOutcome, run_chain
from callhome.admission import Admission
from callhome.config import Config, Device, NetconfSettings
from callhome.registry import Registry
from callhome.results import ResultsWriter

if TYPE_CHECKING:  # pragma: no cover
    from callhome.netconf.session import NetconfSession
    from callhome.ssh import CallHomeTransport


class Manager:
    """
    Serves call homes for one configuration.

    @ivar active: the calls now connected.
    @ivar sessions: device name -> its identified call (for duplicates).
    @ivar counts: finished calls by outcome.
    """

    log = Logger(namespace="callhome")

    def __init__(self, config: Config, clock: IReactorTime, results: ResultsWriter | None = None, registry: Registry | None = None) -> None:
        self.config = config
        self.clock = clock
        self.results = results or ResultsWriter(config.results_dir)
        self.registry = registry or Registry(config, clock)
        self.admission = Admission(config.admission, clock)
        self.active: set["CallHomeTransport"] = set()
        self.sessions: dict[str, "CallHomeTransport"] = {}
        self.counts: Counter[str] = Counter()
        self.notifications_received = 0
        self.offer = algorithms.offer(self._legacy_opt_ins())

    def _legacy_opt_ins(self) -> set[str]:
        """Every legacy algorithm any device, group or the defaults opted into."""
        names: set[str] = set()
        for device in self.config.devices:
            names |= device.legacy_algorithms
        for profile in [*self.config.groups.values(), self.config.default_profile]:
            if profile is not None:
                names |= profile.legacy_algorithms
        return names

    # --- admission -------------------------------------------------------------------

    def admit(self, source: str) -> bool:
        """Whether to take a new connection from C{source} (counted if not)."""
        return self.admission.admit(source) is None

    def new_call(self) -> "CallHomeTransport":
        """The transport for a new, admitted connection (tracked from now on)."""
        from callhome.ssh import CallHomeTransport

        call = CallHomeTransport(
            self, self.config.ssh.handshake_timeout,
            idle_timeout=self.config.admission.idle_timeout, offer=self.offer,
        )
        self.active.add(call)
        return call

    # --- CallHandler ----------------------------------------------------------------

    def lookup(self, fingerprint: str) -> Device | None:
        """The device whose host key has this fingerprint (no side effects)."""
        return self.registry.identify(fingerprint)

    def may_prove_unknown(self) -> bool:
        """Quarantine and accept need an unknown key to prove itself first."""
        return self.config.unknown_devices != "reject"

    def refuse_unknown(self, call: "CallHomeTransport", fingerprint: str, key_type: str) -> None:
        """unknown_devices: reject: log the key; nothing else happens."""
        record = call.call
        assert record is not None
        record.outcome = "unknown-host-key"
        record.reason = "unknown host key"
        self.log.warn(
            "refused call from {peer}: unknown host key {fingerprint} ({key_type}); no credentials sent",
            peer=record.peer, fingerprint=fingerprint, key_type=key_type,
        )

    def identify(self, call: "CallHomeTransport", fingerprint: str, key_type: str, device: Device | None) -> Device | None:
        """
        The device proved its host key: apply the policies for unknown
        devices (quarantine, accept) and duplicate sessions.  Called before
        any credential is sent.
        """
        record = call.call
        assert record is not None
        if device is None:
            device = self._unknown(call, fingerprint, key_type)
            if device is None:
                return None
        current = self.sessions.get(device.name)
        if current is not None and current is not call:
            if self.config.duplicate_sessions == "reject":
                record.outcome = "duplicate-refused"
                record.reason = f"device {device.name} already has a session (duplicate_sessions: reject)"
                self.log.warn("refused call from {peer}: {reason}", peer=record.peer, reason=record.reason)
                return None
            self.log.warn(
                "device {device} called again from {peer}: closing its session from {old} "
                "(duplicate_sessions: replace)",
                device=device.name, peer=record.peer, old=current.call.peer if current.call else "?",
            )
            if current.call is not None:
                current.call.reason = "replaced by a new call from the same device"
                current.call.outcome = "replaced"
            if current.session is not None:
                current.session.close()
            else:
                current.hang_up()
        self.sessions[device.name] = call
        self.registry.transition(device, "connecting", source=record.peer, fingerprint=fingerprint)
        return device

    def _unknown(self, call: "CallHomeTransport", fingerprint: str, key_type: str) -> Device | None:
        """A proved but unknown key: quarantine it, or accept it (lab)."""
        record = call.call
        assert record is not None
        if self.config.unknown_devices == "accept":
            assert self.config.default_profile is not None
            name = "unknown-" + re.sub(r"[^A-Za-z0-9]", "", fingerprint[len("SHA256:"):])[:16]
            self.log.warn(
                "accepting unknown device {fingerprint} ({key_type}) from {peer} as {name} "
                "(unknown_devices: accept)",
                fingerprint=fingerprint, key_type=key_type, peer=record.peer, name=name,
            )
            return Device.from_profile(name, frozenset([fingerprint]), self.config.default_profile)
        record.outcome = "unknown-host-key"
        record.reason = "unknown host key (quarantined)"
        self.registry.quarantine(fingerprint, key_type, record.peer)
        self.log.warn(
            "refused call from {peer}: unknown host key {fingerprint} ({key_type}) quarantined; no credentials sent",
            peer=record.peer, fingerprint=fingerprint, key_type=key_type,
        )
        return None

    def netconf_settings(self, device: Device) -> NetconfSettings:
        """The NETCONF settings for a device's session."""
        return self.config.netconf

    def authenticated(self, call: "CallHomeTransport") -> None:
        """A call logged in: no longer pending admission."""
        assert call.call is not None
        self.admission.authenticated(call.call.source)
        if call.call is not None and call.call.device is not None:
            self.registry.transition(call.call.device, "authenticating")

    def _context(self, device: Device, session: "NetconfSession") -> ActionContext:
        """What a chain of this device's steps works with."""
        context = ActionContext(
            device=device,
            session=session,
            results=self.results,
            clock=self.clock,
            log=Logger(namespace=f"callhome.device.{device.name}"),
        )
        context.notifications = lambda root, raw: self._notification(device, session, root, raw)
        return context

    def session_ready(self, call: "CallHomeTransport", session: "NetconfSession") -> None:
        """
        Run the device's chain; then close the session (periodic mode) or
        keep it with keepalives running (persistent mode).
        """
        record = call.call
        assert record is not None and record.device is not None
        device = record.device
        self.registry.transition(device, "connected")
        context = self._context(device, session)
        chain = run_chain(self.config.chains[device.chain], context, self.clock)

        def finished(outcomes: list[StepOutcome]) -> defer.Deferred[str] | None:
            # Keep what the record needs, not the replies: a held persistent
            # session would otherwise keep every reply's tree alive.
            record.steps = [replace(o, result=_summary(o.result)) for o in outcomes]
            failed = [o for o in outcomes if not o.ok]
            if failed and record.reason is None:
                record.reason = f"step {failed[0].index} {failed[0].action}: {failed[0].error}"
            if record.outcome == "open":
                record.outcome = "chain-failed" if failed else "ok"
            if device.mode == "persistent" and not failed and not context.stop and session.close_reason is None:
                self._keep(call, session, device)
                return None
            return session.close()

        chain.addCallback(finished)
        chain.addErrback(lambda f: self.log.failure("chain runner failed for {device}", f, device=device.name))

    def _keep(self, call: "CallHomeTransport", session: "NetconfSession", device: Device) -> None:
        """Persistent mode: keepalives, and the idle timeout if the device has one."""
        ssh = self.config.ssh
        call.start_keepalive(ssh.keepalive_interval, ssh.keepalive_max_missed)
        self.log.info(
            "persistent session with {device} open (keepalive every {interval:g}s)",
            device=device.name, interval=ssh.keepalive_interval,
        )
        idle = device.idle_timeout
        if not idle:
            return
        pending: list[Any] = []

        def check() -> None:
            pending.clear()
            quiet = self.clock.seconds() - session.last_message_at
            if quiet >= idle:
                assert call.call is not None
                call.call.outcome = "idle-timeout"
                call.call.reason = f"no NETCONF message for {idle:g}s (idle_timeout)"
                session.close()
            else:
                pending.append(self.clock.callLater(idle - quiet, check))

        pending.append(self.clock.callLater(idle, check))
        session.closed.addBoth(lambda _: [d.cancel() for d in pending if d.active()])

    def _notification(self, device: Device, session: "NetconfSession", root: Any, raw: bytes) -> None:
        """Save a notification and run the device's on_notification chain."""
        self.results.save(device.name, "notification", raw)
        self.notifications_received += 1
        if device.on_notification is None:
            return
        context = self._context(device, session)
        context.notification = root
        run_chain(self.config.chains[device.on_notification], context, self.clock)

    def call_ended(self, call: "CallHomeTransport") -> None:
        """Log the call's one line, count its outcome, update the device's status."""
        self.active.discard(call)
        record = call.call
        assert record is not None
        if not record.authenticated:
            self.admission.failed_before_auth(record.source)
        if record.outcome == "open":
            record.outcome = _outcome_from_state(record.state, record.reason)
        if record.device is not None and self.sessions.get(record.device.name) is call:
            del self.sessions[record.device.name]
            self.registry.transition(record.device, _status_after(record.outcome), error=None if record.outcome == "ok" else record.reason)
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
            elif call.transport is not None:
                call.transport.loseConnection()
        return defer.DeferredList(waits, consumeErrors=True)


def _summary(result: Any) -> Any:
    """A step result as the call record keeps it: a saved reply by its path."""
    from callhome.actions.builtin import Saved
    from callhome.netconf.session import RPCReply

    if isinstance(result, Saved):
        return result.path
    if isinstance(result, RPCReply):
        return f"reply {result.message_id}"
    return result


def _outcome_from_state(state: str, reason: str | None) -> str:
    """Name the outcome of a call that ended before its chain finished."""
    if state == "securing":
        return "handshake-failed"
    if state == "authenticating":
        return "auth-failed"
    return "session-failed"


def _status_after(outcome: str) -> str:
    """The registry status a device has after a call with this outcome."""
    if outcome == "auth-failed":
        return "failed-auth"
    if outcome == "not-allowed":
        return "failed-not-allowed"
    return "disconnected"
