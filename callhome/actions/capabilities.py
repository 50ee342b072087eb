"""What an action needs the device to advertise before it runs."""

from __future__ import annotations

from callhome.actions import ActionContext
from callhome.netconf import operations as ops


class MissingCapability(Exception):
    """The device did not advertise a capability the action needs."""


def require(context: ActionContext, capability: str, action: str) -> None:
    """Fail the step unless the device advertised C{capability} (a prefix)."""
    uri = ops.CAPABILITY[capability]
    if not any(c.startswith(uri) for c in context.session.capabilities):
        raise MissingCapability(f"{action} needs the :{capability} capability ({uri}), which the device does not advertise")
