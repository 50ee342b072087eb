"""
The state of one simulated device, shared by all its sessions: the running,
candidate and startup datastores, locks, a pending confirmed commit,
notifications and their replay log, and RFC 6022 ``/netconf-state``.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from lxml import etree
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from callhome.simulator.constants import (
    DATASTORES,
    DEFAULT_CONFIRM_TIMEOUT,
    MONITORING_NS,
    NETCONF_NOTIFICATIONS_NS,
    NETMOD_NOTIFICATION_NS,
    STREAM,
)
from callhome.simulator.editing import _config_of, _top_level_changes, edit, validate
from callhome.simulator.errors import RpcError, _bad
from callhome.simulator.filters import apply_filter
from callhome.simulator.times import format_time
from callhome.simulator.xmltree import _chain, _copy, _copy_all, _elements, _instance_identifier, _q, _serialise
from callhome.simulator.yang import YangModule, load_modules

if TYPE_CHECKING:
    from callhome.simulator.netconf_server import NetconfServerProtocol

DEFAULT_DATASTORE = Path(__file__).with_name("datastore.xml")
REPLAY_LOG_SIZE = 100


@dataclass
class Lock:
    """A global lock on a datastore."""

    session_id: int
    since: float


@dataclass
class PendingCommit:
    """A confirmed commit waiting for its confirming commit."""

    rollback: list[etree._Element]
    session_id: int
    persist: str | None
    timer: IDelayedCall


class Datastore:
    """
    One simulated device: its datastores and everything its sessions share.

    @param elements: the top-level elements of running; candidate and
        startup start as copies.
    @param clock: time for event times, lock times and confirmed-commit
        timeouts; the reactor by default.
    @param modules: the YANG modules served; by default those shipped in
        C{callhome/simulator/yang}.
    @ivar datastores: C{running}, C{candidate} and C{startup}, each a list of
        top-level elements.
    @ivar locks: datastore name to L{Lock}.
    @ivar sessions: session-id to protocol, for every session of the device.
    @ivar replay_log: the last C{replay_log_size} notifications, as
        C{(time, element)}.
    """

    def __init__(
        self, elements: Sequence[etree._Element], clock: IReactorTime | None = None,
        modules: Sequence[YangModule] | None = None, replay_log_size: int = REPLAY_LOG_SIZE,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.modules = load_modules() if modules is None else list(modules)
        self.datastores: dict[str, list[etree._Element]] = {
            "running": list(elements), "candidate": _copy_all(elements), "startup": _copy_all(elements),
        }
        self.locks: dict[str, Lock] = {}
        self.sessions: dict[int, NetconfServerProtocol] = {}
        self.pending_commit: PendingCommit | None = None
        self.replay_log: collections.deque[tuple[float, etree._Element]] = collections.deque(maxlen=replay_log_size)
        self.started = self.clock.seconds()
        #: O-RAN supervision (L{callhome.simulator.supervision}): how resets are
        #: answered (ok, error, silent, past), resets answered, timers run out.
        self.supervision_mode = "ok"
        self.supervision_resets = 0
        self.supervision_lost = 0
        self.statistics = dict.fromkeys(
            ("in-bad-hellos", "in-sessions", "dropped-sessions", "in-rpcs", "in-bad-rpcs", "out-rpc-errors", "out-notifications"), 0
        )

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_DATASTORE, clock: IReactorTime | None = None, modules: Sequence[YangModule] | None = None) -> "Datastore":
        """Load a datastore file: any root element, its children are running's data."""
        root = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)).getroot()
        return cls(_elements(root), clock=clock, modules=modules)

    # --- content ---------------------------------------------------------------------

    @property
    def elements(self) -> list[etree._Element]:
        """The running datastore's top-level elements."""
        return self.datastores["running"]

    @elements.setter
    def elements(self, value: list[etree._Element]) -> None:
        self.datastores["running"] = value

    @property
    def running(self) -> list[etree._Element]:
        """The running datastore's top-level elements."""
        return self.datastores["running"]

    @property
    def candidate(self) -> list[etree._Element]:
        """The candidate datastore's top-level elements."""
        return self.datastores["candidate"]

    @property
    def startup(self) -> list[etree._Element]:
        """The startup datastore's top-level elements."""
        return self.datastores["startup"]

    @property
    def candidate_modified(self) -> bool:
        """Whether the candidate holds changes not committed (RFC 6241 §8.3.5.1)."""
        return _serialise(self.candidate) != _serialise(self.running)

    def select(self, subtree: etree._Element | None, source: str = "running") -> list[etree._Element]:
        """Copies of what a ``<filter>`` selects from a datastore (all without one)."""
        return apply_filter(self.datastores[source], subtree)

    def store(self, name: str, elements: list[etree._Element], session: "NetconfServerProtocol | None" = None, edits: Sequence[tuple[etree._Element, str]] | None = None) -> bool:
        """
        Replace a datastore's content; notify a change of running or startup.

        An unmodified candidate follows running.  C{session} None means the
        server itself made the change.

        @return: whether the content changed.
        """
        old = self.datastores[name]
        changed = _serialise(old) != _serialise(elements)
        if name == "running" and _serialise(self.candidate) == _serialise(old):
            self.datastores["candidate"] = _copy_all(elements)
        self.datastores[name] = elements
        if changed and name in ("running", "startup"):
            self.notify(self._config_change(name, old, elements, session, edits))
        return changed

    def _config_change(self, name: str, old: Sequence[etree._Element], new: Sequence[etree._Element], session: "NetconfServerProtocol | None", edits: Sequence[tuple[etree._Element, str]] | None) -> etree._Element:
        """An RFC 6470 netconf-config-change."""
        ns = NETCONF_NOTIFICATIONS_NS
        event = etree.Element(_q("netconf-config-change", ns), nsmap={None: ns})
        by = etree.SubElement(event, _q("changed-by", ns))
        if session is None:
            etree.SubElement(by, _q("server", ns))
        else:
            session.describe(by, ns)
        etree.SubElement(event, _q("datastore", ns)).text = name
        if edits is None:
            edits = _top_level_changes(old, new)
            described = [(_instance_identifier([node]), operation) for node, operation in edits]
        else:
            described = [(_instance_identifier(_chain(node, _config_of(node))), operation) for node, operation in edits]
        for (path, prefixes), operation in described:
            entry = etree.SubElement(event, _q("edit", ns))
            etree.SubElement(entry, _q("target", ns), nsmap=prefixes).text = path
            etree.SubElement(entry, _q("operation", ns)).text = operation
        return event

    # --- locks ---------------------------------------------------------------------------

    def check_writable(self, name: str, session: "NetconfServerProtocol") -> None:
        """@raises RpcError: C{in-use} if another session locked C{name}."""
        lock = self.locks.get(name)
        if lock is not None and lock.session_id != session.session_id:
            raise RpcError("in-use", f"the {name} datastore is locked by session {lock.session_id}", info=[("session-id", str(lock.session_id))])

    def lock(self, name: str, session: "NetconfServerProtocol") -> None:
        """Lock a datastore for a session (RFC 6241 §7.5)."""
        lock = self.locks.get(name)
        if lock is not None:
            raise RpcError("lock-denied", f"the {name} datastore is already locked by session {lock.session_id}", info=[("session-id", str(lock.session_id))])
        if name == "candidate" and self.candidate_modified:
            raise RpcError("lock-denied", "the candidate holds changes that are not committed", info=[("session-id", "0")])
        self.locks[name] = Lock(session.session_id, self.clock.seconds())

    def unlock(self, name: str, session: "NetconfServerProtocol") -> None:
        """Release a session's lock; a candidate's uncommitted changes go with it."""
        lock = self.locks.get(name)
        if lock is None or lock.session_id != session.session_id:
            held = f"by session {lock.session_id}" if lock else "by no session"
            raise RpcError("operation-failed", f"the {name} datastore is not locked by this session (it is locked {held})", type="protocol")
        del self.locks[name]
        if name == "candidate":
            self.datastores["candidate"] = _copy_all(self.running)

    # --- operations ------------------------------------------------------------------------

    def edit(self, target: str, config: etree._Element, session: "NetconfServerProtocol", default_operation: str = "merge", test_option: str = "test-then-set") -> None:
        """edit-config on running or candidate."""
        self.check_writable(target, session)
        new, edits = edit(self.datastores[target], config, default_operation)
        if test_option != "set":
            validate(new)
        if test_option == "test-only":
            return
        self.store(target, new, session, edits)

    def copy(self, source: Sequence[etree._Element], target: str, session: "NetconfServerProtocol") -> None:
        """copy-config to a datastore."""
        self.check_writable(target, session)
        new = _copy_all(source)
        if target != "candidate":
            validate(new)
        self.store(target, new, session)

    def delete(self, target: str, session: "NetconfServerProtocol") -> None:
        """delete-config: only startup can be deleted."""
        if target != "startup":
            raise RpcError("operation-not-supported", f"the {target} datastore cannot be deleted")
        self.check_writable(target, session)
        self.store(target, [], session)

    def commit(self, session: "NetconfServerProtocol", confirmed: bool = False, timeout: float = DEFAULT_CONFIRM_TIMEOUT, persist: str | None = None, persist_id: str | None = None) -> None:
        """Commit the candidate to running (RFC 6241 §8.3.4.1, §8.4.5.1)."""
        self.check_writable("running", session)
        self.check_writable("candidate", session)
        pending = self.pending_commit
        if persist_id is not None:
            if pending is None or pending.persist != persist_id:
                raise _bad("invalid-value", "persist-id", f"no confirmed commit is pending with persist-id {persist_id!r}")
        elif pending is not None:
            if pending.persist is not None:
                raise _bad("invalid-value", "persist-id", "a persistent confirmed commit is pending: give its persist-id")
            if pending.session_id != session.session_id:
                raise RpcError("in-use", f"a confirmed commit of session {pending.session_id} is pending", info=[("session-id", str(pending.session_id))])
        validate(self.candidate)
        if confirmed:
            if pending is None:
                timer = self.clock.callLater(timeout, self._confirm_timed_out)
                self.pending_commit = PendingCommit(_copy_all(self.running), session.session_id, persist, timer)
            else:
                pending.timer.reset(timeout)
                pending.persist = persist
                pending.session_id = session.session_id
        elif pending is not None:
            pending.timer.cancel()
            self.pending_commit = None
        self.store("running", _copy_all(self.candidate), session)
        self.datastores["candidate"] = _copy_all(self.running)

    def cancel_commit(self, session: "NetconfServerProtocol", persist_id: str | None = None) -> None:
        """Cancel a pending confirmed commit: running goes back (RFC 6241 §8.4.4.1)."""
        pending = self.pending_commit
        if pending is None:
            raise RpcError("operation-failed", "no confirmed commit is pending", type="protocol")
        if persist_id is not None:
            if pending.persist != persist_id:
                raise _bad("invalid-value", "persist-id", f"no confirmed commit is pending with persist-id {persist_id!r}")
        elif pending.persist is not None:
            raise _bad("invalid-value", "persist-id", "a persistent confirmed commit is pending: give its persist-id")
        elif pending.session_id != session.session_id:
            raise RpcError("operation-failed", f"the pending confirmed commit belongs to session {pending.session_id}")
        self.roll_back(session)

    def discard_changes(self, session: "NetconfServerProtocol") -> None:
        """candidate := running."""
        self.check_writable("candidate", session)
        self.datastores["candidate"] = _copy_all(self.running)

    def roll_back(self, session: "NetconfServerProtocol | None" = None) -> None:
        """Undo a pending confirmed commit now (C{session} None: the server does)."""
        pending = self.pending_commit
        if pending is None:
            return
        self.pending_commit = None
        if pending.timer.active():
            pending.timer.cancel()
        self.store("running", pending.rollback, session)
        self.datastores["candidate"] = _copy_all(self.running)

    def _confirm_timed_out(self) -> None:
        self.roll_back(None)

    # --- schemas ---------------------------------------------------------------------------

    def find_module(self, identifier: str, version: str | None = None) -> YangModule:
        """@raises RpcError: C{invalid-value} for a module the device lacks."""
        for module in self.modules:
            if module.name == identifier and version in (None, "", module.revision):
                return module
        wanted = identifier + (f"@{version}" if version else "")
        raise _bad("invalid-value", "identifier", f"no schema {wanted} on this device", type="application")

    # --- sessions and notifications --------------------------------------------------------------

    def session_started(self, session: "NetconfServerProtocol") -> None:
        """A session began: register it and tell the others."""
        self.sessions[session.session_id] = session
        self.statistics["in-sessions"] += 1
        ns = NETCONF_NOTIFICATIONS_NS
        event = etree.Element(_q("netconf-session-start", ns), nsmap={None: ns})
        session.describe(event, ns)
        self.notify(event)

    def session_ended(self, session: "NetconfServerProtocol", reason: str, killed_by: int | None = None) -> None:
        """
        A session ended: release its locks (discarding a locked candidate's
        changes), roll back its unconfirmed commit, tell the others.
        """
        if self.sessions.pop(session.session_id, None) is None:
            return
        if reason == "dropped":
            self.statistics["dropped-sessions"] += 1
        for name, lock in list(self.locks.items()):
            if lock.session_id == session.session_id:
                self.unlock(name, session)
        pending = self.pending_commit
        if pending is not None and pending.persist is None and pending.session_id == session.session_id:
            self.roll_back(None)
        ns = NETCONF_NOTIFICATIONS_NS
        event = etree.Element(_q("netconf-session-end", ns), nsmap={None: ns})
        session.describe(event, ns)
        if killed_by is not None:
            etree.SubElement(event, _q("killed-by", ns)).text = str(killed_by)
        etree.SubElement(event, _q("termination-reason", ns)).text = reason
        self.notify(event)

    def notify(self, event: etree._Element, event_time: float | None = None) -> None:
        """
        Raise a notification: log it for replay and send it to every
        subscribed session (tests push arbitrary events with this).

        @param event: the event's content element (copied).
        @param event_time: seconds since the epoch; now by default.
        """
        when = self.clock.seconds() if event_time is None else event_time
        event = _copy(event)
        self.replay_log.append((when, event))
        for session in list(self.sessions.values()):
            session.deliver(when, event)

    def netconf_state(self, session: "NetconfServerProtocol") -> etree._Element:
        """RFC 6022 ``/netconf-state`` as a session sees it."""
        ns = MONITORING_NS

        def sub(parent: etree._Element, tag: str, text: Any = None) -> etree._Element:
            element = etree.SubElement(parent, _q(tag, ns))
            if text is not None:
                element.text = str(text)
            return element

        state = etree.Element(_q("netconf-state", ns), nsmap={None: ns})
        capabilities = sub(state, "capabilities")
        for uri in session.capabilities:
            sub(capabilities, "capability", uri)
        datastores = sub(state, "datastores")
        for name in DATASTORES:
            datastore = sub(datastores, "datastore")
            sub(datastore, "name", name)
            lock = self.locks.get(name)
            if lock is not None:
                held = sub(sub(datastore, "locks"), "global-lock")
                sub(held, "locked-by-session", lock.session_id)
                sub(held, "locked-time", format_time(lock.since))
        schemas = sub(state, "schemas")
        for module in self.modules:
            schema = sub(schemas, "schema")
            sub(schema, "identifier", module.name)
            sub(schema, "version", module.revision)
            sub(schema, "format", "yang")
            sub(schema, "namespace", module.namespace)
            sub(schema, "location", "NETCONF")
        sessions = sub(state, "sessions")
        for other in self.sessions.values():
            entry = sub(sessions, "session")
            sub(entry, "session-id", other.session_id)
            sub(entry, "transport", "netconf-ssh")
            sub(entry, "username", other.username)
            if other.source_host:
                sub(entry, "source-host", other.source_host)
            sub(entry, "login-time", format_time(other.login_time))
            for counter in ("in-rpcs", "in-bad-rpcs", "out-rpc-errors", "out-notifications"):
                sub(entry, counter, other.counters[counter])
        statistics = sub(state, "statistics")
        sub(statistics, "netconf-start-time", format_time(self.started))
        for counter, value in self.statistics.items():
            sub(statistics, counter, value)
        return state

    def streams(self) -> etree._Element:
        """RFC 5277 ``/netconf/streams``."""
        ns = NETMOD_NOTIFICATION_NS
        netconf = etree.Element(_q("netconf", ns), nsmap={None: ns})
        stream = etree.SubElement(etree.SubElement(netconf, _q("streams", ns)), _q("stream", ns))
        etree.SubElement(stream, _q("name", ns)).text = STREAM
        etree.SubElement(stream, _q("description", ns)).text = "the default NETCONF event stream"
        etree.SubElement(stream, _q("replaySupport", ns)).text = "true"
        etree.SubElement(stream, _q("replayLogCreationTime", ns)).text = format_time(self.started)
        return netconf

    def state(self, session: "NetconfServerProtocol") -> list[etree._Element]:
        """The state data ``<get>`` adds to running."""
        return [self.netconf_state(session), self.streams()]
