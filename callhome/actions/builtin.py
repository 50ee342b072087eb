"""
The built-in actions: thin functions over the NETCONF session.

Chain syntax (``etc/config.yaml``)::

    chains:
      inventory:
        - get: {}                                   # whole state
        - get: {subtree: "<interfaces xmlns='urn:ietf:params:xml:ns:yang:ietf-interfaces'/>"}
        - get-config: {source: running, xpath: "/system", namespaces: {s: "urn:..."}}

Each saves the device's reply, exactly as received, through the results
writer and returns the saved path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lxml import etree
from twisted.internet import defer, task

from callhome.actions import ActionConfigError, ActionContext
from callhome.netconf import xml
from callhome.netconf.session import RPCReply

DATASTORES = ("running", "candidate", "startup")


def _filter_params(subtree: Any, xpath: Any, namespaces: Any) -> dict[str, Any]:
    """Check the filter parameters shared by get and get-config."""
    if subtree is not None and not isinstance(subtree, str):
        raise ActionConfigError("must be XML text", key="subtree")
    if xpath is not None and not isinstance(xpath, str):
        raise ActionConfigError("must be an XPath expression (text)", key="xpath")
    if subtree is not None and xpath is not None:
        raise ActionConfigError("give subtree or xpath, not both")
    if namespaces is not None:
        if xpath is None:
            raise ActionConfigError("only goes with xpath", key="namespaces")
        if not isinstance(namespaces, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in namespaces.items()
        ):
            raise ActionConfigError("must map prefixes to namespace URIs", key="namespaces")
    return {"subtree": subtree, "xpath": xpath, "namespaces": namespaces}


class _SavingRPC:
    """An action that sends one operation and saves the reply."""

    name = ""

    def __init__(self, operation: etree._Element) -> None:
        self.operation = operation

    def __call__(self, context: ActionContext) -> defer.Deferred[Path]:
        """Send the operation; save and return the path of the reply."""
        d = context.session.rpc(self.operation)
        d.addCallback(self._save, context)
        return d

    def _save(self, reply: RPCReply, context: ActionContext) -> Path:
        return context.results.save(context.device.name, self.name, reply.raw)


class Get(_SavingRPC):
    """``<get>``: state and configuration, optionally filtered."""

    name = "get"

    def __init__(self, subtree: str | None = None, xpath: str | None = None, namespaces: Mapping[str, str] | None = None) -> None:
        params = _filter_params(subtree, xpath, namespaces)
        try:
            operation = xml.get(**params)
        except etree.XMLSyntaxError as e:
            raise ActionConfigError(f"not well-formed XML: {e}", key="subtree") from None
        super().__init__(operation)


class GetConfig(_SavingRPC):
    """``<get-config>`` of one datastore, optionally filtered."""

    name = "get-config"

    def __init__(self, source: str = "running", subtree: str | None = None, xpath: str | None = None, namespaces: Mapping[str, str] | None = None) -> None:
        if source not in DATASTORES:
            raise ActionConfigError(f"must be one of {', '.join(DATASTORES)}", key="source")
        params = _filter_params(subtree, xpath, namespaces)
        try:
            operation = xml.get_config(source, **params)
        except etree.XMLSyntaxError as e:
            raise ActionConfigError(f"not well-formed XML: {e}", key="subtree") from None
        super().__init__(operation)


class Sleep:
    """
    ``sleep: {seconds: N}``: wait before the next step.

    Also the workaround for devices that lose an ``<rpc>`` read together
    with the client hello (yuma123's netconfd does): a short sleep as the
    first step.
    """

    name = "sleep"

    def __init__(self, seconds: float = 1.0) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ActionConfigError("must be a number of seconds, 0 or more", key="seconds")
        self.seconds = float(seconds)

    def __call__(self, context: ActionContext) -> defer.Deferred[None]:
        """Wait, on the injected clock."""
        return task.deferLater(context.clock, self.seconds, lambda: None)


ACTIONS = {
    "get": Get,
    "get-config": GetConfig,
    "sleep": Sleep,
}
