"""
Why a control-plane operation was refused, transport-neutral.

The HTTP API maps each kind to a status code; the worker channel carries
them by name (:mod:`callhome.control.wire`), so a refusal in a worker
process reaches the API client exactly as one in the main process.
"""

from __future__ import annotations


class ControlError(Exception):
    """An operation refused, with a message for the operator."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ControlError):
    """No such device, result or quarantined key."""


class Conflict(ControlError):
    """The device has no (suitable) session, or the name is taken."""


class InvalidRequest(ControlError):
    """The request itself is wrong (a bad body, parameter or action)."""


class UnsupportedMediaType(ControlError):
    """The body is neither an XML operation nor a JSON action."""


class Gone(ControlError):
    """The result's file is no longer on disk."""


class DeviceTimeout(ControlError):
    """The device did not answer in time."""


class DeviceFailed(ControlError):
    """The device's session failed underneath the request."""


class ReloadRefused(ControlError):
    """A reload was refused; the running config is unchanged."""


class InternalError(ControlError):
    """A failure of our own (logged where it happened)."""
