"""
The channel between the main process and a worker: requests, answers and
notices as length-prefixed JSON messages on the worker's standard input
and output.  Not AMP: an RPC reply can be megabytes, and AMP values stop at
64 KiB.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable

from twisted.internet import defer, error
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from callhome.logs import LevelLogger


class RemoteError(Exception):
    """The other process answered a request with an error."""


class Channel(Int32StringReceiver):
    """
    Requests, answers and notices as JSON messages, both ways.

    A request is ``{"i": id, "m": method, "a": {...}}`` and is answered with
    ``{"i": id, "r": result}`` or ``{"i": id, "e": message}``; a notice is a
    request without an id (no answer).  Methods are looked up in
    C{handlers}; a handler may return a Deferred.
    """

    # An API RPC's reply crosses the channel whole: allow the largest a
    # NETCONF session accepts by default.
    MAX_LENGTH = 1024 * 1024 * 1024
    log = LevelLogger(namespace="callhome.workers")

    def __init__(self, handlers: dict[str, Callable[..., Any]], lost: Callable[[Failure], None] | None = None) -> None:
        self.handlers = handlers
        self.lost = lost
        self._ids = itertools.count(1)
        self._waiting: dict[int, defer.Deferred[Any]] = {}
        self.connected_ = False

    def connectionMade(self) -> None:
        """The other process is there."""
        self.connected_ = True

    def call(self, method: str, **args: Any) -> defer.Deferred[Any]:
        """Ask the other process; fires with its answer (or L{RemoteError})."""
        if not self.connected_:
            return defer.fail(RemoteError("the process is gone"))
        request_id = next(self._ids)
        answer: defer.Deferred[Any] = defer.Deferred()
        self._waiting[request_id] = answer
        self._send({"i": request_id, "m": method, "a": args})
        return answer

    def notify(self, method: str, **args: Any) -> None:
        """Tell the other process something; no answer."""
        if self.connected_:
            self._send({"m": method, "a": args})

    def _send(self, message: dict[str, Any]) -> None:
        self.sendString(json.dumps(message, separators=(",", ":")).encode("utf-8"))

    def stringReceived(self, data: bytes) -> None:
        """One message: an answer to one of ours, or a request or notice."""
        message = json.loads(data)
        if "m" not in message:
            waiting = self._waiting.pop(message["i"], None)
            if waiting is not None:
                if "e" in message:
                    waiting.errback(RemoteError(message["e"]))
                else:
                    waiting.callback(message.get("r"))
            return
        handler = self.handlers.get(message["m"])
        request_id = message.get("i")
        if handler is None:
            result: defer.Deferred[Any] = defer.fail(RemoteError(f"no method {message['m']!r}"))
        else:
            result = defer.maybeDeferred(handler, **message.get("a", {}))
        if request_id is None:
            result.addErrback(lambda f: self.log.failure("notice {method} failed", f, method=message["m"]))
            return

        def failed(failure: Failure) -> None:
            if not failure.check(RemoteError):
                self.log.failure("request {method} failed", failure, method=message["m"])
            self._answer({"i": request_id, "e": f"{type(failure.value).__name__}: {failure.getErrorMessage()}"})

        result.addCallbacks(lambda r: self._answer({"i": request_id, "r": r}), failed)

    def _answer(self, message: dict[str, Any]) -> None:
        if self.connected_:
            self._send(message)

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        """The other process is gone: every question waiting fails."""
        self.connected_ = False
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            answer.errback(RemoteError("the process is gone"))
        if self.lost is not None:
            self.lost(reason)
