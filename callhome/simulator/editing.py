"""
The edit-config engine (RFC 6241 §7.2): ``nc:operation`` merge / replace /
create / delete / remove on a copy of a datastore, the device's validation,
and the edits between two contents for RFC 6470 ``netconf-config-change``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from lxml import etree

from callhome.simulator.errors import RpcError
from callhome.simulator.xmltree import (
    _NC_OPERATION,
    _chain,
    _copy,
    _data_nsmap,
    _detached,
    _elements,
    _instance_identifier,
    _key,
    _local,
    _q,
    _serialise,
    _tag,
    _text,
)

EDIT_OPERATIONS = ("merge", "replace", "create", "delete", "remove")


def _find(parent: etree._Element, config: etree._Element) -> etree._Element | None:
    """The data node a configuration node addresses: same name, same key."""
    same = [c for c in parent.iterchildren(_tag(config))]
    if not same:
        return None
    key = _key(config)
    if key is not None:
        for candidate in same:
            existing = candidate.find(_tag(key))
            if existing is not None and _text(existing) == _text(key):
                return candidate
        return None
    if not _elements(config) and len(same) > 1:
        # A leaf-list: the entry with that value.
        for candidate in same:
            if _text(candidate) == _text(config):
                return candidate
        return None
    return same[0]


def _shell(config: etree._Element) -> etree._Element:
    """A new, empty data node for a configuration node (with its key)."""
    attrib = {k: v for k, v in config.attrib.items() if k != _NC_OPERATION}
    shell = etree.Element(config.tag, attrib, nsmap=_data_nsmap(config))
    key = _key(config)
    if key is not None:
        shell.append(_detached(key))
    return shell


class _Editor:
    """Applies one ``<config>`` to a copy of a datastore (RFC 6241 §7.2)."""

    def __init__(self, config: etree._Element) -> None:
        self.config = config
        #: (configuration node, operation) for each change, for RFC 6470.
        self.edits: list[tuple[etree._Element, str]] = []

    def describe(self, node: etree._Element) -> tuple[str, dict[str, str]]:
        return _instance_identifier(_chain(node, self.config))

    def edit(self, parent: etree._Element, node: etree._Element, inherited: str, record: bool = True) -> None:
        operation = node.get(_NC_OPERATION)
        if operation is not None and operation not in EDIT_OPERATIONS:
            raise RpcError(
                "bad-attribute", f"unknown operation {operation!r}",
                info=[("bad-attribute", "operation"), ("bad-element", _local(node))],
            )
        operation = operation or inherited
        existing = _find(parent, node)
        if operation == "create":
            if existing is not None:
                path = self.describe(node)
                raise RpcError("data-exists", f"{path[0]} already exists", type="application", path=path)
            parent.append(_detached(node))
        elif operation in ("delete", "remove"):
            if existing is None:
                if operation == "delete":
                    path = self.describe(node)
                    raise RpcError("data-missing", f"{path[0]} does not exist", type="application", path=path)
                return
            parent.remove(existing)
        elif operation == "replace":
            replacement = _detached(node)
            if existing is not None:
                existing.addprevious(replacement)
                parent.remove(existing)
            else:
                parent.append(replacement)
        else:  # merge, or none
            self._merge(parent, node, existing, operation, record)
            return
        if record:
            self.edits.append((node, operation))

    def _merge(self, parent: etree._Element, node: etree._Element, existing: etree._Element | None, operation: str, record: bool) -> None:
        children = _elements(node)
        if existing is None:
            if operation == "none":
                if not children:
                    return
                shell = _shell(node)
                parent.append(shell)
                for child in children:
                    self.edit(shell, child, "none", record)
                if len(shell) == (1 if _key(node) is not None else 0):
                    parent.remove(shell)
                return
            shell = _shell(node)
            parent.append(shell)
            if not children:
                shell.text = node.text
            for child in children:
                self.edit(shell, child, "merge", record=False)
            if record:
                self.edits.append((node, "merge"))
            return
        if not children:
            if operation == "merge" and not _elements(existing) and existing.text != node.text:
                existing.text = node.text
                if record:
                    self.edits.append((node, "merge"))
            return
        for child in children:
            self.edit(existing, child, operation, record)


def edit(current: Sequence[etree._Element], config: etree._Element, default_operation: str = "merge") -> tuple[list[etree._Element], list[tuple[etree._Element, str]]]:
    """
    Apply an edit-config ``<config>`` to a datastore's content.

    @return: the new content (the old is untouched) and the edits made.
    @raises RpcError: C{data-exists}, C{data-missing}, C{bad-attribute}.
    """
    root = etree.Element("datastore")
    for element in current:
        root.append(_copy(element))
    editor = _Editor(config)
    nodes = _elements(config)
    for node in nodes:
        editor.edit(root, node, default_operation)
    if default_operation == "replace":
        # <config> replaces the whole datastore: what it does not name goes.
        for element in _elements(root):
            if not any(_find(root, node) is element for node in nodes):
                root.remove(element)
    return list(root), editor.edits


def validate(elements: Iterable[etree._Element]) -> None:
    """
    The device's validation: any element named ``invalid`` is invalid.

    @raises RpcError: C{invalid-value} with the error-path of the offender.
    """
    for element in elements:
        for node in element.iter(tag=etree.Element):
            if _local(node) == "invalid":
                chain = [element] if node is element else _chain(node, element.getparent())
                path = _instance_identifier(chain)
                raise RpcError("invalid-value", f"{path[0]}: this element is not valid", type="application", path=path)


def _config_of(node: etree._Element) -> etree._Element | None:
    """The ``<config>`` element an edit node came from."""
    for ancestor in node.iterancestors():
        if ancestor.tag == _q("config"):
            return ancestor
    return None


def _top_level_changes(old: Sequence[etree._Element], new: Sequence[etree._Element]) -> list[tuple[etree._Element, str]]:
    """Top-level create / delete / replace edits between two contents."""

    def identity(element: etree._Element) -> tuple[str, str]:
        return _tag(element), _text(_key(element))

    before = {identity(e): e for e in old}
    after = {identity(e): e for e in new}
    changes: list[tuple[etree._Element, str]] = []
    for ident, element in after.items():
        if ident not in before:
            changes.append((element, "create"))
        elif _serialise([before[ident]]) != _serialise([element]):
            changes.append((element, "replace"))
    for ident, element in before.items():
        if ident not in after:
            changes.append((element, "delete"))
    return changes
