"""
The control plane's operations: what the HTTP API, the worker link and
(later) other cluster instances can ask of a running service.

Each operation returns plain data (or a Deferred of it), an L{XmlAnswer} or
a L{ResultFile}, and refuses with a L{ControlError} kind; none knows about
HTTP.  Sessions held by another process are reached through
L{RemoteSessions} (the worker pool implements it), so "where is this
device's session?" has one answer here whatever holds it.
"""

from __future__ import annotations

import functools
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.internet import defer
from twisted.python.failure import Failure

from callhome import fingerprints
from callhome.actions.chains import build_step
from callhome.actions.runner import StepOutcome, run_chain
from callhome.config import ConfigError, Device, parse_step
from callhome.control.errors import (
    Conflict, DeviceFailed, DeviceTimeout, InvalidRequest, NotFound, ReloadRefused, UnsupportedMediaType,
)
from callhome.control.interfaces import RemoteSessions, ServiceControl
from callhome.control.results import ResultFile, XmlAnswer
from callhome.metrics import Metrics
from callhome.netconf import xml
from callhome.netconf.session import RPCReply, RPCTimeout, SessionClosed
from callhome.call.registry import EnrollmentError

if TYPE_CHECKING:  # pragma: no cover
    from callhome.call.manager import Manager
    from callhome.call.connection import CallConnection
    from callhome.storage.store import Store

#: actions the JSON form of an RPC may run: the operations, not the ones
#: that write files on the manager.
API_ACTIONS = frozenset([
    "get", "get-config", "edit-config", "lock", "unlock", "commit", "discard-changes",
    "validate", "copy-config", "delete-config", "get-schema", "rpc",
])


#: a whole number as the control plane accepts it (str.isdigit also takes "²").
WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")


def iso(seconds: float | None) -> str | None:
    """A time as ISO 8601 UTC, for JSON."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(text: str, name: str) -> float:
    """Epoch seconds or ISO 8601 (``2026-11-24T08:00:00Z``) to epoch seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{name}: {text!r} is neither an event id, epoch seconds nor an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def session_info(call: "CallConnection", capabilities: bool = True) -> dict[str, Any]:
    """A call as the control plane shows it (``/sessions``, ``/devices/{name}``)."""
    record = call.call
    session = call.session
    info: dict[str, Any] = {
        "id": record.id if record else None,
        "device": record.device.name if record and record.device else None,
        "peer": record.peer if record else None,
        "transport": record.transport if record else None,
        "fingerprint": record.fingerprint if record else None,
        "state": record.state if record else None,
        "started": iso(record.started) if record else None,
        "mode": record.device.mode if record and record.device else None,
        "bytes_received": call.bytes_received,
        "netconf_session_id": session.hello.session_id if session is not None and session.hello else None,
        "framing": session.framing if session is not None and session.hello else None,
    }
    if capabilities:
        info["capabilities"] = list(session.capabilities) if session is not None and session.hello else []
    return info


