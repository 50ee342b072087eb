"""
Builders of everything we send: hello, the ``<rpc>`` envelope and the
NETCONF operations the session and the built-in actions send.

Each returns an lxml element ready for :meth:`NetconfSession.rpc`.  XML
given by the operator (configs, filters, RPCs) is parsed here with the
hardened parser, so a mistake is caught when the config loads.
"""

from __future__ import annotations

from typing import Mapping

from lxml import etree

from callhome.netconf.xml import NETCONF_NS, NOTIFICATION_NS, parse_xml, qname

MONITORING_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
WITH_DEFAULTS_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults"

CAPABILITY = {
    "candidate": "urn:ietf:params:netconf:capability:candidate:1.0",
    "confirmed-commit": "urn:ietf:params:netconf:capability:confirmed-commit:1.",
    "validate": "urn:ietf:params:netconf:capability:validate:1.",
    "startup": "urn:ietf:params:netconf:capability:startup:1.0",
    "writable-running": "urn:ietf:params:netconf:capability:writable-running:1.0",
    "xpath": "urn:ietf:params:netconf:capability:xpath:1.0",
    "with-defaults": "urn:ietf:params:netconf:capability:with-defaults:1.0",
    "notification": "urn:ietf:params:netconf:capability:notification:1.0",
    "monitoring": "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring",
}


def fragment(text: str) -> list[etree._Element]:
    """
    Parse operator-given XML that may have several top-level elements.

    @raises etree.XMLSyntaxError: if it is not well-formed.
    """
    wrapper = parse_xml(("<wrapper>" + text + "</wrapper>").encode("utf-8"))
    return list(wrapper)


def element(text: str) -> etree._Element:
    """Parse operator-given XML that must be exactly one element."""
    elements = fragment(text)
    if len(elements) != 1:
        raise ValueError(f"expected one XML element, got {len(elements)}")
    return elements[0]


def _op(name: str) -> etree._Element:
    return etree.Element(qname(name), nsmap={None: NETCONF_NS})


def _datastore(parent: etree._Element, role: str, name: str) -> None:
    etree.SubElement(etree.SubElement(parent, qname(role)), qname(name))


def filter_element(subtree: str | None, xpath: str | None, namespaces: Mapping[str, str] | None) -> etree._Element | None:
    """A ``<filter>``: subtree (XML text) or XPath (with prefixes), or None."""
    if subtree is not None and xpath is not None:
        raise ValueError("give a subtree filter or an XPath filter, not both")
    if subtree is not None:
        result = etree.Element(qname("filter"), type="subtree")
        for child in fragment(subtree):
            result.append(child)
        return result
    if xpath is not None:
        result = etree.Element(qname("filter"), type="xpath", nsmap=dict(namespaces or {}))
        result.set("select", xpath)
        return result
    return None


def with_defaults(parent: etree._Element, mode: str | None) -> None:
    """Add RFC 6243 ``<with-defaults>`` if a mode is given."""
    if mode is not None:
        etree.SubElement(parent, f"{{{WITH_DEFAULTS_NS}}}with-defaults", nsmap={None: WITH_DEFAULTS_NS}).text = mode


def edit_config(target: str, config: list[etree._Element], default_operation: str | None = None, test_option: str | None = None, error_option: str | None = None) -> etree._Element:
    """``<edit-config>`` with an inline ``<config>``."""
    op = _op("edit-config")
    _datastore(op, "target", target)
    for tag, value in (("default-operation", default_operation), ("test-option", test_option), ("error-option", error_option)):
        if value is not None:
            etree.SubElement(op, qname(tag)).text = value
    holder = etree.SubElement(op, qname("config"))
    for child in config:
        holder.append(_copy(child))
    return op


def simple(name: str, **datastores: str) -> etree._Element:
    """An operation whose only parameters are datastores: lock, unlock, ..."""
    op = _op(name)
    for role, datastore in datastores.items():
        _datastore(op, role, datastore)
    return op


def commit(confirmed: bool = False, confirm_timeout: int | None = None, persist: str | None = None, persist_id: str | None = None) -> etree._Element:
    """``<commit>``, optionally confirmed (RFC 6241 §8.4)."""
    op = _op("commit")
    if confirmed:
        etree.SubElement(op, qname("confirmed"))
        if confirm_timeout is not None:
            etree.SubElement(op, qname("confirm-timeout")).text = str(confirm_timeout)
        if persist is not None:
            etree.SubElement(op, qname("persist")).text = persist
    if persist_id is not None:
        etree.SubElement(op, qname("persist-id")).text = persist_id
    return op


def _source(op: etree._Element, source: str, config: list[etree._Element] | None) -> None:
    """A ``<source>``: an inline ``<config>`` if given, else the datastore."""
    holder = etree.SubElement(op, qname("source"))
    if config is None:
        etree.SubElement(holder, qname(source))
        return
    inline = etree.SubElement(holder, qname("config"))
    for child in config:
        inline.append(_copy(child))


