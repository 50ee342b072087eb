"""
The management API: HTTP only (twisted.web): routing, authentication,
encoding and errors.  What each route does is a control-plane operation
(:mod:`callhome.control.operations`); this module turns a request into its
arguments and its answer (or refusal) into a response.

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

import json
import re
from importlib import resources
from typing import Any, Callable
from urllib.parse import unquote

import yaml
from twisted.internet import defer
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from callhome.control import errors
from callhome.control.http import MAX_BODY, GuardedSite, PerClientLimit, token_matches
from callhome.control.operations import WHOLE_NUMBER, ControlPlane
from callhome.control import page
from callhome.control.results import ResultFile, XmlAnswer
from callhome.logs import LevelLogger
from callhome.metrics import CONTENT_TYPE_LATEST

LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000

#: the HTTP status of each kind of refusal.
STATUS: dict[type[errors.ControlError], int] = {
    errors.InvalidRequest: 400,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.UnsupportedMediaType: 415,
    errors.ReloadRefused: 422,
    errors.InternalError: 500,
    errors.DeviceFailed: 502,
    errors.DeviceTimeout: 504,
}


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


class Json:
    """A JSON response with a status other than 200."""

    def __init__(self, body: Any, status: int) -> None:
        self.body = body
        self.status = status


class ManagementApi(Resource):
    """
    Every route of the API: one resource that dispatches on method and path.

    @ivar control: the operations it exposes.
    @ivar token: the bearer token requests must carry (None: none), the one
        the API started with: api changes apply after a restart, so a reload
        must not change who may use this listener.
    """

    isLeaf = True
    log = LevelLogger(namespace="callhome.api")

    def __init__(self, control: ControlPlane, token: str | None) -> None:
        super().__init__()
        self.control = control
        self.token = token
        self.routes: list[tuple[bytes, re.Pattern[str], Callable[..., Any]]] = [
            (method, re.compile(f"^{pattern}$"), getattr(self, handler)) for method, pattern, handler in ROUTES
        ]

    # --- dispatch ------------------------------------------------------------------------

    def render(self, request: Request) -> Any:
        """Authenticate, route, run the handler; answer with JSON (or the payload)."""
        # A client that hangs up before the answer must not get one written
        # to a dead connection: notifyFinish errs when the connection is lost.
        request.notifyFinish().addErrback(lambda _: setattr(request, "callhome_gone", True))
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
                if handler.__name__ not in PUBLIC:
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
        if not token_matches(request.getHeader("authorization"), token):
            raise ApiError(401, "a valid bearer token is required (Authorization: Bearer ...)", {"WWW-Authenticate": 'Bearer realm="callhome"'})

    def _respond(self, body: Any, request: Request) -> None:
        if _done(request):
            return
        if isinstance(body, ResultFile):
            self._send_file(body, request)
            return
        if isinstance(body, XmlAnswer):
            body = Reply(body.raw, "application/xml", headers={"X-Netconf-Outcome": body.outcome})
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

    def _send_file(self, body: ResultFile, request: Request) -> None:
        try:
            f = open(body.path, "rb")
        except OSError:
            if body.chunks is not None:
                self._send_chunks(body, request)
                return
            self._fail(Failure(errors.Gone("the result's file is gone (removed from results_dir)")), request)
            return
        self._result_headers(body, request)
        done = FileSender().beginFileTransfer(f, request)

        def finish(_: Any) -> None:
            f.close()
            if not _done(request):
                request.finish()

        done.addBoth(finish)

    @staticmethod
    def _result_headers(body: ResultFile, request: Request) -> None:
        request.setHeader("Content-Type", body.content_type)
        request.setHeader("X-Content-SHA256", body.sha256)
        request.setHeader("Content-Disposition", f'inline; filename="{body.path.name}"')

    def _send_chunks(self, body: ResultFile, request: Request, seq: int = 0) -> None:
        """Stream a payload from the database, one chunk in memory at a time."""
        assert body.chunks is not None

        def got(data: bytes | None) -> None:
            if _done(request):
                return
            if data is None:
                if seq == 0:
                    self._fail(Failure(errors.Gone("the result's payload is in neither results_dir nor the database")), request)
                else:
                    request.finish()
                return
            if seq == 0:
                self._result_headers(body, request)
            request.write(data)
            self._send_chunks(body, request, seq + 1)

        body.chunks(seq).addCallbacks(got, lambda failure: self._fail(failure, request))

    def _fail(self, failure: Failure, request: Request) -> None:
        if _done(request):
            return
        if isinstance(failure.value, ApiError):
            error = failure.value
        elif isinstance(failure.value, errors.ControlError):
            refusal = failure.value
            if isinstance(refusal, errors.InternalError):
                self.log.error("API request {method} {path} failed: {error}", method=request.method, path=request.path, error=refusal.message)
            error = ApiError(STATUS.get(type(refusal), 500), refusal.message)
        else:
            self.log.failure("API request {method} {path} failed", failure, method=request.method, path=request.path)
            error = ApiError(500, f"internal error: {type(failure.value).__name__} (logged)")
        request.setResponseCode(error.status)
        for name, value in error.headers.items():
            request.setHeader(name, value)
        request.setHeader("Content-Type", "application/json")
        request.write(json.dumps({"error": error.message}).encode("utf-8") + b"\n")
        request.finish()

    # --- request arguments --------------------------------------------------------------

    def _arg(self, request: Request, name: str) -> str | None:
        values = request.args.get(name.encode())
        return values[0].decode("utf-8", "replace") if values else None

    def _limit(self, request: Request) -> int:
        text = self._arg(request, "limit")
        if text is None:
            return LIST_LIMIT
        if not WHOLE_NUMBER.fullmatch(text) or not 0 < int(text) <= MAX_LIST_LIMIT:
            raise ApiError(400, f"limit: must be a whole number from 1 to {MAX_LIST_LIMIT}")
        return int(text)

    def _body(self, request: Request) -> bytes:
        content = request.content
        assert content is not None  # the body's buffer, made before the request is processed
        content.seek(0, 2)
        if content.tell() > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        content.seek(0)
        return content.read()

    def _json_body(self, request: Request) -> Any:
        body = self._body(request)
        try:
            return json.loads(body or b"{}")
        except ValueError as e:
            raise ApiError(400, f"the body is not JSON: {e}") from None

    # --- routes ------------------------------------------------------------------------------

    def healthz(self, request: Request) -> Any:
        """Liveness: the service runs, its listeners and database answer (503 if not)."""
        return self.control.health().addCallback(lambda report: Json(report, 503) if report["status"] == "error" else report)

    def metrics(self, request: Request) -> Any:
        """Prometheus text format (this process's figures and its workers')."""
        return defer.maybeDeferred(self.control.metrics_text).addCallback(lambda text: Reply(text, CONTENT_TYPE_LATEST))

    def openapi_json(self, request: Request) -> Any:
        """The API's OpenAPI document."""
        return openapi_document()

    def openapi_yaml(self, request: Request) -> Reply:
        """The API's OpenAPI document as written."""
        return Reply(resources.files("callhome.control").joinpath("openapi.yaml").read_bytes(), "application/yaml")

    def status_page(self, request: Request) -> Reply:
        """The status page's shell: 401 without the token (when one is set), and no data either way."""
        headers = dict(page.SECURITY_HEADERS)
        status = 200
        if self.token is not None and not token_matches(request.getHeader("authorization"), self.token):
            status = 401  # the page then asks for the token, and keeps it in the tab
        return Reply(page.asset("status.html"), "text/html; charset=utf-8", status, headers)

    def status_script(self, request: Request) -> Reply:
        """The status page's script."""
        return Reply(page.asset("status.js"), "text/javascript; charset=utf-8", 200, dict(page.SECURITY_HEADERS))

    def devices(self, request: Request) -> Any:
        """Every device with its status (``?status=overdue``: only those)."""
        return {"devices": self.control.devices(self._arg(request, "status"))}

    def device(self, request: Request, name: str) -> Any:
        """One device, with its current session's capabilities."""
        return self.control.device(name)

    def sessions(self, request: Request) -> Any:
        """The calls connected now (in every worker process)."""
        return defer.maybeDeferred(self.control.sessions).addCallback(lambda every: {"sessions": every})

    def events(self, request: Request) -> Any:
        """Events, oldest first: since an event id or a time, for a device, of a kind."""
        return self.control.events(
            self._arg(request, "since"), self._arg(request, "device"), self._arg(request, "kind"), self._limit(request),
        )

    def results(self, request: Request) -> Any:
        """Result metadata, newest first."""
        before = self._arg(request, "before")
        if before is not None and not WHOLE_NUMBER.fullmatch(before):
            raise ApiError(400, "before: must be a result id")
        return self.control.results(
            self._arg(request, "device"), self._arg(request, "action"), self._arg(request, "session"),
            int(before) if before is not None else None, self._limit(request),
        )

    def result(self, request: Request, result_id: str) -> Any:
        """One result's payload, as saved."""
        return self.control.result_file(int(result_id))

    def schemas(self, request: Request) -> Any:
        """The cached YANG modules (``?device=NAME``: those it announced)."""
        return self.control.schemas(self._arg(request, "device")).addCallback(lambda rows: {"schemas": rows})

    def schema(self, request: Request, module: str, revision: str) -> Any:
        """One module's YANG text."""
        d = self.control.schema_text(module, revision)
        return d.addCallback(lambda text: Reply(text.encode("utf-8"), "text/plain; charset=utf-8", headers={
            "Content-Disposition": f'inline; filename="{module}@{revision}.yang"'}))

    def quarantine(self, request: Request) -> Any:
        """Unknown host keys waiting for an operator."""
        return {"quarantine": self.control.quarantine()}

    def approve(self, request: Request, fingerprint: str) -> Any:
        """Enroll a quarantined key as a device: body {"name": ..., "group": ...}."""
        body = self._json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ApiError(400, 'the body must be JSON like {"name": "edge-7", "group": "core"} (group optional)')
        group = body.get("group")
        if group is not None and not isinstance(group, str):
            raise ApiError(400, "group: must be text")
        return self.control.approve(fingerprint, body["name"], group)

    def rpc(self, request: Request, name: str) -> Any:
        """Run an RPC on the device's open persistent session."""
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        return self.control.rpc(name, content_type, self._body(request))

    def disconnect(self, request: Request, name: str) -> Any:
        """Close the device's session (close-session)."""
        return self.control.disconnect(name)

    def reload(self, request: Request) -> Any:
        """Re-read the config file (as SIGHUP does)."""
        return self.control.reload("API")


