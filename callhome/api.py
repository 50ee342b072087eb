"""
The management API: JSON over HTTP (twisted.web), Prometheus metrics.

Bound to loopback by default (``api.listen``); a token (``api.token_file``
or ``api.token_env``) is required as ``Authorization: Bearer ...`` when one
is configured, and the config refuses a non-loopback endpoint without one.
``GET /healthz`` answers without a token (load-balancer probes).

Every error is a JSON body ``{"error": "..."}`` with a 4xx status (5xx only
for a failure of our own, logged, never with a traceback in the response).
The routes are in L{ROUTES}; ``openapi.yaml`` beside this module documents
them and is served at ``/openapi.json`` and ``/openapi.yaml``.
"""

from __future__ import annotations

import base64
import hmac
import os
import json
import re
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote

import yaml
from twisted.internet import defer
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from callhome.logs import LevelLogger
from callhome import fingerprints
from callhome.actions.chains import build_step
from callhome.actions.runner import run_chain
from callhome.config import ConfigError, parse_step
from callhome.metrics import CONTENT_TYPE_LATEST
from callhome.netconf import xml
from callhome.netconf.session import RPCReply, RPCTimeout, SessionClosed
from callhome.registry import EnrollmentError

if TYPE_CHECKING:  # pragma: no cover
    from callhome.service import CallHomeService
    from callhome.ssh import CallHomeTransport

#: request bodies larger than this are refused (an RPC, an approval).
MAX_BODY = 16 * 1024 * 1024

#: actions the JSON form of ``POST /devices/{name}/rpc`` may run: the
#: operations, not the ones that write files on the manager.
API_ACTIONS = frozenset([
    "get", "get-config", "edit-config", "lock", "unlock", "commit", "discard-changes",
    "validate", "copy-config", "delete-config", "get-schema", "rpc",
])

#: a whole number as the API accepts it (str.isdigit also takes "²").
_NUMBER = re.compile(r"[0-9]{1,18}")

LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000