def validate(source: str | None = None, config: list[etree._Element] | None = None) -> etree._Element:
    """``<validate>`` of a datastore or of an inline config."""
    op = _op("validate")
    _source(op, source or "candidate", config)
    return op


def copy_config(target: str, source: str | None = None, config: list[etree._Element] | None = None) -> etree._Element:
    """``<copy-config>`` from a datastore or an inline config."""
    op = _op("copy-config")
    _datastore(op, "target", target)
    _source(op, source or "running", config)
    return op


def get_schema(identifier: str, version: str | None = None, format: str = "yang") -> etree._Element:
    """ietf-netconf-monitoring ``<get-schema>`` (RFC 6022)."""
    op = etree.Element(f"{{{MONITORING_NS}}}get-schema", nsmap={None: MONITORING_NS})
    etree.SubElement(op, f"{{{MONITORING_NS}}}identifier").text = identifier
    if version:
        etree.SubElement(op, f"{{{MONITORING_NS}}}version").text = version
    etree.SubElement(op, f"{{{MONITORING_NS}}}format").text = format
    return op


def schemas_filter() -> etree._Element:
    """A ``<get>`` for ``/netconf-state/schemas``."""
    op = _op("get")
    flt = etree.SubElement(op, qname("filter"), type="subtree")
    state = etree.SubElement(flt, f"{{{MONITORING_NS}}}netconf-state", nsmap={None: MONITORING_NS})
    etree.SubElement(state, f"{{{MONITORING_NS}}}schemas")
    return op


def create_subscription(stream: str | None = None, flt: etree._Element | None = None, start_time: str | None = None, stop_time: str | None = None) -> etree._Element:
    """RFC 5277 ``<create-subscription>``."""
    n = "{%s}" % NOTIFICATION_NS
    op = etree.Element(n + "create-subscription", nsmap={None: NOTIFICATION_NS})
    if stream is not None:
        etree.SubElement(op, n + "stream").text = stream
    if flt is not None:
        # RFC 5277's filter element lives in the notification namespace.
        moved = etree.SubElement(op, n + "filter", dict(flt.attrib), nsmap=flt.nsmap)
        for child in flt:
            moved.append(_copy(child))
    if start_time is not None:
        etree.SubElement(op, n + "startTime").text = start_time
    if stop_time is not None:
        etree.SubElement(op, n + "stopTime").text = stop_time
    return op


def _copy(node: etree._Element) -> etree._Element:
    """A deep copy, so a built operation never moves the config's elements."""
    import copy

    return copy.deepcopy(node)


# --- messages and the operations the session itself sends -----------------------


def hello(capabilities: list[str], session_id: int | None = None) -> bytes:
    """Build a hello; only a server's carries a session-id."""
    root = etree.Element(qname("hello"), nsmap={None: NETCONF_NS})
    caps = etree.SubElement(root, qname("capabilities"))
    for uri in capabilities:
        etree.SubElement(caps, qname("capability")).text = uri
    if session_id is not None:
        etree.SubElement(root, qname("session-id")).text = str(session_id)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def rpc(message_id: str, operation: etree._Element | bytes | str) -> bytes:
    """Wrap an operation element (or its XML text) in an ``<rpc>``."""
    if isinstance(operation, etree._Element):
        body = etree.tostring(operation)
    elif isinstance(operation, str):
        body = operation.encode("utf-8")
    else:
        body = operation
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<rpc xmlns="' + NETCONF_NS.encode() + b'" message-id="'
        + message_id.encode("ascii") + b'">' + body + b"</rpc>"
    )


def get(subtree: str | None = None, xpath: str | None = None, namespaces: Mapping[str, str] | None = None) -> etree._Element:
    """Build a ``<get>`` operation, optionally filtered."""
    op = etree.Element(qname("get"), nsmap={None: NETCONF_NS})
    flt = filter_element(subtree, xpath, namespaces)
    if flt is not None:
        op.append(flt)
    return op


def get_config(source: str = "running", subtree: str | None = None, xpath: str | None = None, namespaces: Mapping[str, str] | None = None) -> etree._Element:
    """Build a ``<get-config>`` operation on a datastore, optionally filtered."""
    op = etree.Element(qname("get-config"), nsmap={None: NETCONF_NS})
    etree.SubElement(etree.SubElement(op, qname("source")), qname(source))
    flt = filter_element(subtree, xpath, namespaces)
    if flt is not None:
        op.append(flt)
    return op


def close_session() -> etree._Element:
    """Build a ``<close-session>`` operation."""
    return etree.Element(qname("close-session"), nsmap={None: NETCONF_NS})