class ControlPlane:
    """
    The operations on one service's devices, sessions and records.

    @ivar remote: sessions held by other processes, if any (set by the
        service when it starts worker processes).
    """

    def __init__(
        self, manager: "Manager", store: "Store", metrics: Metrics,
        service: ServiceControl | None = None, remote: RemoteSessions | None = None,
    ) -> None:
        self.manager = manager
        self.store = store
        self.metrics = metrics
        self.service = service
        self.remote = remote
        #: this instance's name in a cluster (shown with its sessions), else None.
        self.instance: str | None = None

    # --- devices -----------------------------------------------------------------------

    def known_device(self, name: str) -> Device:
        """The configured or enrolled device named C{name}; NotFound otherwise."""
        device = self.manager.registry.device(name)
        if device is None:
            raise NotFound(f"no device named {name!r}")
        return device

    def _held_elsewhere(self, name: str) -> bool:
        return self.remote is not None and self.remote.holds(name)

    def _open_session(self, name: str) -> "CallConnection | None":
        call = self.manager.sessions.get(name)
        if call is None or call.session is None or call.session.close_reason is not None:
            return None
        return call

    def device_summary(self, device: Device) -> dict[str, Any]:
        """A device with its status, as listed."""
        registry = self.manager.registry
        status = registry.status.get(device.name)
        return {
            "name": device.name,
            "status": status.status if status else "never-called",
            "last_seen": iso(status.last_seen) if status else None,
            "source": status.last_source if status else None,
            "calls": status.calls if status else 0,
            "last_error": status.last_error if status else None,
            "fingerprint": status.fingerprint if status else None,
            "host_keys": sorted(device.host_keys),
            "group": device.group,
            "mode": device.mode,
            "chain": device.chain,
            "enrolled": any(fp in registry.enrollments for fp in device.host_keys),
            "session": self._open_session(device.name) is not None or self._held_elsewhere(device.name),
        }

    def devices(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every device with its status, by name (only those with C{status}, if given)."""
        summaries = [self.device_summary(d) for d in sorted(self.manager.registry.devices(), key=lambda d: d.name)]
        return summaries if status is None else [d for d in summaries if d["status"] == status]

    def device(self, name: str) -> Any:
        """One device, with its current session (wherever it is held) and its capabilities."""
        summary = self.device_summary(self.known_device(name))
        call = self.manager.sessions.get(name)
        summary["current_session"] = session_info(call) if call is not None else None
        if call is not None or self.remote is None or not self.remote.holds(name):
            return summary

        def add(info: Any) -> Any:
            summary["current_session"] = info
            return summary

        return self.remote.session(name).addCallbacks(add, lambda _: summary)

    # --- sessions ----------------------------------------------------------------------

    def local_sessions(self) -> list[dict[str, Any]]:
        """The calls open in this process (with the instance's name in a cluster)."""
        sessions = [session_info(c, capabilities=False) for c in list(self.manager.active)]
        if self.instance is not None:
            for info in sessions:
                info["instance"] = self.instance
        return sessions

    def local_session(self, name: str) -> dict[str, Any] | None:
        """C{name}'s call in this process, with its capabilities, or None."""
        call = self.manager.sessions.get(name)
        return session_info(call) if call is not None else None

    def sessions(self) -> Any:
        """The calls open now, in every process, oldest first."""
        local = self.local_sessions()
        if self.remote is None:
            return sorted(local, key=_started)

        def merge(others: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
            return sorted(local + [info for sessions in others for info in sessions], key=_started)

        return self.remote.sessions().addCallback(merge)

    def rpc(self, name: str, content_type: str, body: bytes) -> Any:
        """Run an RPC (XML operation or JSON action) on the device's persistent session, wherever it is."""
        if self._open_session(name) is None and self.remote is not None:
            self.known_device(name)
            if self.remote.holds(name):
                return self.remote.rpc(name, content_type, body)
        return self.rpc_here(name, content_type, body)

    def rpc_here(self, name: str, content_type: str, body: bytes) -> Any:
        """Run an RPC on a session of this process."""
        device = self.known_device(name)
        call = self._open_session(name)
        if call is None or call.call is None or call.call.device is None or call.call.device.mode != "persistent":
            raise Conflict(f"device {name} has no open persistent session")
        if content_type == "application/json":
            try:
                action = json.loads(body or b"{}")
            except ValueError as e:
                raise InvalidRequest(f"the body is not JSON: {e}") from None
            return self._rpc_action(call, device, action)
        if content_type in ("application/xml", "text/xml"):
            return self._rpc_xml(call, body)
        raise UnsupportedMediaType("send the RPC as application/xml (an operation element) or application/json (an action)")

    def _rpc_xml(self, call: "CallConnection", body: bytes) -> defer.Deferred[XmlAnswer]:
        try:
            root = xml.parse_message(body)
        except xml.XMLRejected as e:
            raise InvalidRequest(f"the body is not an acceptable operation: {e}") from None
        if xml.local_name(root) == "rpc":
            children: list[etree._Element] = list(root)
            if len(children) != 1:
                raise InvalidRequest("an <rpc> must hold exactly one operation")
            root = children[0]
        assert call.session is not None
        d = call.session.rpc(root)

        def failed(failure: Failure) -> XmlAnswer:
            if isinstance(failure.value, xml.RPCError) and failure.value.reply is not None:
                return XmlAnswer(failure.value.reply, "rpc-error")
            raise _rpc_failure(failure)

        return d.addCallbacks(lambda reply: XmlAnswer(reply.raw, "ok"), failed)

    def _rpc_action(self, call: "CallConnection", device: Device, body: Any) -> defer.Deferred[dict[str, Any]]:
        if not isinstance(body, dict) or len([k for k in body if k not in ("timeout", "on_error")]) != 1:
            raise InvalidRequest('the body must name one action, e.g. {"get-config": {"source": "running"}}')
        action = next(k for k in body if k not in ("timeout", "on_error"))
        if action not in API_ACTIONS:
            raise InvalidRequest(f"{action!r} cannot run through the API (allowed: {', '.join(sorted(API_ACTIONS))})")
        params = body[action]
        if isinstance(params, dict) and any(k == "file" or k.endswith("_file") for k in params):
            raise InvalidRequest("file parameters are not read through the API: send the content inline")
        try:
            step = build_step(parse_step(body, "body", self.manager.config.netconf.rpc_timeout))
        except ConfigError as e:
            raise InvalidRequest(str(e)) from None
        assert call.session is not None and call.call is not None
        context = self.manager.step_context(device, call.session, call.call.id)
        # Saved and recorded as a chain step's result would be; the reply also
        # comes back here.  Tracked, so a graceful stop waits for it.
        d = run_chain((step,), context, self.manager.clock)
        self.manager.track(d)
        results_dir = self.manager.config.results_dir

        def shape(outcomes: list[StepOutcome]) -> dict[str, Any]:
            (outcome,) = outcomes
            result = outcome.result
            reply = getattr(result, "reply", result)
            answer: dict[str, Any] = {"action": outcome.action, "ok": outcome.ok, "duration": round(outcome.duration, 6), "error": outcome.error}
            if isinstance(reply, RPCReply):
                answer["reply"] = reply.raw.decode("utf-8", "replace")
            if getattr(result, "path", None) is not None:
                answer["saved"] = _relative(str(result.path), results_dir)
            return answer

        return d.addCallback(shape)

    def disconnect(self, name: str) -> Any:
        """Close the device's session (close-session), wherever it is."""
        if self.manager.sessions.get(name) is None and self.remote is not None:
            self.known_device(name)
            if self.remote.holds(name):
                return self.remote.disconnect(name)
        return self.disconnect_here(name)

    def disconnect_here(self, name: str) -> defer.Deferred[dict[str, Any]]:
        """Close the device's session in this process."""
        self.known_device(name)
        call = self.manager.sessions.get(name)
        if call is None:
            raise Conflict(f"device {name} has no session")
        self.manager.event("disconnect", f"session of {name} closed through the API", name)
        d = self.manager.disconnect(call, "disconnected through the API")
        return d.addBoth(lambda _: {"device": name, "disconnected": True})

    # --- records -----------------------------------------------------------------------

    def events(self, since: str | None = None, device: str | None = None, kind: str | None = None, limit: int = 100) -> Any:
        """Events oldest first, since an event id (digits) or a time, with the id to ask from next."""
        after_id = int(since) if since is not None and WHOLE_NUMBER.fullmatch(since) else None
        since_time = parse_time(since, "since") if since is not None and after_id is None else None
        d = self.store.events(after_id, since_time, device, kind, limit)

        def shape(rows: list[dict[str, Any]]) -> dict[str, Any]:
            for row in rows:
                row["time"] = iso(row["time"])
                row["data"] = json.loads(row["data"]) if row["data"] else None
            return {"events": rows, "next": rows[-1]["id"] if rows else (after_id or 0)}

        return d.addCallback(shape)

    def results(self, device: str | None = None, action: str | None = None, session: str | None = None,
                before: int | None = None, limit: int = 100) -> Any:
        """Result metadata, newest first, with each payload's URL."""
        root = self.manager.config.results_dir
        d = self.store.results(device, action, session, before, limit)

        def shape(rows: list[dict[str, Any]]) -> dict[str, Any]:
            for row in rows:
                row["time"] = iso(row["time"])
                row["path"] = _relative(row["path"], root)
                row["url"] = f"/results/{row['id']}"
            return {"results": rows}

        return d.addCallback(shape)

    def result_file(self, result_id: int) -> defer.Deferred[ResultFile]:
        """One result's payload, to stream."""
        def found(row: dict[str, Any] | None) -> ResultFile:
            if row is None:
                raise NotFound(f"no result {result_id}")
            path = Path(row["path"])
            content_type = "application/xml" if path.suffix == ".xml" else "text/plain; charset=utf-8"
            # No file here: another instance's (PostgreSQL) or none at all (store.payloads: database).
            chunks = functools.partial(self.store.payload_chunk, result_id)
            return ResultFile(path, row["sha256"], content_type, chunks)

        return self.store.result(result_id).addCallback(found)

    # --- schemas -----------------------------------------------------------------------

    def schemas(self, device: str | None = None) -> defer.Deferred[list[dict[str, Any]]]:
        """The cached YANG modules, or those C{device} announced (cached or not)."""
        if device is not None:
            self.known_device(device)
        cache = self.manager.schemas
        if cache is None:
            return defer.succeed([])

        def shape(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for row in rows:
                row["fetched_at"] = iso(row["fetched_at"])
                row["url"] = f"/schemas/{row['module']}@{row['revision']}"
            return rows

        return cache.listing(device).addCallback(shape)

    def schema_text(self, module: str, revision: str) -> defer.Deferred[str]:
        """One cached module's YANG text."""
        cache = self.manager.schemas

        def found(text: str | None) -> str:
            if text is None:
                raise NotFound(f"no schema {module}@{revision} in the cache")
            return text

        return (cache.text(module, revision) if cache is not None else defer.succeed(None)).addCallback(found)

    # --- quarantine --------------------------------------------------------------------

    def quarantine(self) -> list[dict[str, Any]]:
        """Unknown host keys and certificates waiting for an operator, oldest first."""
        pending = sorted(self.manager.registry.pending.values(), key=lambda p: p.first_seen)
        return [
            {
                "fingerprint": p.fingerprint, "key_type": p.key_type, "first_seen": iso(p.first_seen),
                "last_seen": iso(p.last_seen), "source": p.last_source, "times_seen": p.times_seen,
                # An unknown certificate also says whose it claims to be.
                **({"certificate": json.loads(p.certificate)} if p.certificate else {}),
            }
            for p in pending
        ]

    def approve(self, fingerprint: str, name: str, group: str | None = None) -> dict[str, Any]:
        """Enroll a quarantined key as a device (in every process)."""
        registry = self.manager.registry
        try:
            fp = fingerprints.normalise_any(fingerprint)
        except fingerprints.FingerprintError as e:
            raise InvalidRequest(f"fingerprint: {e}") from None
        if fp not in registry.pending:
            raise NotFound(f"{fp} is not in quarantine")
        if registry.device(name) is not None:
            raise Conflict(f"a device named {name!r} already exists")
        try:
            device = registry.approve(fp, name, group)
        except EnrollmentError as e:
            raise InvalidRequest(str(e)) from None
        registry.save()
        if self.remote is not None:
            self.remote.approved(fp, device.name, group, registry.enrollments[fp].approved_at)
        return self.device_summary(device)

    # --- the service -------------------------------------------------------------------

    def health(self) -> defer.Deferred[dict[str, Any]]:
        """Liveness: ``status`` is ok, stopping, or error (the database does not answer)."""
        d = self.store.ping()

        def report(_: Any) -> dict[str, Any]:
            remote = self.remote
            answer: dict[str, Any] = {
                "status": "stopping" if self.service is not None and self.service.stopping else "ok",
                "listeners": self.service.listening() if self.service is not None else [],
                "sessions": len(self.manager.active) + (remote.open_calls()[0] if remote is not None else 0),
                "devices": len(self.manager.registry.devices()),
            }
            if self.store.failing is not None:
                # Calls are served and results saved as files, but the
                # database does not take their records: an operator must look.
                answer["status"] = "degraded" if answer["status"] == "ok" else answer["status"]
                answer["store"] = {"failing": self.store.failing, "queued": len(self.store.pending),
                                   "dropped": self.store.dropped}
            if remote is not None:
                answer["workers"] = [{"index": 0, "pid": os.getpid()}] + remote.processes()
            return answer

        def broken(failure: Failure) -> dict[str, Any]:
            return {"status": "error", "error": f"database: {failure.getErrorMessage()}"}

        return d.addCallbacks(report, broken)

    def metrics_text(self) -> Any:
        """Prometheus text format (other processes' figures added in)."""
        if self.remote is None:
            return self.metrics.exposition()
        return self.remote.metrics().addCallback(self.metrics.exposition)

    def reload(self, why: str) -> dict[str, Any]:
        """Re-read the config file (as SIGHUP does); raises ReloadRefused."""
        assert self.service is not None
        try:
            return self.service.reload(why)
        except ReloadRefused as e:
            raise ReloadRefused(f"reload refused, running config kept: {e.message}") from None


def _started(info: dict[str, Any]) -> str:
    return info.get("started") or ""


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _rpc_failure(failure: Failure) -> Exception:
    if failure.check(RPCTimeout):
        return DeviceTimeout(str(failure.value))
    if failure.check(SessionClosed):
        return Conflict(f"the session closed: {failure.value}")
    if failure.check(xml.RPCError):
        return DeviceFailed(str(failure.value))
    return DeviceFailed(f"{type(failure.value).__name__}: {failure.value}")
