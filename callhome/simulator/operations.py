"""
The RFC 6241 and RFC 6022 operations a session answers: reading their
parameters and carrying them out on the session's L{Datastore}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence, cast

from lxml import etree

from callhome.simulator.constants import (
    DATASTORES,
    DEFAULT_CONFIRM_TIMEOUT,
    MONITORING_NS,
    NETCONF_NS,
    NOTIFICATION_NS,
    WITH_DEFAULTS_MODES,
    WITH_DEFAULTS_NS,
)
from callhome.simulator.editing import validate
from callhome.simulator.errors import RpcError, _bad
from callhome.simulator.filters import apply_filter
from callhome.simulator.xmltree import _detached, _elements, _local, _namespace, _q, _text

if TYPE_CHECKING:
    from callhome.simulator.datastore import Datastore
    from callhome.simulator.netconf_server import NetconfServerProtocol

#: operation -> (handler method, allowed parameters)
_OPERATIONS: dict[str, tuple[str, frozenset[str]]] = {
    _q("get"): ("_get", frozenset({_q("filter"), _q("with-defaults", WITH_DEFAULTS_NS)})),
    _q("get-config"): ("_get_config", frozenset({_q("source"), _q("filter"), _q("with-defaults", WITH_DEFAULTS_NS)})),
    _q("edit-config"): ("_edit_config", frozenset({_q(t) for t in ("target", "default-operation", "test-option", "error-option", "config", "url")})),
    _q("copy-config"): ("_copy_config", frozenset({_q("target"), _q("source"), _q("with-defaults", WITH_DEFAULTS_NS)})),
    _q("delete-config"): ("_delete_config", frozenset({_q("target")})),
    _q("lock"): ("_lock", frozenset({_q("target")})),
    _q("unlock"): ("_unlock", frozenset({_q("target")})),
    _q("commit"): ("_commit", frozenset({_q(t) for t in ("confirmed", "confirm-timeout", "persist", "persist-id")})),
    _q("cancel-commit"): ("_cancel_commit", frozenset({_q("persist-id")})),
    _q("discard-changes"): ("_discard_changes", frozenset()),
    _q("validate"): ("_validate", frozenset({_q("source")})),
    _q("close-session"): ("_close_session", frozenset()),
    _q("kill-session"): ("_kill_session", frozenset({_q("session-id")})),
    _q("get-schema", MONITORING_NS): ("_get_schema", frozenset({_q(t, MONITORING_NS) for t in ("identifier", "version", "format")})),
    _q("create-subscription", NOTIFICATION_NS): (
        "_create_subscription",
        frozenset({_q(t, NOTIFICATION_NS) for t in ("stream", "filter", "startTime", "stopTime")} | {_q("filter")}),
    ),
}


class SessionOperations:
    """
    The operation handlers of L{NetconfServerProtocol}, one method per entry
    of C{_OPERATIONS}: each takes the operation element and the list of
    actions to run after the reply, and returns the reply's content (None
    for ``<ok/>``) or raises L{RpcError}.
    """

    if TYPE_CHECKING:
        datastore: Datastore
        session_id: int
        _closing: bool

    # --- parameters ---------------------------------------------------------------------------

    @staticmethod
    def _datastore_choice(operation: etree._Element, parameter: str, allowed: Sequence[str], config: bool = False) -> tuple[str, etree._Element | None]:
        """
        Read ``<source>`` or ``<target>``: a datastore name, or ``config``
        with the inline ``<config>`` element.
        """
        holder = operation.find(_q(parameter))
        if holder is None:
            raise _bad("missing-element", parameter, f"{_local(operation)} needs a <{parameter}>")
        choices = _elements(holder)
        if len(choices) != 1:
            raise _bad("invalid-value" if choices else "missing-element", parameter, f"<{parameter}> must name exactly one datastore")
        choice = choices[0]
        name = _local(choice)
        if choice.tag == _q("url"):
            raise RpcError("operation-not-supported", "the :url capability is not supported")
        if config and choice.tag == _q("config"):
            return "config", choice
        if _namespace(choice) != NETCONF_NS or name not in DATASTORES:
            raise _bad("invalid-value", name, f"<{name}> is not a {parameter} datastore of {_local(operation)}")
        if name not in allowed:
            raise RpcError("operation-not-supported", f"{_local(operation)} does not support the {name} datastore as {parameter}")
        return name, None

    @staticmethod
    def _choice(operation: etree._Element, parameter: str, allowed: Sequence[str], default: str) -> str:
        element = operation.find(_q(parameter))
        if element is None:
            return default
        value = _text(element)
        if value not in allowed:
            raise _bad("invalid-value", parameter, f"<{parameter}> must be one of {', '.join(allowed)}, not {value!r}")
        return value

    @staticmethod
    def _with_defaults(operation: etree._Element) -> str:
        element = operation.find(_q("with-defaults", WITH_DEFAULTS_NS))
        if element is None:
            return "explicit"
        mode = _text(element)
        if mode not in WITH_DEFAULTS_MODES:
            raise _bad("invalid-value", "with-defaults", f"with-defaults mode {mode!r} is not supported")
        return mode

    def _filter(self, operation: etree._Element, namespace: str = NETCONF_NS) -> etree._Element | None:
        flt = operation.find(_q("filter", namespace))
        if flt is None and namespace != NETCONF_NS:
            flt = operation.find(_q("filter"))
        return flt

    # --- operations ----------------------------------------------------------------------------

    def _data(self, elements: Iterable[etree._Element]) -> etree._Element:
        data = etree.Element(_q("data"), nsmap={None: NETCONF_NS})
        for element in elements:
            data.append(element)
        return data

    def _get(self, operation: etree._Element, after: list) -> etree._Element:
        """``<get>``: running and the device's state, filtered."""
        self._with_defaults(operation)
        content = list(self.datastore.running) + self.datastore.state(_session(self))
        return self._data(apply_filter(content, self._filter(operation)))

    def _get_config(self, operation: etree._Element, after: list) -> etree._Element:
        source, _ = self._datastore_choice(operation, "source", DATASTORES)
        self._with_defaults(operation)
        return self._data(self.datastore.select(self._filter(operation), source))

    def _edit_config(self, operation: etree._Element, after: list) -> None:
        target, _ = self._datastore_choice(operation, "target", ("running", "candidate"))
        default_operation = self._choice(operation, "default-operation", ("merge", "replace", "none"), "merge")
        test_option = self._choice(operation, "test-option", ("test-then-set", "set", "test-only"), "test-then-set")
        self._choice(operation, "error-option", ("stop-on-error", "continue-on-error", "rollback-on-error"), "stop-on-error")
        if operation.find(_q("url")) is not None:
            raise RpcError("operation-not-supported", "the :url capability is not supported")
        config = operation.find(_q("config"))
        if config is None:
            raise _bad("missing-element", "config", "edit-config needs a <config>")
        self.datastore.edit(target, config, _session(self), default_operation, test_option)
        return None

    def _copy_config(self, operation: etree._Element, after: list) -> None:
        target, _ = self._datastore_choice(operation, "target", DATASTORES)
        source, config = self._datastore_choice(operation, "source", DATASTORES, config=True)
        self._with_defaults(operation)
        if source == target:
            raise _bad("invalid-value", "target", "source and target are the same datastore")
        content = [_detached(e) for e in _elements(config)] if config is not None else self.datastore.datastores[source]
        self.datastore.copy(content, target, _session(self))
        return None

    def _delete_config(self, operation: etree._Element, after: list) -> None:
        target, _ = self._datastore_choice(operation, "target", DATASTORES)
        self.datastore.delete(target, _session(self))
        return None

    def _lock(self, operation: etree._Element, after: list) -> None:
        target, _ = self._datastore_choice(operation, "target", DATASTORES)
        self.datastore.lock(target, _session(self))
        return None

    def _unlock(self, operation: etree._Element, after: list) -> None:
        target, _ = self._datastore_choice(operation, "target", DATASTORES)
        self.datastore.unlock(target, _session(self))
        return None

    def _commit(self, operation: etree._Element, after: list) -> None:
        confirmed = operation.find(_q("confirmed")) is not None
        timeout_element = operation.find(_q("confirm-timeout"))
        timeout = DEFAULT_CONFIRM_TIMEOUT
        if timeout_element is not None:
            text = _text(timeout_element)
            if not text.isdigit() or not 0 < int(text) <= 4294967295:
                raise _bad("invalid-value", "confirm-timeout", f"confirm-timeout must be a positive number of seconds, not {text!r}")
            timeout = int(text)
        persist = operation.find(_q("persist"))
        persist_id = operation.find(_q("persist-id"))
        if not confirmed and (timeout_element is not None or persist is not None):
            raise _bad("missing-element", "confirmed", "confirm-timeout and persist need <confirmed/>")
        self.datastore.commit(
            _session(self), confirmed, timeout,
            persist=(persist.text or "") if persist is not None else None,
            persist_id=(persist_id.text or "") if persist_id is not None else None,
        )
        return None

    def _cancel_commit(self, operation: etree._Element, after: list) -> None:
        persist_id = operation.find(_q("persist-id"))
        self.datastore.cancel_commit(_session(self), (persist_id.text or "") if persist_id is not None else None)
        return None

    def _discard_changes(self, operation: etree._Element, after: list) -> None:
        self.datastore.discard_changes(_session(self))
        return None

    def _validate(self, operation: etree._Element, after: list) -> None:
        source, config = self._datastore_choice(operation, "source", DATASTORES, config=True)
        validate(_elements(config) if config is not None else self.datastore.datastores[source])
        return None

    def _close_session(self, operation: etree._Element, after: list) -> None:
        self._closing = True
        return None

    def _kill_session(self, operation: etree._Element, after: list) -> None:
        element = operation.find(_q("session-id"))
        if element is None:
            raise _bad("missing-element", "session-id", "kill-session needs a <session-id>")
        text = _text(element)
        if not text.isdigit():
            raise _bad("invalid-value", "session-id", f"{text!r} is not a session-id")
        session_id = int(text)
        if session_id == self.session_id:
            raise _bad("invalid-value", "session-id", "a session cannot kill itself: use close-session")
        victim = self.datastore.sessions.get(session_id)
        if victim is None:
            raise _bad("invalid-value", "session-id", f"no session {session_id}")
        victim.kill(self.session_id)
        return None

    def _get_schema(self, operation: etree._Element, after: list) -> etree._Element:
        ns = MONITORING_NS
        identifier = operation.find(_q("identifier", ns))
        if identifier is None or not _text(identifier):
            raise _bad("missing-element", "identifier", "get-schema needs an <identifier>")
        version = operation.find(_q("version", ns))
        fmt = operation.find(_q("format", ns))
        if fmt is not None and _text(fmt).split(":")[-1] != "yang":
            raise _bad("invalid-value", "format", f"schema format {_text(fmt)!r} is not available: only yang", type="application")
        module = self.datastore.find_module(_text(identifier), _text(version) if version is not None else None)
        data = etree.Element(_q("data", ns), nsmap={None: ns})
        data.text = module.text
        return data


def _session(handler: SessionOperations) -> NetconfServerProtocol:
    """The session a handler runs in: the mixin is only ever part of one."""
    return cast("NetconfServerProtocol", handler)
