"""
The manager: the policies of a call, from admission to its log line.

It answers the transport's questions (:class:`callhome.ssh.transport.CallHandler`):
may this connection in (admission), whose host key is this and may it call
now (registry, unknown-device and duplicate-session policies), and once the
NETCONF hello is in it runs the device's chain and closes the session.  It
keeps each device's status in the registry, writes the one log line per
call and keeps the counts the service reports.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from callhome import algorithms
from callhome.actions import ActionContext
from callhome.actions.chains import Chains, build_chains
from callhome.actions.runner import StepOutcome, run_chain
from callhome.call.admission import Admission
from callhome.call.record import Outcome
from callhome.call.unknown import unknown_certificate, unknown_host_key
from callhome.config import Config, Device, NetconfSettings
from callhome.logs import LevelLogger
from callhome.metrics import Metrics
from callhome.actions import replay
from callhome.call import persistent
from callhome.call.registry import Registry
from callhome.storage.results import ResultsWriter, SavedFile
from callhome.storage.schemas import SchemaCache

if TYPE_CHECKING:  # pragma: no cover
    from callhome.netconf.session import NetconfSession
    from callhome.call.connection import CallConnection
    from callhome.ssh.transport import CallHomeTransport
    from callhome.tls.certificates import PeerCertificate
    from callhome.storage.store import Store

class Cluster(Protocol):
    """
    The other processes serving the same devices (``workers: N``, the
    main process's table) or the other instances of a cluster (a
    PostgreSQL store, L{callhome.cluster.node}): one device has one
    session across all of them.
    """

    def claim(self, device: str, call: "CallConnection") -> bool:
        """A call of C{device} was identified here: False refuses it (a duplicate elsewhere)."""

    def release(self, device: str, call_id: str) -> None:
        """The call C{call_id} of C{device} ended here."""


class Manager:
    """
    Serves call homes for one configuration.

    @ivar active: the calls now connected.
    @ivar sessions: device name -> its identified call (for duplicates).
    @ivar counts: finished calls by outcome.
    @ivar chains: the config's chains, built.
    @ivar running: the chains running now (a graceful stop waits for them).
    @ivar store: where results metadata and events go (None: nowhere).
    @ivar metrics: the service's Prometheus metrics.
    @ivar cluster: the other worker processes, if any.
    """

    log = LevelLogger(namespace="callhome")

    def __init__(
        self,
        config: Config,
        clock: IReactorTime,
        results: ResultsWriter | None = None,
        registry: Registry | None = None,
        store: "Store | None" = None,
        metrics: Metrics | None = None,
        chains: Chains | None = None,
    ) -> None:
        self.config = config
        #: the config's chains, built (L{callhome.actions.chains}).
        self.chains = chains if chains is not None else build_chains(config)
        self.clock = clock
        self.store = store
        #: YANG modules by module and revision, shared by every device (get-schema).
        self.schemas = SchemaCache(store) if store is not None else None
        self.metrics = metrics or Metrics()
        self.results = results or ResultsWriter(config.results_dir, durable=config.store.durable)
        self.results.on_saved = self._saved
        self.results.inline_max = self._inline_max(config)
        self.registry = registry or Registry(config, clock, store=store)
        self.admission = Admission(config.admission, clock)
        self.active: set["CallConnection"] = set()
        self.sessions: dict[str, "CallConnection"] = {}
        self.running: set[defer.Deferred[Any]] = set()
        self._drain_waiters: list[defer.Deferred[None]] = []
        self.cluster: Cluster | None = None
        #: PROXY-protocol health checks of a load balancer (not calls).
        self.health_checks = 0
        self.counts: Counter[str] = Counter()
        self.notifications_received = 0
        #: bytes received on calls that have ended (open ones are summed live).
        self.bytes_received_closed = 0
        self._set_offer()
        self.metrics.live(
            handshakes=lambda: self.admission.pending,
            sessions=lambda: len(self.active),
            devices=lambda: len(self.registry.devices()),
            quarantined=lambda: len(self.registry.pending),
            bytes_received=self.bytes_received,
        )
        if store is not None:
            self.metrics.live_store(lambda: store.write_failures, lambda: store.dropped)

    def reconfigure(self, config: Config, chains: Chains | None = None) -> None:
        """
        Take a reloaded config (and its chains, built): new calls get its
        devices, credentials, chains and policies; open sessions keep what
        they started with, except that a device no longer listed has its
        session closed.
        """
        self.config = config
        self.chains = chains if chains is not None else build_chains(config)
        self.registry.reconfigure(config)
        self.admission.settings = config.admission
        self._set_offer()
        if self.results.directory != config.results_dir:
            self.results = ResultsWriter(config.results_dir, on_saved=self._saved, durable=config.store.durable)
        self.results.inline_max = self._inline_max(config)
        for name, call in list(self.sessions.items()):
            if self.registry.device(name) is None:
                self.log.warn("device {device} is no longer configured: closing its session", device=name)
                self.disconnect(call, "device removed from the config")

    def bytes_received(self) -> float:
        """Every byte received from devices, on ended and open calls."""
        return self.bytes_received_closed + sum(c.bytes_received for c in self.active)

    def _inline_max(self, config: Config) -> int:
        """The largest result kept in the database instead of a file (store.payloads); 0: files only."""
        return config.store.payloads_max_inline if config.store.payloads == "database" and self.store is not None else 0

    def _saved(self, saved: SavedFile) -> None:
        self.metrics.results_saved.inc()
        if self.store is not None:
            self.store.add_result(saved.device, saved.action, str(saved.path), saved.size, saved.sha256, saved.session, saved.time,
                                  data=saved.data)

    def event(self, kind: str, message: str, device: str | None = None, **data: Any) -> None:
        """Record an event in the store (if there is one)."""
        if self.store is not None:
            self.store.add_event(kind, message, device, data or None, self.clock.seconds())

    def disconnect(self, call: "CallConnection", reason: str) -> defer.Deferred[Any]:
        """Close a call's session politely (close-session), recording why."""
        if call.call is not None:
            call.call.end(Outcome.DISCONNECTED, reason)
        if call.session is not None:
            return call.session.close()
        call.hang_up()
        return defer.succeed(None)

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

    def admit(self, source: str, transport: str = "ssh") -> bool:
        """Whether to take a new connection from C{source} (counted if not)."""
        refused = self.admission.admit(source)
        if refused is None:
            self.metrics.calls_accepted.labels(transport).inc()
            return True
        self.metrics.calls_refused.labels(refused).inc()
        return False

    def _set_offer(self) -> None:
        """The SSH algorithms to offer, and the transport class offering them (made once, not per call)."""
        from callhome.ssh.transport import CallHomeTransport  # here, not at module level: the transport imports this package

        self.offer = algorithms.offer(self._legacy_opt_ins())
        self._transport_class = CallHomeTransport.offering(self.offer)

    def new_call(self) -> "CallHomeTransport":
        """An SSH call for a new, admitted connection (tracked from now on)."""
        call = self._transport_class(
            self, self.config.ssh.handshake_timeout, idle_timeout=self.config.admission.idle_timeout,
        )
        self.active.add(call)
        return call

    def track_call(self, call: "CallConnection") -> None:
        """Track a new, admitted call of any transport (see L{new_call} for SSH)."""
        self.active.add(call)

    # --- CallHandler ----------------------------------------------------------------

    def lookup(self, fingerprint: str) -> Device | None:
        """The device whose host key (or certificate) has this fingerprint (no side effects)."""
        return self.registry.identify(fingerprint)

    def lookup_tls_name(self, certificate: "PeerCertificate") -> Device | None:
        """
        The device whose ``tls_names`` a (CA-issued) certificate carries, if
        exactly one does; several would make the identity ambiguous.
        """
        found = {d.name: d for key in certificate.name_keys() if (d := self.registry.identify(key)) is not None}
        return next(iter(found.values())) if len(found) == 1 else None

    def may_prove_unknown(self) -> bool:
        """Quarantine and accept need an unknown key to prove itself first."""
        return self.config.unknown_devices != "reject"

    def refuse_unknown(self, call: "CallConnection", fingerprint: str, key_type: str) -> None:
        """unknown_devices: reject: log the key; nothing else happens."""
        record = call.call
        assert record is not None
        record.end(Outcome.UNKNOWN_HOST_KEY, "unknown host key")
        self.log.warn(
            "refused call from {peer}: unknown host key {fingerprint} ({key_type}); no credentials sent",
            peer=record.peer, fingerprint=fingerprint, key_type=key_type,
        )

    def identify(
        self, call: "CallConnection", fingerprint: str, key_type: str, device: Device | None,
        certificate: "PeerCertificate | None" = None,
    ) -> Device | None:
        """
        The device proved its host key (or, over TLS, its certificate's
        key): apply the policies for unknown devices (quarantine, accept)
        and duplicate sessions.  Called before any credential is sent.
        """
        record = call.call
        assert record is not None
        if device is None:
            device = self._unknown(call, fingerprint, key_type, certificate)
            if device is None:
                return None
        current = self.sessions.get(device.name)
        if current is not None and current.session is not None and current.session.close_reason is not None:
            # Closed by us (close-session answered), its TCP connection not
            # yet gone: the device calling back is no duplicate.
            current = None
        if current is not None and current is not call:
            if self.config.duplicate_sessions == "reject":
                record.end(Outcome.DUPLICATE_REFUSED, f"device {device.name} already has a session (duplicate_sessions: reject)")
                self.log.warn("refused call from {peer}: {reason}", peer=record.peer, reason=record.reason)
                return None
            self.log.warn(
                "device {device} called again from {peer}: closing its session from {old} "
                "(duplicate_sessions: replace)",
                device=device.name, peer=record.peer, old=current.call.peer if current.call else "?",
            )
            self.replace(current)
        if self.cluster is not None and not self.cluster.claim(device.name, call):
            record.end(Outcome.DUPLICATE_REFUSED, f"device {device.name} already has a session in another worker (duplicate_sessions: reject)")
            self.log.warn("refused call from {peer}: {reason}", peer=record.peer, reason=record.reason)
            return None
        self.sessions[device.name] = call
        self.registry.transition(device, "connecting", source=record.peer, fingerprint=fingerprint)
        return device

    def replace(self, current: "CallConnection") -> None:
        """duplicate_sessions: replace: close this (older) session of a device that called again."""
        if current.call is not None:
            current.call.end(Outcome.REPLACED, "replaced by a new call from the same device")
        if current.session is not None:
            current.session.close()
        else:
            current.hang_up()

    def _unknown(self, call: "CallConnection", fingerprint: str, key_type: str, certificate: "PeerCertificate | None" = None) -> Device | None:
        """A proved but unknown key (or certificate): quarantine it, or accept it (lab)."""
        record = call.call
        assert record is not None
        if certificate is not None:
            return unknown_certificate(self.config, self.registry, record, certificate)
        return unknown_host_key(self.config, self.registry, record, fingerprint, key_type)

    def netconf_settings(self, device: Device) -> NetconfSettings:
        """The NETCONF settings for a device's session."""
        return self.config.netconf

    def authenticated(self, call: "CallConnection") -> None:
        """A call logged in: no longer pending admission."""
        assert call.call is not None
        self.admission.authenticated(call.call.source)
        if call.call is not None and call.call.device is not None:
            self.registry.transition(call.call.device, "authenticating")

    def step_context(self, device: Device, session: "NetconfSession", call_id: str) -> ActionContext:
        """What a chain of this device's steps works with (also an API RPC's one step)."""
        context = ActionContext(
            device=device,
            session=session,
            results=self.results.for_session(call_id),
            clock=self.clock,
            log=LevelLogger(namespace=f"callhome.device.{device.name}"),
        )
        context.schemas = self.schemas
        context.alarm = lambda kind, message, **data: self.device_alarm(device, kind, message, **data)
        if self.store is not None:
            context.notification_history = lambda: replay.history(self.store, device.name)
        context.notifications = lambda root, raw: self._notification(device, session, call_id, root, raw)
        context.step_done = self._step_done
        return context

    def device_alarm(self, device: Device, kind: str, message: str, **data: Any) -> None:
        """A condition an action raised on a device (``supervision-failed`` marks its status): logged, an event."""
        if kind == "supervision-failed":
            self.registry.transition(device, "supervision-failed", error=message)
        elif kind == "supervision-restored" and device.name in self.sessions:
            self.registry.transition(device, "connected")
        self.event(kind, message, device.name, **data)

    def _step_done(self, outcome: StepOutcome) -> None:
        self.metrics.chain_steps.labels(outcome.action, "ok" if outcome.ok else "error").inc()

    def session_ready(self, call: "CallConnection", session: "NetconfSession") -> None:
        """
        Run the device's chain; then close the session (periodic mode) or
        keep it with keepalives running (persistent mode).
        """
        record = call.call
        assert record is not None and record.device is not None
        device = record.device
        self.registry.transition(device, "connected")
        session.on_rpc_done = self.metrics.rpc_done
        context = self.step_context(device, session, record.id)
        chain = run_chain(self.chains[device.chain], context, self.clock)
        self.track(chain)
        # A session that ends (device gone, shutdown, API disconnect) ends
        # its chain: a sleeping or hung step must not outlive it.
        session.closed.addBoth(self._cut_chain, chain)

        def finished(outcomes: list[StepOutcome]) -> defer.Deferred[str] | None:
            # Keep what the record needs, not the replies: a held persistent
            # session would otherwise keep every reply's tree alive.
            record.steps = [replace(o, result=_summary(o.result)) for o in outcomes]
            failed = [o for o in outcomes if not o.ok]
            if failed:
                record.end(Outcome.CHAIN_FAILED, f"step {failed[0].index} {failed[0].action}: {failed[0].error}")
            else:
                record.end(Outcome.OK)
            if device.mode == "persistent" and not failed and not context.stop and session.close_reason is None:
                persistent.keep(self, call, session, device)
                return None
            return session.close()

        chain.addCallback(finished)
        chain.addErrback(lambda f: self.log.failure("chain runner failed for {device}", f, device=device.name))

    def _cut_chain(self, result: Any, chain: defer.Deferred[Any]) -> Any:
        if chain in self.running:
            chain.cancel()
        return result

    def track(self, chain: defer.Deferred[Any]) -> None:
        """Keep a running chain in L{running} until it ends."""
        self.running.add(chain)

        def untrack(result: Any) -> Any:
            self.running.discard(chain)
            return result

        chain.addBoth(untrack)

    def _notification(self, device: Device, session: "NetconfSession", call_id: str, root: Any, raw: bytes) -> None:
        """Save a notification and run the device's on_notification chain."""
        path = self.results.for_session(call_id).save(device.name, "notification", raw)
        self.notifications_received += 1
        self.metrics.notifications.inc()
        self.event("notification", f"notification from {device.name} saved", device.name, path=str(path), session=call_id,
                   event_time=replay.event_time(root), digest=replay.digest(root))
        if device.on_notification is None:
            return
        chains = self.chains
        if device.on_notification not in chains:  # removed by a reload
            return
        context = self.step_context(device, session, call_id)
        context.notification = root
        self.track(run_chain(chains[device.on_notification], context, self.clock))

    def call_ended(self, call: "CallConnection") -> None:
        """Log the call's one line, count its outcome, update the device's status."""
        self.active.discard(call)
        self.bytes_received_closed += call.bytes_received
        record = call.call
        assert record is not None
        if not record.authenticated:
            self.admission.failed_before_auth(record.source)
        outcome = record.finish()
        self.metrics.calls_finished.labels(outcome, record.transport).inc()
        if outcome is Outcome.AUTH_FAILED:
            self.metrics.auth_failures.inc()
        elif outcome.is_refusal:
            self.metrics.calls_refused.labels(outcome).inc()
        if record.device is not None and self.sessions.get(record.device.name) is call:
            del self.sessions[record.device.name]
            if self.cluster is not None:
                self.cluster.release(record.device.name, record.id)
            self.registry.transition(record.device, outcome.status, error=None if outcome is Outcome.OK else record.reason)
        self.counts[outcome] += 1
        steps = record.steps
        ok_steps = sum(1 for s in steps if s.ok)
        duration = self.clock.seconds() - record.started
        level = self.log.info if outcome is Outcome.OK else self.log.warn
        level(
            "call from {peer}{over}: device {device}, key {fingerprint}, outcome {outcome}, "
            "steps {ok_steps}/{total_steps}, {duration:.3f}s{why}",
            peer=record.peer,
            over=" over TLS" if record.transport == "tls" else "",
            transport=record.transport,
            device=record.device.name if record.device else "-",
            fingerprint=record.fingerprint or "-",
            key_type=record.key_type,
            outcome=outcome,
            ok_steps=ok_steps,
            total_steps=len(steps),
            duration=duration,
            reason=record.reason,
            why=f" ({record.reason})" if record.reason and outcome is not Outcome.OK else "",
            session=record.id,
        )
        if self.store is not None:
            self.store.add_event(
                "call",
                f"call from {record.peer}: outcome {outcome}" + (f" ({record.reason})" if record.reason and outcome is not Outcome.OK else ""),
                record.device.name if record.device else None,
                {
                    "session": record.id, "peer": record.peer, "fingerprint": record.fingerprint, "transport": record.transport,
                    "outcome": outcome, "reason": record.reason if outcome is not Outcome.OK else None, "duration": round(duration, 6),
                    "steps": [{"action": s.action, "ok": s.ok, "error": s.error, "duration": round(s.duration, 6)} for s in steps],
                },
                self.clock.seconds(),
            )
        # Last: a graceful stop waiting here writes the store next.
        self._maybe_drained()

    def close_all(self, reason: str = "service stopping") -> defer.Deferred[list[tuple[bool, Any]]]:
        """Close every open session politely (close-session); fires when all are gone."""
        return defer.DeferredList([self.disconnect(call, reason) for call in list(self.active)], consumeErrors=True)

    def drained(self, timeout: float) -> defer.Deferred[None]:
        """Fires when no call is open any more, or after C{timeout} seconds."""
        if not self.active:
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._drain_waiters.append(waiting)

        def timed_out() -> None:
            if not waiting.called:
                waiting.callback(None)

        def stop_timer(result: Failure | None) -> Failure | None:
            if timer.active():
                timer.cancel()
            return result

        timer = self.clock.callLater(timeout, timed_out)
        waiting.addBoth(stop_timer)
        return waiting

    def _maybe_drained(self) -> None:
        """The last open call ended: fire whoever waits in L{drained}."""
        if self.active:
            return
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiting in waiters:
            if not waiting.called:
                waiting.callback(None)


def _summary(result: Any) -> Any:
    """A step result as the call record keeps it: a saved reply by its path."""
    from callhome.actions.builtin import Saved
    from callhome.netconf.session import RPCReply

    if isinstance(result, Saved):
        return result.path
    if isinstance(result, RPCReply):
        return f"reply {result.message_id}"
    return result
