"""
The API's HTTP limits, applied before a request body is read.

twisted.web reads a whole body (spooling it to a temporary file past
100 KB) before the resource sees the request, so a check in the resource
comes too late: anyone who reaches the port could fill the disk.  Here:

* as soon as the headers are in (L{GuardedRequest.gotLength}), a request
  with a body and without the right bearer token is answered 401, and one
  whose ``Content-Length`` is over the limit 413; the connection is closed
  and nothing of the body is read or stored;
* a chunked body is cut the moment it passes the limit (413);
* the request line and headers together are limited (L{MAX_HEADER_BYTES},
  over it twisted.web answers 400), and so is their number;
* one client address may hold at most C{max_connections_per_client}
  connections at once (L{PerClientLimit}); more are closed at accept.

Requests without a body (every GET) go on to the resource, which checks the
token itself (``/healthz`` needs none).
"""

from __future__ import annotations

import hmac
import json
from http import HTTPStatus
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from callhome.logs import LevelLogger

#: request bodies larger than this are refused (an RPC, an approval).
MAX_BODY = 16 * 1024 * 1024
#: the request line and every header, together.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
#: connections one client address may hold open at once.
MAX_CONNECTIONS_PER_CLIENT = 32


def token_matches(header: str | bytes | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries C{token} as a bearer token (constant time)."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, value = (header or "").partition(" ")
    value = value.strip()
    return scheme.lower() == "bearer" and bool(value) and hmac.compare_digest(value.encode(), token.encode())


class GuardedRequest(Request):
    """A request refused before its body when it has no business sending one."""

    log = LevelLogger(namespace="callhome.api")

    #: set once the request was refused: its body is ignored and it is never rendered.
    refused = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        """The headers are in: refuse now, or let the body come (at most L{MAX_BODY})."""
        # Site.buildProtocol sets the channel's site; the stubs do not know it.
        token = getattr(getattr(self.channel, "site", None), "token", None)
        has_body = length is None or length > 0
        if has_body and token is not None and not token_matches(self.requestHeaders.getRawHeaders(b"authorization", [None])[0], token):
            self.refuse(401, "a valid bearer token is required (Authorization: Bearer ...)",
                        {"WWW-Authenticate": 'Bearer realm="callhome"'})
            return
        if length is not None and length > MAX_BODY:
            self.refuse(413, f"request body over {MAX_BODY} bytes")
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """A piece of the body: dropped once refused; a body over the limit is cut."""
        if self.refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self.refuse(413, f"request body over {MAX_BODY} bytes")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole request is in: render it, unless it was refused already."""
        if not self.refused:
            super().requestReceived(command, path, version)

    def refuse(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer with C{status} and a JSON error at once, then close: the rest is never read."""
        self.refused = True
        peer = self.getClientAddress()
        self.log.warn("API request from {client} refused before its body: {status} {error}",
                      client=getattr(peer, "host", str(peer)), status=status, error=message)
        if self.content is not None:
            self.content.close()
        body = json.dumps({"error": message}).encode("utf-8") + b"\n"
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
                 f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            transport.loseConnection()


class GuardedSite(Site):
    """
    The API's site: L{GuardedRequest}s, header limits, no tracebacks.

    @ivar token: the bearer token bodies need (None: none configured).
    """

    requestFactory = GuardedRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, resource: IResource, token: str | None) -> None:
        super().__init__(resource)
        self.token = token

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """A channel with our header limits."""
        channel = super().buildProtocol(addr)
        # The generic channel wraps the HTTP/1.1 one; the limits are its.
        inner = getattr(channel, "_channel", channel)
        inner.totalHeadersSize = MAX_HEADER_BYTES
        inner.maxHeaders = MAX_HEADERS
        return channel


class PerClientLimit(WrappingFactory):
    """
    At most C{limit} connections per client address at once; more are closed
    at accept.  (Twisted's own LimitConnectionsByPeer indexes addresses as
    tuples, which they no longer are.)
    """

    noisy = False

    def __init__(self, wrapped: Site, limit: int = MAX_CONNECTIONS_PER_CLIENT) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.open: dict[str, int] = {}

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]  # None closes the connection, as ServerFactory allows
        """Count the client; refuse it past the limit."""
        host = str(getattr(addr, "host", addr))
        if self.open.get(host, 0) >= self.limit:
            return None
        self.open[host] = self.open.get(host, 0) + 1
        protocol = super().buildProtocol(addr)
        protocol.client_host = host  # type: ignore[attr-defined]  # remembered for unregisterProtocol
        return protocol

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        """A client connection ended."""
        super().unregisterProtocol(p)
        host = getattr(p, "client_host", None)
        if host is not None and host in self.open:
            self.open[host] -= 1
            if not self.open[host]:
                del self.open[host]