class ApiError(Exception):
    """A request we refuse: its HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Reply:
    """A response body other than JSON."""

    def __init__(self, body: bytes, content_type: str, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.body = body
        self.content_type = content_type
        self.status = status
        self.headers = headers or {}


class FileReply:
    """A file streamed to the client (a result payload)."""

    def __init__(self, path: Path, content_type: str, headers: dict[str, str]) -> None:
        self.path = path
        self.content_type = content_type
        self.headers = headers


class Json:
    """A JSON response with a status other than 200."""

    def __init__(self, body: Any, status: int) -> None:
        self.body = body
        self.status = status


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
        raise ApiError(400, f"{name}: {text!r} is neither an event id, epoch seconds nor an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


class ManagementApi(Resource):
    """
    Every route of the API: one resource that dispatches on method and path.

    @ivar service: the running service it reports on and acts on.
    """

    isLeaf = True
    log = LevelLogger(namespace="callhome.api")

    def __init__(self, service: "CallHomeService") -> None:
        super().__init__()
        self.service = service
        # The token the API started with: api changes apply after a restart,
        # so a reload must not change who may use this listener.
        self.token = service.config.api.token
        self.routes: list[tuple[bytes, re.Pattern[str], Callable[..., Any]]] = [
            (method, re.compile(f"^{pattern}$"), getattr(self, handler)) for method, pattern, handler in ROUTES
        ]

    # --- dispatch ------------------------------------------------------------------------

    def render(self, request: Request) -> Any:
        """Authenticate, route, run the handler; answer with JSON (or the payload)."""
        d = defer.maybeDeferred(self._dispatch, request)
        d.addCallback(self._respond, request)
        d.addErrback(self._fail, request)
        return NOT_DONE_YET

    def _dispatch(self, request: Request) -> Any:
        # Match the path as sent, then decode each captured segment: a
        # fingerprint's "/" travels as %2F and must not split the path.
        path = request.path.split(b"?", 1)[0].decode("latin-1")
        method = request.method
        matched = [(m, p, h) for m, p, h in self.routes if p.match(path)]
        if not matched:
            raise ApiError(404, f"no such resource: {unquote(path)}")
        for m, pattern, handler in matched:
            if m == method:
                if handler.__name__ != "healthz":
                    self._authenticate(request)
                match = pattern.match(path)
                assert match is not None
                return handler(request, *(unquote(g) for g in match.groups()))
        allowed = ", ".join(sorted({m.decode() for m, _, _ in matched}))
        raise ApiError(405, f"{method.decode(errors='replace')} not allowed on {unquote(path)} (allowed: {allowed})", {"Allow": allowed})

    def _authenticate(self, request: Request) -> None:
        token = self.token
        if token is None:
            return
        given = request.getHeader("authorization") or ""
        scheme, _, value = given.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value or not hmac.compare_digest(value.encode(), token.encode()):
            raise ApiError(401, "a valid bearer token is required (Authorization: Bearer ...)", {"WWW-Authenticate": 'Bearer realm="callhome"'})

    def _respond(self, body: Any, request: Request) -> None:
        if request.finished or request._disconnected:
            return
        if isinstance(body, FileReply):
            self._send_file(body, request)
            return
        status = 200
        if isinstance(body, Json):
            status, body = body.status, body.body
        if isinstance(body, Reply):
            request.setResponseCode(body.status)
            for name, value in body.headers.items():
                request.setHeader(name, value)
            request.setHeader("Content-Type", body.content_type)
            request.write(body.body)
        else:
            request.setResponseCode(status)
            request.setHeader("Content-Type", "application/json")
            request.write(json.dumps(body, indent=1).encode("utf-8") + b"\n")
        request.finish()

    def _send_file(self, body: FileReply, request: Request) -> None:
        try:
            f = open(body.path, "rb")
        except OSError:
            self._fail(Failure(ApiError(410, "the result's file is gone (removed from results_dir)")), request)
            return
        request.setHeader("Content-Type", body.content_type)
        for name, value in body.headers.items():
            request.setHeader(name, value)
        done = FileSender().beginFileTransfer(f, request)

        def finish(_: Any) -> None:
            f.close()
            if not request.finished and not request._disconnected:
                request.finish()

        done.addBoth(finish)

    def _fail(self, failure: Failure, request: Request) -> None:
        if request.finished or request._disconnected:
            return
        if failure.check(ApiError):
            error = failure.value
        else:
            self.log.failure("API request {method} {path} failed", failure, method=request.method, path=request.path)
            error = ApiError(500, f"internal error: {type(failure.value).__name__} (logged)")
        request.setResponseCode(error.status)
        for name, value in error.headers.items():
            request.setHeader(name, value)
        request.setHeader("Content-Type", "application/json")
        request.write(json.dumps({"error": error.message}).encode("utf-8") + b"\n")
        request.finish()

    # --- helpers ---------------------------------------------------------------------------

    def _arg(self, request: Request, name: str) -> str | None:
        values = request.args.get(name.encode())
        return values[0].decode("utf-8", "replace") if values else None

    def _limit(self, request: Request) -> int:
        text = self._arg(request, "limit")
        if text is None:
            return LIST_LIMIT
        if not _NUMBER.fullmatch(text) or not 0 < int(text) <= MAX_LIST_LIMIT:
            raise ApiError(400, f"limit: must be a whole number from 1 to {MAX_LIST_LIMIT}")
        return int(text)

    def _body(self, request: Request) -> bytes:
        content = request.content
        content.seek(0, 2)
        if content.tell() > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        content.seek(0)
        return content.read()

    def _json_body(self, request: Request) -> Any:
        return self._parse_json(self._body(request))

    def _parse_json(self, body: bytes) -> Any:
        try:
            return json.loads(body or b"{}")
        except ValueError as e:
            raise ApiError(400, f"the body is not JSON: {e}") from None

    def _known_device(self, name: str) -> Any:
        device = self.service.manager.registry.device(name)
        if device is None:
            raise ApiError(404, f"no device named {name!r}")
        return device

    def _held_elsewhere(self, name: str) -> bool:
        """Whether a worker process holds the device's session (``workers: N``)."""
        pool = self.service.pool
        return pool is not None and pool.holder(name) is not None

    def _session_of(self, name: str) -> "CallHomeTransport | None":
        call = self.service.manager.sessions.get(name)
        if call is None or call.session is None or call.session.close_reason is not None:
            return None
        return call

    # --- routes ------------------------------------------------------------------------------

    def healthz(self, request: Request) -> Any:
        """Liveness: the service runs, its listeners and database answer."""
        service = self.service
        d = service.store.query("SELECT 1 AS ok")

        def report(_: Any) -> Any:
            pool = service.pool
            report: dict[str, Any] = {
                "status": "stopping" if service.stopping else "ok",
                "listeners": [d for d, l in service.listeners.items() if l.port is not None],
                "sessions": len(service.manager.active) + (pool.open_calls()[0] if pool is not None else 0),
                "devices": len(service.manager.registry.devices()),
            }
            if pool is not None:
                report["workers"] = [{"index": 0, "pid": os.getpid()}] + [
                    {"index": w.index, "pid": w.pid} for w in sorted(pool.workers.values(), key=lambda w: w.index)
                ]
            return report

        def broken(failure: Failure) -> Any:
            return Json({"status": "error", "error": f"database: {failure.getErrorMessage()}"}, 503)

        d.addCallbacks(report, broken)
        return d

    def metrics(self, request: Request) -> Any:
        """Prometheus text format (the worker processes' figures added in)."""
        metrics, pool = self.service.metrics, self.service.pool
        if pool is None:
            return Reply(metrics.exposition(), CONTENT_TYPE_LATEST)
        d = pool.ask_all("metrics")
        return d.addCallback(lambda others: Reply(metrics.exposition(others), CONTENT_TYPE_LATEST))

    def openapi_json(self, request: Request) -> Any:
        """The API's OpenAPI document."""
        return openapi_document()

    def openapi_yaml(self, request: Request) -> Reply:
        """The API's OpenAPI document as written."""
        return Reply(resources.files("callhome").joinpath("openapi.yaml").read_bytes(), "application/yaml")

    def _device_summary(self, device: Any) -> dict[str, Any]:
        manager = self.service.manager
        status = manager.registry.status.get(device.name)
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
            "enrolled": any(fp in manager.registry.enrollments for fp in device.host_keys),
            "session": self._session_of(device.name) is not None or self._held_elsewhere(device.name),
        }

    def devices(self, request: Request) -> Any:
        """Every device with its status."""
        devices = sorted(self.service.manager.registry.devices(), key=lambda d: d.name)
        return {"devices": [self._device_summary(d) for d in devices]}

    def device(self, request: Request, name: str) -> Any:
        """One device, with its current session's capabilities."""
        device = self._known_device(name)
        summary = self._device_summary(device)
        call = self.service.manager.sessions.get(name)
        summary["current_session"] = session_info(call) if call is not None else None
        worker = self.service.pool.holder(name) if self.service.pool is not None and call is None else None
        if worker is None or worker.channel is None:
            return summary

        def add(info: Any) -> Any:
            summary["current_session"] = info
            return summary

        return worker.channel.call("session", device=name).addCallbacks(add, lambda _: summary)

    def sessions(self, request: Request) -> Any:
        """The calls connected now (in every worker process)."""
        local = [session_info(c, capabilities=False) for c in self.service.manager.active]
        pool = self.service.pool
        if pool is None:
            return {"sessions": sorted(local, key=_started)}

        def merge(others: list[list[dict[str, Any]]]) -> Any:
            every = local + [info for sessions in others for info in sessions]
            return {"sessions": sorted(every, key=_started)}

        return pool.ask_all("sessions").addCallback(merge)

    def events(self, request: Request) -> Any:
        """Events, oldest first: since an event id or a time, for a device, of a kind."""
        where: list[str] = []
        params: list[Any] = []
        since = self._arg(request, "since")
        if since is not None:
            if _NUMBER.fullmatch(since):
                where.append("id > ?")
                params.append(int(since))
            else:
                where.append("time >= ?")
                params.append(parse_time(since, "since"))
        for name in ("device", "kind"):
            value = self._arg(request, name)
            if value is not None:
                where.append(f"{name} = ?")
                params.append(value)
        sql = "SELECT id, time, device, kind, message, data FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        params.append(self._limit(request))
        d = self.service.store.query(sql, params)

        def shape(rows: list[dict[str, Any]]) -> Any:
            for row in rows:
                row["time"] = iso(row["time"])
                row["data"] = json.loads(row["data"]) if row["data"] else None
            return {"events": rows, "next": rows[-1]["id"] if rows else (int(since) if since and _NUMBER.fullmatch(since) else 0)}

        return d.addCallback(shape)

    def results(self, request: Request) -> Any:
        """Result metadata, newest first."""
        where: list[str] = []
        params: list[Any] = []
        for name in ("device", "action", "session"):
            value = self._arg(request, name)
            if value is not None:
                where.append(f"{name} = ?")
                params.append(value)
        before = self._arg(request, "before")
        if before is not None:
            if not _NUMBER.fullmatch(before):
                raise ApiError(400, "before: must be a result id")
            where.append("id < ?")
            params.append(int(before))
        sql = "SELECT id, device, action, time, size, sha256, session, path FROM results"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(self._limit(request))
        root = self.service.config.results_dir
        d = self.service.store.query(sql, params)

        def shape(rows: list[dict[str, Any]]) -> Any:
            for row in rows:
                row["time"] = iso(row["time"])
                row["path"] = _relative(row["path"], root)
                row["url"] = f"/results/{row['id']}"
            return {"results": rows}

        return d.addCallback(shape)

    def result(self, request: Request, result_id: str) -> Any:
        """One result's payload, as saved."""
        d = self.service.store.query("SELECT path, sha256, device, action FROM results WHERE id = ?", (int(result_id),))

        def send(rows: list[dict[str, Any]]) -> Any:
            if not rows:
                raise ApiError(404, f"no result {result_id}")
            row = rows[0]
            path = Path(row["path"])
            content_type = "application/xml" if path.suffix == ".xml" else "text/plain; charset=utf-8"
            return FileReply(path, content_type, {
                "X-Content-SHA256": row["sha256"],
                "Content-Disposition": f'inline; filename="{path.name}"',
            })

        return d.addCallback(send)

    def quarantine(self, request: Request) -> Any:
        """Unknown host keys waiting for an operator."""
        pending = sorted(self.service.manager.registry.pending.values(), key=lambda p: p.first_seen)
        return {"quarantine": [
            {
                "fingerprint": p.fingerprint, "key_type": p.key_type, "first_seen": iso(p.first_seen),
                "last_seen": iso(p.last_seen), "source": p.last_source, "times_seen": p.times_seen,
            }
            for p in pending
        ]}

    def approve(self, request: Request, fingerprint: str) -> Any:
        """Enroll a quarantined key as a device: body {"name": ..., "group": ...}."""
        body = self._json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ApiError(400, 'the body must be JSON like {"name": "edge-7", "group": "core"} (group optional)')
        group = body.get("group")
        if group is not None and not isinstance(group, str):
            raise ApiError(400, "group: must be text")
        registry = self.service.manager.registry
        try:
            fp = fingerprints.normalise(fingerprint)
        except fingerprints.FingerprintError as e:
            raise ApiError(400, f"fingerprint: {e}") from None
        if fp not in registry.pending:
            raise ApiError(404, f"{fp} is not in quarantine")
        if registry.device(body["name"]) is not None:
            raise ApiError(409, f"a device named {body['name']!r} already exists")
        try:
            device = registry.approve(fp, body["name"], group)
        except EnrollmentError as e:
            raise ApiError(400, str(e)) from None
        self.service.manager.registry.save()
        if self.service.pool is not None:
            enrollment = registry.enrollments[fp]
            self.service.pool.tell_all("approve", fingerprint=fp, name=device.name, group=group, approved_at=enrollment.approved_at)
        return self._device_summary(device)

    def rpc(self, request: Request, name: str) -> Any:
        """Run an RPC on the device's open persistent session."""
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        body = self._body(request)
        if self._session_of(name) is None and self.service.pool is not None:
            self._known_device(name)
            forwarded = self.service.pool.forward(name, "rpc", content_type=content_type, body=base64.b64encode(body).decode("ascii"))
            if forwarded is not None:
                return forwarded
        return self.run_rpc(name, content_type, body)

    def run_rpc(self, name: str, content_type: str, body: bytes) -> Any:
        """Run an RPC (an XML operation or a JSON action) on a session of this process."""
        device = self._known_device(name)
        call = self._session_of(name)
        if call is None or call.call is None or call.call.device is None or call.call.device.mode != "persistent":
            raise ApiError(409, f"device {name} has no open persistent session")
        if content_type == "application/json":
            return self._rpc_action(call, device, self._parse_json(body))
        if content_type in ("application/xml", "text/xml"):
            return self._rpc_xml(call, body)
        raise ApiError(415, "send the RPC as application/xml (an operation element) or application/json (an action)")

    def _rpc_xml(self, call: "CallHomeTransport", body: bytes) -> Any:
        try:
            root = xml.parse_message(body)
        except xml.XMLRejected as e:
            raise ApiError(400, f"the body is not an acceptable operation: {e}") from None
        if xml.local_name(root) == "rpc":
            children = list(root)
            if len(children) != 1:
                raise ApiError(400, "an <rpc> must hold exactly one operation")
            root = children[0]
        assert call.session is not None
        d = call.session.rpc(root)

        def reply(r: RPCReply) -> Reply:
            return Reply(r.raw, "application/xml", headers={"X-Netconf-Outcome": "ok"})

        def failed(failure: Failure) -> Reply:
            if failure.check(xml.RPCError) and failure.value.reply is not None:
                return Reply(failure.value.reply, "application/xml", headers={"X-Netconf-Outcome": "rpc-error"})
            raise _rpc_failure(failure)

        return d.addCallbacks(reply, failed)

    def _rpc_action(self, call: "CallHomeTransport", device: Any, body: Any) -> Any:
        if not isinstance(body, dict) or len([k for k in body if k not in ("timeout", "on_error")]) != 1:
            raise ApiError(400, 'the body must name one action, e.g. {"get-config": {"source": "running"}}')
        action = next(k for k in body if k not in ("timeout", "on_error"))
        if action not in API_ACTIONS:
            raise ApiError(400, f"{action!r} cannot run through the API (allowed: {', '.join(sorted(API_ACTIONS))})")
        params = body[action]
        if isinstance(params, dict) and any(k == "file" or k.endswith("_file") for k in params):
            raise ApiError(400, "file parameters are not read through the API: send the content inline")
        try:
            step = build_step(parse_step(body, "body", self.service.config.netconf.rpc_timeout))
        except ConfigError as e:
            raise ApiError(400, str(e)) from None
        assert call.session is not None and call.call is not None
        context = self.service.manager._context(device, call.session, call.call.id)
        # Saved and recorded as a chain step's result would be; the reply also
        # comes back here.  Tracked, so a graceful stop waits for it.
        d = run_chain((step,), context, self.service.reactor)
        self.service.manager._track(d)

        def shape(outcomes: list[Any]) -> Any:
            (outcome,) = outcomes
            result = outcome.result
            reply = getattr(result, "reply", result)
            body: dict[str, Any] = {"action": outcome.action, "ok": outcome.ok, "duration": round(outcome.duration, 6), "error": outcome.error}
            if isinstance(reply, RPCReply):
                body["reply"] = reply.raw.decode("utf-8", "replace")
            if getattr(result, "path", None) is not None:
                body["saved"] = _relative(str(result.path), self.service.config.results_dir)
            return body

        return d.addCallback(shape)

    def disconnect(self, request: Request, name: str) -> Any:
        """Close the device's session (close-session)."""
        if self.service.manager.sessions.get(name) is None and self.service.pool is not None:
            self._known_device(name)
            forwarded = self.service.pool.forward(name, "api_disconnect")
            if forwarded is not None:
                return forwarded
        return self.run_disconnect(name)

    def run_disconnect(self, name: str) -> Any:
        """Close the device's session in this process."""
        self._known_device(name)
        call = self.service.manager.sessions.get(name)
        if call is None:
            raise ApiError(409, f"device {name} has no session")
        self.service.manager.event("disconnect", f"session of {name} closed through the API", name)
        d = self.service.manager.disconnect(call, "disconnected through the API")
        return d.addBoth(lambda _: {"device": name, "disconnected": True})

    def reload(self, request: Request) -> Any:
        """Re-read the config file (as SIGHUP does)."""
        from callhome.service import ReloadError

        try:
            return self.service.reload("API")
        except ReloadError as e:
            raise ApiError(422, f"reload refused, running config kept: {e}") from None


