"""
Control-plane answers as plain values, for the channel to another process
(a worker today, another cluster instance tomorrow): an RPC's XML reply,
a JSON body, or a refusal by its kind.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.python.failure import Failure

from callhome.control.errors import (
    Conflict, ControlError, DeviceFailed, DeviceTimeout, Gone, InternalError, InvalidRequest,
    NotFound, ReloadRefused, UnsupportedMediaType,
)
from callhome.control.results import XmlAnswer

_KINDS: dict[str, type[ControlError]] = {
    kind.__name__: kind
    for kind in (NotFound, Conflict, InvalidRequest, UnsupportedMediaType, Gone, DeviceTimeout,
                 DeviceFailed, ReloadRefused, InternalError)
}


def encode_answer(result: Any) -> dict[str, Any]:
    """An operation's result (or its failure) as plain values."""
    if isinstance(result, Failure):
        error = result.value
        if isinstance(error, ControlError):
            return {"error": type(error).__name__, "message": error.message}
        return {"error": "InternalError", "message": f"internal error in a worker: {type(error).__name__} (logged)"}
    if isinstance(result, XmlAnswer):
        return {"xml": base64.b64encode(result.raw).decode("ascii"), "outcome": result.outcome}
    return {"json": result}


def decode_answer(data: dict[str, Any]) -> Any:
    """What L{encode_answer} encoded: the result, or raises the refusal."""
    if "error" in data:
        raise _KINDS.get(data["error"], InternalError)(str(data.get("message", "")))
    if "xml" in data:
        return XmlAnswer(base64.b64decode(data["xml"]), data["outcome"])
    return data["json"]
