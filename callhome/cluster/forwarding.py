"""
The control plane's view of sessions other cluster instances hold
(L{callhome.control.operations.RemoteSessions}): lists come from the
shared database; an RPC or a disconnect is forwarded to the holder's API
(its ``cluster.advertise`` URL, with the cluster's API token), and its
answer or refusal comes back as if it were our own.

Forwarding over HTTP rather than PostgreSQL LISTEN/NOTIFY: an RPC reply
can be megabytes (NOTIFY payloads stop at 8000 bytes), the holder's API
already does exactly this operation with its limits and errors, and an
operator can follow a forwarded request in the holder's access log.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from callhome.control import errors
from callhome.control.api import STATUS
from callhome.control.results import XmlAnswer
from callhome.reactor import IServiceReactor

if TYPE_CHECKING:  # pragma: no cover
    from callhome.cluster.node import ClusterNode

#: HTTP status -> the refusal it stands for (the API's own table, inverted).
_KIND_OF_STATUS = {status: kind for kind, status in STATUS.items()}


class ClusterSessions:
    """Sessions held by the other instances of the cluster."""

    def __init__(self, node: "ClusterNode", reactor: IServiceReactor, token: str | None, timeout: float) -> None:
        self.node = node
        self.token = token
        self.timeout = timeout
        self.agent = Agent(reactor)
        self.reactor = reactor

    def holds(self, device: str) -> bool:
        """Whether another live instance holds C{device}'s session (as of the last refresh)."""
        return device in self.node.elsewhere and device not in self.node.manager.sessions

    def session(self, device: str) -> defer.Deferred[Any]:
        """The session as the database records it."""
        found = [s for s in self.node.sessions_elsewhere() if s["device"] == device]
        return defer.succeed(found[0] if found else None)

    def sessions(self) -> defer.Deferred[list[list[dict[str, Any]]]]:
        """Every other instance's sessions."""
        return defer.succeed([self.node.sessions_elsewhere()])

    def rpc(self, device: str, content_type: str, body: bytes) -> defer.Deferred[Any]:
        """Forward to the holder's C{POST /devices/{name}/rpc}."""
        return self._forward(device, "rpc", body, content_type)

    def disconnect(self, device: str) -> defer.Deferred[Any]:
        """Forward to the holder's C{POST /devices/{name}/disconnect}."""
        return self._forward(device, "disconnect", b"", None)

    def approved(self, fingerprint: str, name: str, group: str | None, approved_at: float) -> None:
        """Nothing to send: the others read approvals from the database within a second."""

    def metrics(self) -> defer.Deferred[list[Any]]:
        """/metrics is this instance's own (each instance is scraped)."""
        return defer.succeed([])

    def open_calls(self) -> tuple[int, int]:
        """Counted per instance: nothing of the others'."""
        return 0, 0

    def processes(self) -> list[dict[str, Any]]:
        """Other processes of this instance: none (workers are not used in a cluster)."""
        return []

    def _forward(self, device: str, operation: str, body: bytes, content_type: str | None) -> defer.Deferred[Any]:
        row = self.node.elsewhere.get(device)
        instance = row["instance"] if row else "?"
        base = self.node.advertised.get(instance)
        if base is None:
            return defer.fail(errors.DeviceFailed(f"instance {instance} holds the session of {device} but advertises no API URL"))
        headers = Headers({"Content-Type": [content_type or "application/json"], "X-Callhome-Forwarded-By": [self.node.instance]})
        if self.token is not None:
            headers.addRawHeader("Authorization", f"Bearer {self.token}")
        url = f"{base}/devices/{quote(device, safe='')}/{operation}".encode("ascii")
        request = self.agent.request(b"POST", url, headers, FileBodyProducer(BytesIO(body)) if body else None)
        request.addTimeout(self.timeout, self.reactor)

        def answered(response: Any) -> defer.Deferred[Any]:
            return readBody(response).addCallback(lambda content: _answer(response, content, instance))

        def unreachable(failure: Any) -> Any:
            if failure.check(errors.ControlError):
                return failure
            raise errors.DeviceFailed(f"instance {instance} holding the session of {device} did not answer: {failure.getErrorMessage() or failure.type.__name__}")

        return request.addCallback(answered).addErrback(unreachable)


def _answer(response: Any, content: bytes, instance: str) -> Any:
    """The holder's HTTP answer as the control plane's result or refusal."""
    kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0].split(b";")[0].decode("latin-1")
    if response.code == 200:
        if kind in ("application/xml", "text/xml"):
            outcome = (response.headers.getRawHeaders(b"x-netconf-outcome") or [b"ok"])[0].decode("latin-1")
            return XmlAnswer(content, outcome)
        return json.loads(content)
    try:
        message = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        message = content[:200].decode("utf-8", "replace")
    raise _KIND_OF_STATUS.get(response.code, errors.InternalError)(f"{message} (instance {instance})")
