"""
XML helpers shared by the simulator's modules: qualified names, element
children and text, copies for datastores and replies, list keys and
instance-identifiers (for ``error-path`` and RFC 6470 edit targets).
"""

from __future__ import annotations

import copy
from typing import Iterable, Sequence, cast

from lxml import etree

from callhome.simulator.constants import MONITORING_NS, NETCONF_NS

_NC_OPERATION = "{%s}operation" % NETCONF_NS

#: Prefixes used in instance-identifiers we write (error-path, RFC 6470 edit targets).
_KNOWN_PREFIXES = {
    "urn:ietf:params:xml:ns:yang:ietf-interfaces": "if",
    "urn:ietf:params:xml:ns:yang:ietf-system": "sys",
    MONITORING_NS: "ncm",
}


def _q(tag: str, namespace: str = NETCONF_NS) -> str:
    return "{%s}%s" % (namespace, tag)


def _tag(element: etree._Element) -> str:
    """An element's tag: a string as the parser made it (nothing here sets one to bytes or a QName)."""
    return cast(str, element.tag)


def _elements(parent: etree._Element) -> list[etree._Element]:
    """Element children only: no comments or processing instructions."""
    return [c for c in parent if isinstance(c.tag, str)]


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def _namespace(element: etree._Element) -> str | None:
    return etree.QName(element).namespace


def _copy(element: etree._Element) -> etree._Element:
    """A copy, so the datastore's own elements are never moved into a reply."""
    result = copy.deepcopy(element)
    result.tail = None
    return result


def _copy_all(elements: Iterable[etree._Element]) -> list[etree._Element]:
    return [_copy(e) for e in elements]


def _text(element: etree._Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""


def _serialise(elements: Iterable[etree._Element]) -> bytes:
    """A comparable form of a datastore's content."""
    return b"".join(etree.tostring(e, method="c14n", exclusive=True) for e in elements)


def _data_nsmap(element: etree._Element) -> dict[str | None, str]:
    """The namespaces in scope of a configuration element, without the base one."""
    return {p: u for p, u in element.nsmap.items() if u != NETCONF_NS}


def _detached(element: etree._Element) -> etree._Element:
    """
    A copy of configuration from an rpc for a datastore: no ``nc:operation``
    attributes, no indentation, and every namespace in scope declared (a
    value such as ``ianaift:ethernetCsmacd`` may use a prefix declared on
    ``<config>``).
    """
    attrib = {k: v for k, v in element.attrib.items() if k != _NC_OPERATION}
    result = etree.Element(element.tag, attrib, nsmap=_data_nsmap(element))
    children = _elements(element)
    if children:
        for child in children:
            result.append(_strip(copy.deepcopy(child)))
    else:
        result.text = element.text
    return result


def _strip(element: etree._Element) -> etree._Element:
    """Remove operation attributes and indentation from a copied subtree."""
    element.tail = None
    for node in element.iter(tag=etree.Element):
        node.attrib.pop(_NC_OPERATION, None)
        if _elements(node):
            if node.text is not None and not node.text.strip():
                node.text = None
            for child in node:
                if child.tail is not None and not child.tail.strip():
                    child.tail = None
    return element


def _key(element: etree._Element) -> etree._Element | None:
    """The list key of an entry: its ``name`` leaf, in its own namespace."""
    namespace = _namespace(element)
    key = element.find(_q("name", namespace) if namespace else "name")
    if key is not None and not _elements(key) and key.text and key.text.strip():
        return key
    return None


def _instance_identifier(chain: Sequence[etree._Element]) -> tuple[str, dict[str, str]]:
    """An instance-identifier for a node, from its top-level ancestor down."""
    prefixes: dict[str, str] = {}

    def prefix(namespace: str) -> str:
        for known, name in prefixes.items():
            if name == namespace:
                return known
        wanted = _KNOWN_PREFIXES.get(namespace) or f"ns{len(prefixes)}"
        while wanted in prefixes:
            wanted = f"ns{len(prefixes)}x"
        prefixes[wanted] = namespace
        return wanted

    steps = []
    for node in chain:
        namespace = _namespace(node)
        p = prefix(namespace) + ":" if namespace else ""
        step = p + _local(node)
        key = _key(node)
        if key is not None and key is not node:
            value = (key.text or "").strip()
            quote = "'" if "'" not in value else '"'
            step += f"[{p}name={quote}{value}{quote}]"
        steps.append(step)
    return "/" + "/".join(steps), prefixes


def _chain(element: etree._Element, stop: etree._Element | None) -> list[etree._Element]:
    """An element and its ancestors below C{stop}, outermost first."""
    chain = [element]
    for ancestor in element.iterancestors():
        if ancestor is stop:
            break
        chain.append(ancestor)
    return chain[::-1]