#: (method, path pattern, handler): the API, as the OpenAPI document lists it.
ROUTES: tuple[tuple[bytes, str, str], ...] = (
    (b"GET", "/healthz", "healthz"),
    (b"GET", "/metrics", "metrics"),
    (b"GET", "/openapi.json", "openapi_json"),
    (b"GET", "/openapi.yaml", "openapi_yaml"),
    (b"GET", "/devices", "devices"),
    (b"GET", "/devices/([^/]+)", "device"),
    (b"POST", "/devices/([^/]+)/rpc", "rpc"),
    (b"POST", "/devices/([^/]+)/disconnect", "disconnect"),
    (b"GET", "/sessions", "sessions"),
    (b"GET", "/events", "events"),
    (b"GET", "/results", "results"),
    (b"GET", "/results/([0-9]{1,18})", "result"),
    (b"GET", "/quarantine", "quarantine"),
    (b"POST", "/quarantine/([^/]+)/approve", "approve"),
    (b"POST", "/reload", "reload"),
)


def _started(info: dict[str, Any]) -> str:
    return info.get("started") or ""


def session_info(call: "CallHomeTransport", capabilities: bool = True) -> dict[str, Any]:
    """A call as the API shows it (``/sessions``, ``/devices/{name}``)."""
    record = call.call
    session = call.session
    info: dict[str, Any] = {
        "id": record.id if record else None,
        "device": record.device.name if record and record.device else None,
        "peer": record.peer if record else None,
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


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _rpc_failure(failure: Failure) -> ApiError:
    if failure.check(RPCTimeout):
        return ApiError(504, str(failure.value))
    if failure.check(SessionClosed):
        return ApiError(409, f"the session closed: {failure.value}")
    if failure.check(xml.RPCError):
        return ApiError(502, str(failure.value))
    return ApiError(502, f"{type(failure.value).__name__}: {failure.value}")


_OPENAPI: dict[str, Any] | None = None


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (``callhome/openapi.yaml``), parsed once."""
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = yaml.safe_load(resources.files("callhome").joinpath("openapi.yaml").read_text("utf-8"))
    return _OPENAPI


def api_site(service: "CallHomeService") -> Site:
    """The HTTP site serving the API of C{service}."""
    site = Site(ManagementApi(service))
    site.displayTracebacks = False
    site.noisy = False
    return site