#: (method, path pattern, handler): the API, as the OpenAPI document lists it.
ROUTES: tuple[tuple[bytes, str, str], ...] = (
    (b"GET", "/", "status_page"),
    (b"GET", "/status.js", "status_script"),
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
    (b"GET", "/schemas", "schemas"),
    (b"GET", "/schemas/([^/@]+)@([^/@]*)", "schema"),
    (b"POST", "/quarantine/([^/]+)/approve", "approve"),
    (b"POST", "/reload", "reload"),
)


#: routes served without the token: probes, and the page's shell and script
#: (which hold no data; the page asks for the token to read the API).
PUBLIC = frozenset(["healthz", "status_page", "status_script"])


def _done(request: Request) -> bool:
    """The request was answered, or its client is gone (see L{ManagementApi.render})."""
    return bool(request.finished or getattr(request, "callhome_gone", False))


_OPENAPI: dict[str, Any] | None = None


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (``callhome/control/openapi.yaml``), parsed once."""
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = yaml.safe_load(resources.files("callhome.control").joinpath("openapi.yaml").read_text("utf-8"))
    return _OPENAPI


def api_site(control: ControlPlane, token: str | None) -> PerClientLimit:
    """
    The HTTP factory serving the API over C{control}: limits before the body
    (L{callhome.control.http}), then the routes.
    """
    return PerClientLimit(GuardedSite(ManagementApi(control, token), token))
