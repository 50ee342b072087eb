"""Subtree (RFC 6241 §6) and XPath (RFC 6241 §8.9) filtering of data and events."""

from __future__ import annotations

from typing import Iterable, Sequence

from lxml import etree

from callhome.simulator.errors import RpcError, _bad
from callhome.simulator.xmltree import _copy, _copy_all, _elements, _key, _local, _namespace, _q, _text


def _tag_matches(filter_node: etree._Element, data: etree._Element) -> bool:
    """A filter node without a namespace matches its name in any namespace."""
    if filter_node.tag == data.tag:
        return True
    return _namespace(filter_node) is None and _local(filter_node) == _local(data)


def _subtree_node(data: etree._Element, node: etree._Element) -> etree._Element | None:
    """Apply one subtree filter node to a matching data node (RFC 6241 §6)."""
    children = _elements(node)
    if not children:
        text = _text(node)
        if text and _text(data) != text:
            return None
        return _copy(data)
    content = [c for c in children if not _elements(c) and _text(c)]
    others = [c for c in children if not any(c is m for m in content)]
    data_children = _elements(data)
    for match in content:
        if not any(_tag_matches(match, d) and _text(d) == _text(match) for d in data_children):
            return None
    if not others:
        return _copy(data)
    result = etree.Element(data.tag, data.attrib, nsmap=data.nsmap)
    selected = False
    for child in data_children:
        if any(_tag_matches(m, child) for m in content):
            result.append(_copy(child))
            continue
        for candidate in others:
            if _tag_matches(candidate, child):
                found = _subtree_node(child, candidate)
                if found is not None:
                    result.append(found)
                    selected = True
                    break
    if not selected and not content:
        return None
    return result


def subtree_filter(elements: Iterable[etree._Element], nodes: Sequence[etree._Element]) -> list[etree._Element]:
    """The parts of the top-level C{elements} a subtree filter selects (copies)."""
    result = []
    for element in elements:
        for node in nodes:
            if _tag_matches(node, element):
                found = _subtree_node(element, node)
                if found is not None:
                    result.append(found)
                    break
    return result


def _xpath_namespaces(element: etree._Element) -> dict[str, str]:
    return {p: u for p, u in element.nsmap.items() if p}


def xpath_filter(elements: Iterable[etree._Element], select: str, namespaces: dict[str, str]) -> list[etree._Element]:
    """
    The parts of the top-level C{elements} an XPath 1.0 expression selects
    (RFC 6241 §8.9): each selected node with its ancestors (and their
    ``name`` keys) and its descendants.  Each top-level element is evaluated
    as the document element, so ``/p:top/p:child[p:name='x']`` works.

    @raises RpcError: C{invalid-value} for an expression that does not
        compile or does not select nodes.
    """
    try:
        compiled = etree.XPath(select, namespaces=namespaces)
    except (etree.XPathSyntaxError, etree.XPathError) as e:
        raise _bad("invalid-value", "filter", f"invalid XPath expression {select!r}: {e}") from None
    result = []
    for element in elements:
        root = _copy(element)
        tree = etree.ElementTree(root)
        try:
            found = compiled(tree)
        except etree.XPathError as e:
            raise _bad("invalid-value", "filter", f"invalid XPath expression {select!r}: {e}") from None
        if not isinstance(found, list):
            raise _bad("invalid-value", "filter", f"XPath expression {select!r} does not select nodes")
        selected: list[etree._Element] = []
        for node in found:
            if isinstance(node, etree._Element):
                selected.append(node)
            elif hasattr(node, "getparent") and node.getparent() is not None:
                selected.append(node.getparent())
        if not selected:
            continue
        keep: set[etree._Element] = set()
        for node in selected:
            keep.update(node.iter())
            for ancestor in node.iterancestors():
                keep.add(ancestor)
                key = _key(ancestor)
                if key is not None:
                    keep.add(key)
        _prune(root, keep)
        result.append(root)
    return result


def _prune(element: etree._Element, keep: set[etree._Element]) -> None:
    for child in list(element):
        if child not in keep:
            element.remove(child)
        else:
            _prune(child, keep)


def apply_filter(elements: Iterable[etree._Element], flt: etree._Element | None) -> list[etree._Element]:
    """
    Apply a ``<filter>`` (subtree or XPath) to top-level elements; copies.

    @raises RpcError: for an unknown filter type or a bad expression.
    """
    if flt is None:
        return _copy_all(elements)
    kind = flt.get("type") or flt.get(_q("type")) or "subtree"
    if kind == "subtree":
        # RFC 6241 §6.4.2: an empty filter selects nothing.
        return subtree_filter(elements, _elements(flt))
    if kind == "xpath":
        select = flt.get("select") or flt.get(_q("select"))
        if select is None:
            raise RpcError("missing-attribute", "an XPath filter needs a select attribute", info=[("bad-attribute", "select"), ("bad-element", "filter")])
        return xpath_filter(elements, select, _xpath_namespaces(flt))
    raise RpcError("bad-attribute", f"filter type {kind!r} is not supported", info=[("bad-attribute", "type"), ("bad-element", "filter")])


def _check_filter(flt: etree._Element | None) -> None:
    """Raise the error a filter would raise, before it is used on events."""
    apply_filter([etree.Element("probe")], flt)
