"""
A NETCONF server for the simulated device.

It speaks base:1.0 and base:1.1 (with the same framers the manager uses) and
implements what the manager's actions send, with RFC semantics:

* RFC 6241: ``get``, ``get-config`` (subtree and XPath filters),
  ``edit-config`` (running and candidate, ``nc:operation`` merge / replace /
  create / delete / remove), ``copy-config``, ``delete-config`` (startup),
  ``lock`` / ``unlock``, ``commit`` (confirmed, with rollback on timeout),
  ``cancel-commit``, ``discard-changes``, ``validate``, ``close-session``,
  ``kill-session``; every other operation gets ``operation-not-supported``.
* RFC 6022: ``get-schema`` and ``/netconf-state`` (capabilities, datastores
  and their locks, schemas, sessions, statistics).
* RFC 5277 / RFC 6470: ``create-subscription`` on the ``NETCONF`` stream with
  filters and replay; ``netconf-config-change``, ``netconf-session-start``
  and ``netconf-session-end`` notifications.

A L{Datastore} is the state of one device and is shared by all its sessions
(one L{NetconfServerProtocol} each): the running, candidate and startup
datastores, locks, a pending confirmed commit, the replay log and the list of
sessions.  Time comes from the datastore's C{clock} (the reactor unless one is
given), so tests drive confirmed-commit timeouts with C{task.Clock}.
"""

from __future__ import annotations

import collections
import copy
import ipaddress
import itertools
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from lxml import etree
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from callhome.netconf import xml
from callhome.netconf.framing import ChunkedFramer, EndOfMessageFramer, FramingError

DEFAULT_DATASTORE = Path(__file__).with_name("datastore.xml")
YANG_DIRECTORY = Path(__file__).with_name("yang")

NETCONF_NS = xml.NETCONF_NS
MONITORING_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
NOTIFICATION_NS = xml.NOTIFICATION_NS
#: RFC 5277 nc-notifications: replayComplete, notificationComplete, streams.
NETMOD_NOTIFICATION_NS = "urn:ietf:params:xml:ns:netmod:notification"
#: RFC 6470 ietf-netconf-notifications.
NETCONF_NOTIFICATIONS_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
WITH_DEFAULTS_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults"

_CAP = "urn:ietf:params:netconf:capability:"
CAPABILITY_WRITABLE_RUNNING = _CAP + "writable-running:1.0"
CAPABILITY_CANDIDATE = _CAP + "candidate:1.0"
CAPABILITY_CONFIRMED_COMMIT_1_0 = _CAP + "confirmed-commit:1.0"
CAPABILITY_CONFIRMED_COMMIT = _CAP + "confirmed-commit:1.1"
CAPABILITY_ROLLBACK_ON_ERROR = _CAP + "rollback-on-error:1.0"
CAPABILITY_VALIDATE_1_0 = _CAP + "validate:1.0"
CAPABILITY_VALIDATE = _CAP + "validate:1.1"
CAPABILITY_STARTUP = _CAP + "startup:1.0"
CAPABILITY_XPATH = _CAP + "xpath:1.0"
CAPABILITY_WITH_DEFAULTS = _CAP + "with-defaults:1.0?basic-mode=explicit&also-supported=report-all,trim"
CAPABILITY_NOTIFICATION = _CAP + "notification:1.0"
CAPABILITY_INTERLEAVE = _CAP + "interleave:1.0"
CAPABILITY_MONITORING = MONITORING_NS + "?module=ietf-netconf-monitoring"

DATASTORES = ("running", "candidate", "startup")
STREAM = "NETCONF"
REPLAY_LOG_SIZE = 100
DEFAULT_CONFIRM_TIMEOUT = 600
WITH_DEFAULTS_MODES = ("explicit", "report-all", "trim")
EDIT_OPERATIONS = ("merge", "replace", "create", "delete", "remove")

_NC_OPERATION = "{%s}operation" % NETCONF_NS
_session_ids = itertools.count(1)

#: Prefixes used in instance-identifiers we write (error-path, RFC 6470 edit targets).
_KNOWN_PREFIXES = {
    "urn:ietf:params:xml:ns:yang:ietf-interfaces": "if",
    "urn:ietf:params:xml:ns:yang:ietf-system": "sys",
    MONITORING_NS: "ncm",
}


def _q(tag: str, namespace: str = NETCONF_NS) -> str:
    return "{%s}%s" % (namespace, tag)


# --- YANG modules ------------------------------------------------------------------


@dataclass(frozen=True)
class YangModule:
    """A YANG module the device ships (and serves with ``get-schema``)."""

    name: str
    revision: str
    namespace: str
    prefix: str
    text: str

    @property
    def capability(self) -> str:
        """The module's capability URI for the hello (RFC 6020 §5.6.4)."""
        return f"{self.namespace}?module={self.name}&revision={self.revision}"


def load_module(path: str | Path) -> YangModule:
    """Read a ``.yang`` file's name, namespace, prefix and newest revision."""
    text = Path(path).read_text(encoding="utf-8")
    name = re.search(r"^\s*module\s+([\w.-]+)\s*\{", text, re.M)
    namespace = re.search(r"\bnamespace\s+\"([^\"]+)\"\s*;", text)
    if name is None or namespace is None:
        raise ValueError(f"{path}: not a YANG module (no module name or namespace)")
    prefix = re.compile(r"\bprefix\s+\"?([\w.-]+)\"?\s*;").search(text, namespace.end())
    revisions = re.findall(r"\brevision\s+\"?(\d{4}-\d{2}-\d{2})\"?\s*[;{]", text)
    if prefix is None or not revisions:
        raise ValueError(f"{path}: YANG module without a prefix or a revision")
    _KNOWN_PREFIXES.setdefault(namespace.group(1), prefix.group(1))
    return YangModule(name.group(1), max(revisions), namespace.group(1), prefix.group(1), text)


def load_modules(directory: str | Path = YANG_DIRECTORY) -> list[YangModule]:
    """Every ``*.yang`` module in a directory, by name."""
    return sorted((load_module(p) for p in Path(directory).glob("*.yang")), key=lambda m: m.name)


# --- errors ------------------------------------------------------------------------


class RpcError(Exception):
    """
    An ``<rpc-error>`` to answer with (RFC 6241 §4.3, Appendix A).

    @param info: C{(name, text)} pairs for ``<error-info>``, in the base
        namespace (``session-id``, ``bad-element``, ``bad-attribute``...).
    """

    def __init__(
        self, tag: str, message: str, *, type: str = "protocol", info: Sequence[tuple[str, str]] = (),
        app_tag: str | None = None, path: tuple[str, dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message
        self.type = type
        self.info = list(info)
        self.app_tag = app_tag
        self.path = path

    def element(self) -> etree._Element:
        """The ``<rpc-error>`` element."""
        error = etree.Element(_q("rpc-error"), nsmap={None: NETCONF_NS})
        etree.SubElement(error, _q("error-type")).text = self.type
        etree.SubElement(error, _q("error-tag")).text = self.tag
        etree.SubElement(error, _q("error-severity")).text = "error"
        if self.app_tag:
            etree.SubElement(error, _q("error-app-tag")).text = self.app_tag
        if self.path:
            text, prefixes = self.path
            etree.SubElement(error, _q("error-path"), nsmap=prefixes).text = text
        message = etree.SubElement(error, _q("error-message"))
        message.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        message.text = self.message
        if self.info:
            info = etree.SubElement(error, _q("error-info"))
            for name, text in self.info:
                etree.SubElement(info, _q(name)).text = text
        return error


def _bad(tag: str, element: str, message: str, type: str = "protocol") -> RpcError:
    """An error naming the offending element."""
    return RpcError(tag, message, type=type, info=[("bad-element", element)])


# --- XML helpers ------------------------------------------------------------------------


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
            value = key.text.strip()  # type: ignore[union-attr]
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


def format_time(seconds: float) -> str:
    """RFC 3339 date-and-time in UTC, as NETCONF writes it."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += (".%06d" % moment.microsecond).rstrip("0")
    return text + "Z"


def parse_time(text: str) -> float:
    """Read an RFC 3339 date-and-time (UTC if it names no offset)."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


# --- filters ------------------------------------------------------------------------------


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


# --- edit-config ---------------------------------------------------------------------------


def _find(parent: etree._Element, config: etree._Element) -> etree._Element | None:
    """The data node a configuration node addresses: same name, same key."""
    same = [c for c in parent.iterchildren(config.tag)]
    if not same:
        return None
    key = _key(config)
    if key is not None:
        for candidate in same:
            existing = candidate.find(key.tag)
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


# --- the device ----------------------------------------------------------------------------


@dataclass
class Lock:
    """A global lock on a datastore."""

    session_id: int
    since: float


@dataclass
class PendingCommit:
    """A confirmed commit waiting for its confirming commit."""

    rollback: list[etree._Element]
    session_id: int
    persist: str | None
    timer: IDelayedCall


@dataclass
class Subscription:
    """A session's RFC 5277 subscription."""

    filter: etree._Element | None
    start: float | None
    stop: float | None
    timer: IDelayedCall | None = None


class Datastore:
    """
    One simulated device: its datastores and everything its sessions share.

    @param elements: the top-level elements of running; candidate and
        startup start as copies.
    @param clock: time for event times, lock times and confirmed-commit
        timeouts; the reactor by default.
    @param modules: the YANG modules served; by default those shipped in
        C{callhome/simulator/yang}.
    @ivar datastores: C{running}, C{candidate} and C{startup}, each a list of
        top-level elements.
    @ivar locks: datastore name to L{Lock}.
    @ivar sessions: session-id to protocol, for every session of the device.
    @ivar replay_log: the last C{replay_log_size} notifications, as
        C{(time, element)}.
    """

    def __init__(
        self, elements: Sequence[etree._Element], clock: IReactorTime | None = None,
        modules: Sequence[YangModule] | None = None, replay_log_size: int = REPLAY_LOG_SIZE,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor  # type: ignore[assignment]
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        self.modules = load_modules() if modules is None else list(modules)
        self.datastores: dict[str, list[etree._Element]] = {
            "running": list(elements), "candidate": _copy_all(elements), "startup": _copy_all(elements),
        }
        self.locks: dict[str, Lock] = {}
        self.sessions: dict[int, NetconfServerProtocol] = {}
        self.pending_commit: PendingCommit | None = None
        self.replay_log: collections.deque[tuple[float, etree._Element]] = collections.deque(maxlen=replay_log_size)
        self.started = self.clock.seconds()
        self.statistics = dict.fromkeys(
            ("in-bad-hellos", "in-sessions", "dropped-sessions", "in-rpcs", "in-bad-rpcs", "out-rpc-errors", "out-notifications"), 0
        )

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_DATASTORE, clock: IReactorTime | None = None, modules: Sequence[YangModule] | None = None) -> "Datastore":
        """Load a datastore file: any root element, its children are running's data."""
        root = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)).getroot()
        return cls(_elements(root), clock=clock, modules=modules)

    # --- content ---------------------------------------------------------------------

    @property
    def elements(self) -> list[etree._Element]:
        """The running datastore's top-level elements."""
        return self.datastores["running"]

    @elements.setter
    def elements(self, value: list[etree._Element]) -> None:
        self.datastores["running"] = value

    @property
    def running(self) -> list[etree._Element]:
        return self.datastores["running"]

    @property
    def candidate(self) -> list[etree._Element]:
        return self.datastores["candidate"]

    @property
    def startup(self) -> list[etree._Element]:
        return self.datastores["startup"]

    @property
    def candidate_modified(self) -> bool:
        """Whether the candidate holds changes not committed (RFC 6241 §8.3.5.1)."""
        return _serialise(self.candidate) != _serialise(self.running)

    def select(self, subtree: etree._Element | None, source: str = "running") -> list[etree._Element]:
        """Copies of what a ``<filter>`` selects from a datastore (all without one)."""
        return apply_filter(self.datastores[source], subtree)

    def store(self, name: str, elements: list[etree._Element], session: "NetconfServerProtocol | None" = None, edits: Sequence[tuple[etree._Element, str]] | None = None) -> bool:
        """
        Replace a datastore's content; notify a change of running or startup.

        An unmodified candidate follows running.  C{session} None means the
        server itself made the change.

        @return: whether the content changed.
        """
        old = self.datastores[name]
        changed = _serialise(old) != _serialise(elements)
        if name == "running" and _serialise(self.candidate) == _serialise(old):
            self.datastores["candidate"] = _copy_all(elements)
        self.datastores[name] = elements
        if changed and name in ("running", "startup"):
            self.notify(self._config_change(name, old, elements, session, edits))
        return changed

    def _config_change(self, name: str, old: Sequence[etree._Element], new: Sequence[etree._Element], session: "NetconfServerProtocol | None", edits: Sequence[tuple[etree._Element, str]] | None) -> etree._Element:
        """An RFC 6470 netconf-config-change."""
        ns = NETCONF_NOTIFICATIONS_NS
        event = etree.Element(_q("netconf-config-change", ns), nsmap={None: ns})
        by = etree.SubElement(event, _q("changed-by", ns))
        if session is None:
            etree.SubElement(by, _q("server", ns))
        else:
            session.describe(by, ns)
        etree.SubElement(event, _q("datastore", ns)).text = name
        if edits is None:
            edits = _top_level_changes(old, new)
            described = [(_instance_identifier([node]), operation) for node, operation in edits]
        else:
            described = [(_instance_identifier(_chain(node, _config_of(node))), operation) for node, operation in edits]
        for (path, prefixes), operation in described:
            entry = etree.SubElement(event, _q("edit", ns))
            etree.SubElement(entry, _q("target", ns), nsmap=prefixes).text = path
            etree.SubElement(entry, _q("operation", ns)).text = operation
        return event

    # --- locks ---------------------------------------------------------------------------

    def check_writable(self, name: str, session: "NetconfServerProtocol") -> None:
        """@raises RpcError: C{in-use} if another session locked C{name}."""
        lock = self.locks.get(name)
        if lock is not None and lock.session_id != session.session_id:
            raise RpcError("in-use", f"the {name} datastore is locked by session {lock.session_id}", info=[("session-id", str(lock.session_id))])

    def lock(self, name: str, session: "NetconfServerProtocol") -> None:
        """Lock a datastore for a session (RFC 6241 §7.5)."""
        lock = self.locks.get(name)
        if lock is not None:
            raise RpcError("lock-denied", f"the {name} datastore is already locked by session {lock.session_id}", info=[("session-id", str(lock.session_id))])
        if name == "candidate" and self.candidate_modified:
            raise RpcError("lock-denied", "the candidate holds changes that are not committed", info=[("session-id", "0")])
        self.locks[name] = Lock(session.session_id, self.clock.seconds())

    def unlock(self, name: str, session: "NetconfServerProtocol") -> None:
        """Release a session's lock; a candidate's uncommitted changes go with it."""
        lock = self.locks.get(name)
        if lock is None or lock.session_id != session.session_id:
            held = f"by session {lock.session_id}" if lock else "by no session"
            raise RpcError("operation-failed", f"the {name} datastore is not locked by this session (it is locked {held})", type="protocol")
        del self.locks[name]
        if name == "candidate":
            self.datastores["candidate"] = _copy_all(self.running)

    # --- operations ------------------------------------------------------------------------

    def edit(self, target: str, config: etree._Element, session: "NetconfServerProtocol", default_operation: str = "merge", test_option: str = "test-then-set") -> None:
        """edit-config on running or candidate."""
        self.check_writable(target, session)
        new, edits = edit(self.datastores[target], config, default_operation)
        if test_option != "set":
            validate(new)
        if test_option == "test-only":
            return
        self.store(target, new, session, edits)

    def copy(self, source: Sequence[etree._Element], target: str, session: "NetconfServerProtocol") -> None:
        """copy-config to a datastore."""
        self.check_writable(target, session)
        new = _copy_all(source)
        if target != "candidate":
            validate(new)
        self.store(target, new, session)

    def delete(self, target: str, session: "NetconfServerProtocol") -> None:
        """delete-config: only startup can be deleted."""
        if target != "startup":
            raise RpcError("operation-not-supported", f"the {target} datastore cannot be deleted")
        self.check_writable(target, session)
        self.store(target, [], session)

    def commit(self, session: "NetconfServerProtocol", confirmed: bool = False, timeout: float = DEFAULT_CONFIRM_TIMEOUT, persist: str | None = None, persist_id: str | None = None) -> None:
        """Commit the candidate to running (RFC 6241 §8.3.4.1, §8.4.5.1)."""
        self.check_writable("running", session)
        self.check_writable("candidate", session)
        pending = self.pending_commit
        if persist_id is not None:
            if pending is None or pending.persist != persist_id:
                raise _bad("invalid-value", "persist-id", f"no confirmed commit is pending with persist-id {persist_id!r}")
        elif pending is not None:
            if pending.persist is not None:
                raise _bad("invalid-value", "persist-id", "a persistent confirmed commit is pending: give its persist-id")
            if pending.session_id != session.session_id:
                raise RpcError("in-use", f"a confirmed commit of session {pending.session_id} is pending", info=[("session-id", str(pending.session_id))])
        validate(self.candidate)
        if confirmed:
            if pending is None:
                timer = self.clock.callLater(timeout, self._confirm_timed_out)
                self.pending_commit = PendingCommit(_copy_all(self.running), session.session_id, persist, timer)
            else:
                pending.timer.reset(timeout)
                pending.persist = persist
                pending.session_id = session.session_id
        elif pending is not None:
            pending.timer.cancel()
            self.pending_commit = None
        self.store("running", _copy_all(self.candidate), session)
        self.datastores["candidate"] = _copy_all(self.running)

    def cancel_commit(self, session: "NetconfServerProtocol", persist_id: str | None = None) -> None:
        """Cancel a pending confirmed commit: running goes back (RFC 6241 §8.4.4.1)."""
        pending = self.pending_commit
        if pending is None:
            raise RpcError("operation-failed", "no confirmed commit is pending", type="protocol")
        if persist_id is not None:
            if pending.persist != persist_id:
                raise _bad("invalid-value", "persist-id", f"no confirmed commit is pending with persist-id {persist_id!r}")
        elif pending.persist is not None:
            raise _bad("invalid-value", "persist-id", "a persistent confirmed commit is pending: give its persist-id")
        elif pending.session_id != session.session_id:
            raise RpcError("operation-failed", f"the pending confirmed commit belongs to session {pending.session_id}")
        self.roll_back(session)

    def discard_changes(self, session: "NetconfServerProtocol") -> None:
        """candidate := running."""
        self.check_writable("candidate", session)
        self.datastores["candidate"] = _copy_all(self.running)

    def roll_back(self, session: "NetconfServerProtocol | None" = None) -> None:
        """Undo a pending confirmed commit now (C{session} None: the server does)."""
        pending = self.pending_commit
        if pending is None:
            return
        self.pending_commit = None
        if pending.timer.active():
            pending.timer.cancel()
        self.store("running", pending.rollback, session)
        self.datastores["candidate"] = _copy_all(self.running)

    def _confirm_timed_out(self) -> None:
        self.roll_back(None)

    # --- schemas ---------------------------------------------------------------------------

    def find_module(self, identifier: str, version: str | None = None) -> YangModule:
        """@raises RpcError: C{invalid-value} for a module the device lacks."""
        for module in self.modules:
            if module.name == identifier and version in (None, "", module.revision):
                return module
        wanted = identifier + (f"@{version}" if version else "")
        raise _bad("invalid-value", "identifier", f"no schema {wanted} on this device", type="application")

    # --- sessions and notifications --------------------------------------------------------------

    def session_started(self, session: "NetconfServerProtocol") -> None:
        """A session began: register it and tell the others."""
        self.sessions[session.session_id] = session
        self.statistics["in-sessions"] += 1
        ns = NETCONF_NOTIFICATIONS_NS
        event = etree.Element(_q("netconf-session-start", ns), nsmap={None: ns})
        session.describe(event, ns)
        self.notify(event)

    def session_ended(self, session: "NetconfServerProtocol", reason: str, killed_by: int | None = None) -> None:
        """
        A session ended: release its locks (discarding a locked candidate's
        changes), roll back its unconfirmed commit, tell the others.
        """
        if self.sessions.pop(session.session_id, None) is None:
            return
        if reason == "dropped":
            self.statistics["dropped-sessions"] += 1
        for name, lock in list(self.locks.items()):
            if lock.session_id == session.session_id:
                self.unlock(name, session)
        pending = self.pending_commit
        if pending is not None and pending.persist is None and pending.session_id == session.session_id:
            self.roll_back(None)
        ns = NETCONF_NOTIFICATIONS_NS
        event = etree.Element(_q("netconf-session-end", ns), nsmap={None: ns})
        session.describe(event, ns)
        if killed_by is not None:
            etree.SubElement(event, _q("killed-by", ns)).text = str(killed_by)
        etree.SubElement(event, _q("termination-reason", ns)).text = reason
        self.notify(event)

    def notify(self, event: etree._Element, event_time: float | None = None) -> None:
        """
        Raise a notification: log it for replay and send it to every
        subscribed session (tests push arbitrary events with this).

        @param event: the event's content element (copied).
        @param event_time: seconds since the epoch; now by default.
        """
        when = self.clock.seconds() if event_time is None else event_time
        event = _copy(event)
        self.replay_log.append((when, event))
        for session in list(self.sessions.values()):
            session.deliver(when, event)

    def netconf_state(self, session: "NetconfServerProtocol") -> etree._Element:
        """RFC 6022 ``/netconf-state`` as a session sees it."""
        ns = MONITORING_NS

        def sub(parent: etree._Element, tag: str, text: Any = None) -> etree._Element:
            element = etree.SubElement(parent, _q(tag, ns))
            if text is not None:
                element.text = str(text)
            return element

        state = etree.Element(_q("netconf-state", ns), nsmap={None: ns})
        capabilities = sub(state, "capabilities")
        for uri in session.capabilities:
            sub(capabilities, "capability", uri)
        datastores = sub(state, "datastores")
        for name in DATASTORES:
            datastore = sub(datastores, "datastore")
            sub(datastore, "name", name)
            lock = self.locks.get(name)
            if lock is not None:
                held = sub(sub(datastore, "locks"), "global-lock")
                sub(held, "locked-by-session", lock.session_id)
                sub(held, "locked-time", format_time(lock.since))
        schemas = sub(state, "schemas")
        for module in self.modules:
            schema = sub(schemas, "schema")
            sub(schema, "identifier", module.name)
            sub(schema, "version", module.revision)
            sub(schema, "format", "yang")
            sub(schema, "namespace", module.namespace)
            sub(schema, "location", "NETCONF")
        sessions = sub(state, "sessions")
        for other in self.sessions.values():
            entry = sub(sessions, "session")
            sub(entry, "session-id", other.session_id)
            sub(entry, "transport", "netconf-ssh")
            sub(entry, "username", other.username)
            if other.source_host:
                sub(entry, "source-host", other.source_host)
            sub(entry, "login-time", format_time(other.login_time))
            for counter in ("in-rpcs", "in-bad-rpcs", "out-rpc-errors", "out-notifications"):
                sub(entry, counter, other.counters[counter])
        statistics = sub(state, "statistics")
        sub(statistics, "netconf-start-time", format_time(self.started))
        for counter, value in self.statistics.items():
            sub(statistics, counter, value)
        return state

    def streams(self) -> etree._Element:
        """RFC 5277 ``/netconf/streams``."""
        ns = NETMOD_NOTIFICATION_NS
        netconf = etree.Element(_q("netconf", ns), nsmap={None: ns})
        stream = etree.SubElement(etree.SubElement(netconf, _q("streams", ns)), _q("stream", ns))
        etree.SubElement(stream, _q("name", ns)).text = STREAM
        etree.SubElement(stream, _q("description", ns)).text = "the default NETCONF event stream"
        etree.SubElement(stream, _q("replaySupport", ns)).text = "true"
        etree.SubElement(stream, _q("replayLogCreationTime", ns)).text = format_time(self.started)
        return netconf

    def state(self, session: "NetconfServerProtocol") -> list[etree._Element]:
        """The state data ``<get>`` adds to running."""
        return [self.netconf_state(session), self.streams()]


def _config_of(node: etree._Element) -> etree._Element | None:
    """The ``<config>`` element an edit node came from."""
    for ancestor in node.iterancestors():
        if ancestor.tag == _q("config"):
            return ancestor
    return None


def _top_level_changes(old: Sequence[etree._Element], new: Sequence[etree._Element]) -> list[tuple[etree._Element, str]]:
    """Top-level create / delete / replace edits between two contents."""

    def identity(element: etree._Element) -> tuple[str, str]:
        return element.tag, _text(_key(element))

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


def _peer_host(transport: Any) -> str | None:
    """The manager's IP address, where the transport tells it."""
    try:
        peer = transport.getPeer()
    except Exception:
        return None
    for candidate in (peer, getattr(peer, "address", None)):
        host = getattr(candidate, "host", None)
        if isinstance(host, str):
            try:
                return str(ipaddress.ip_address(host))
            except ValueError:
                continue
    return None


def _avatar_username(transport: Any) -> str | None:
    """The SSH user, if the conch avatar behind the channel records one."""
    avatar = getattr(getattr(transport, "session", None), "avatar", None)
    name = getattr(avatar, "username", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return name if isinstance(name, str) and name else None


# --- the session ---------------------------------------------------------------------------

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


class NetconfServerProtocol(Protocol):
    """
    One NETCONF server session of a device (a L{Datastore}).

    @cvar username: the user named in notifications and ``/netconf-state``.
    @ivar counters: this session's RFC 6022 counters.
    """

    log = Logger(namespace="callhome.simulator")
    username = "admin"

    def __init__(self, datastore: Datastore, offer_base_1_1: bool = True) -> None:
        self.datastore = datastore
        self.offer_base_1_1 = offer_base_1_1
        self.session_id = next(_session_ids)
        self._framer: EndOfMessageFramer | ChunkedFramer = EndOfMessageFramer()
        self._hello_done = False
        self._closing = False
        self._ended = False
        self._end_reason = "dropped"
        # Notifications raised while this session's own rpc is answered wait
        # for its reply.
        self._held: list[tuple[float, list[etree._Element]]] | None = None
        self.rpcs_answered = 0
        self.subscription: Subscription | None = None
        self.login_time = datastore.clock.seconds()
        self.source_host: str | None = None
        self.counters = dict.fromkeys(("in-rpcs", "in-bad-rpcs", "out-rpc-errors", "out-notifications"), 0)

    @property
    def capabilities(self) -> list[str]:
        """What the hello offers (1.0 variants on a base:1.0-only device)."""
        base_1_1 = self.offer_base_1_1
        offered = [xml.BASE_1_0] + ([xml.BASE_1_1] if base_1_1 else [])
        offered += [
            CAPABILITY_WRITABLE_RUNNING,
            CAPABILITY_CANDIDATE,
            CAPABILITY_CONFIRMED_COMMIT if base_1_1 else CAPABILITY_CONFIRMED_COMMIT_1_0,
            CAPABILITY_ROLLBACK_ON_ERROR,
            CAPABILITY_VALIDATE if base_1_1 else CAPABILITY_VALIDATE_1_0,
            CAPABILITY_STARTUP,
            CAPABILITY_XPATH,
            CAPABILITY_WITH_DEFAULTS,
            CAPABILITY_NOTIFICATION,
            CAPABILITY_INTERLEAVE,
            CAPABILITY_MONITORING,
        ]
        return offered + [module.capability for module in self.datastore.modules]

    def describe(self, parent: etree._Element, namespace: str) -> None:
        """Add RFC 6470 common-session-parms (username, session-id, source-host)."""
        etree.SubElement(parent, _q("username", namespace)).text = self.username
        etree.SubElement(parent, _q("session-id", namespace)).text = str(self.session_id)
        if self.source_host:
            etree.SubElement(parent, _q("source-host", namespace)).text = self.source_host

    # --- Protocol ----------------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Send our hello at once, as RFC 6241 §8.1 asks."""
        self.login_time = self.datastore.clock.seconds()
        self.source_host = _peer_host(self.transport)
        self.username = _avatar_username(self.transport) or self.username
        self.transport.write(EndOfMessageFramer.encode(xml.hello(self.capabilities, self.session_id)))
        self.datastore.session_started(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Release what the session held and tell the other sessions."""
        self._end("closed" if self._closing else self._end_reason)

    def _end(self, reason: str, killed_by: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self._unsubscribe()
        self.datastore.session_ended(self, reason, killed_by)

    def dataReceived(self, data: bytes) -> None:
        """Frame and answer the manager's messages."""
        try:
            if not self._hello_done:
                messages = self._framer.feed(data, max_messages=1)  # type: ignore[call-arg]
            else:
                messages = self._framer.feed(data)
        except FramingError as e:
            self.log.warn("framing error from manager: {error}", error=e)
            self.transport.loseConnection()
            return
        for message in messages:
            if self._closing or self._ended:
                return
            if not self._hello_done:
                self._hello(message)
                return
            self._rpc(message)

    def _parse(self, message: bytes) -> etree._Element | None:
        """Parse a message from the manager; hang up on a bad one."""
        try:
            return xml.parse_message(message)
        except xml.XMLRejected as e:
            self.log.warn("bad message from manager: {error}", error=e)
            self.transport.loseConnection()
            return None

    def _hello(self, message: bytes) -> None:
        hello = self._parse(message)
        if hello is None:
            self.datastore.statistics["in-bad-hellos"] += 1
            self._end_reason = "bad-hello"
            return
        capabilities = {(c.text or "").strip() for c in hello.iter(xml.qname("capability"))}
        self._hello_done = True
        old = self._framer
        if self.offer_base_1_1 and xml.BASE_1_1 in capabilities:
            self._framer = ChunkedFramer()
        rest = old.take_remaining()  # type: ignore[union-attr]
        if rest or self._framer is not old:
            self.dataReceived(rest)

    @property
    def chunked(self) -> bool:
        """Whether the session uses base:1.1 framing."""
        return isinstance(self._framer, ChunkedFramer)

    def _send(self, message: bytes) -> None:
        framer = ChunkedFramer if self.chunked else EndOfMessageFramer
        self.transport.write(framer.encode(message))

    # --- rpcs ------------------------------------------------------------------------------

    def _rpc(self, message: bytes) -> None:
        """Answer one message after the hello."""
        if self._closing or self._ended:
            return
        self.counters["in-rpcs"] += 1
        self.datastore.statistics["in-rpcs"] += 1
        try:
            request = xml.parse_message(message)
        except xml.XMLRejected as e:
            self._malformed(f"the message is not acceptable XML: {e}")
            return
        if request.tag != _q("rpc"):
            self._malformed(f"expected an <rpc>, got <{_local(request)}>")
            return
        reply = etree.Element(_q("rpc-reply"), nsmap={None: NETCONF_NS, **_xpath_namespaces(request)})
        # RFC 6241 §4.2: every attribute of <rpc>, message-id included.
        for name, value in request.attrib.items():
            reply.set(name, value)
        after: list[Callable[[], None]] = []
        self._held = []
        try:
            if request.get("message-id") is None:
                raise RpcError("missing-attribute", "the rpc has no message-id", type="rpc", info=[("bad-attribute", "message-id"), ("bad-element", "rpc")])
            operations = _elements(request)
            if not operations:
                raise RpcError("operation-not-supported", "operation (none) is not supported")
            operation = operations[0]
            known = _OPERATIONS.get(operation.tag)
            if known is None:
                raise RpcError("operation-not-supported", f"operation {_local(operation)} is not supported")
            method, parameters = known
            for parameter in _elements(operation):
                if parameter.tag not in parameters:
                    raise _bad("unknown-element", _local(parameter), f"unexpected parameter <{_local(parameter)}> of {_local(operation)}")
            try:
                result = getattr(self, method)(operation, after)
            except RpcError:
                raise
            except Exception as e:
                # A bug here must not leave the manager waiting for a reply.
                self.log.failure("simulator failed on {operation}", operation=_local(operation))
                raise RpcError("operation-failed", f"internal error: {e}", type="application") from None
        except RpcError as e:
            self.counters["out-rpc-errors"] += 1
            self.datastore.statistics["out-rpc-errors"] += 1
            if e.tag in ("missing-attribute", "operation-not-supported", "unknown-element", "malformed-message"):
                self.counters["in-bad-rpcs"] += 1
                self.datastore.statistics["in-bad-rpcs"] += 1
            reply.append(e.element())
        else:
            if result is None:
                etree.SubElement(reply, _q("ok"))
            else:
                reply.append(result)
        self._send(etree.tostring(reply, xml_declaration=True, encoding="UTF-8"))
        self.rpcs_answered += 1
        held, self._held = self._held, None
        for action in after:
            action()
        for when, content in held:
            self._send_notification(when, content)
        if self._closing:
            self.transport.loseConnection()

    def _malformed(self, reason: str) -> None:
        """
        RFC 6241: malformed-message is base:1.1 only; a base:1.0 session is
        closed as before.
        """
        self.log.warn("bad message from manager: {error}", error=reason)
        self.counters["in-bad-rpcs"] += 1
        self.datastore.statistics["in-bad-rpcs"] += 1
        if not self.chunked:
            self.transport.loseConnection()
            return
        reply = etree.Element(_q("rpc-reply"), nsmap={None: NETCONF_NS})
        reply.append(RpcError("malformed-message", reason, type="rpc").element())
        self.counters["out-rpc-errors"] += 1
        self.datastore.statistics["out-rpc-errors"] += 1
        self._send(etree.tostring(reply, xml_declaration=True, encoding="UTF-8"))

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
        content = list(self.datastore.running) + self.datastore.state(self)
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
        self.datastore.edit(target, config, self, default_operation, test_option)
        return None

    def _copy_config(self, operation: etree._Element, after: list) -> None:
        target, _ = self._datastore_choice(operation, "target", DATASTORES)
        source, config = self._datastore_choice(operation, "source", DATASTORES, config=True)
        self._with_defaults(operation)
        if source == target:
            raise _bad("invalid-value", "target", "source and target are the same datastore")
        content = [_detached(e) for e in _elements(config)] if config is not None else self.datastore.datastores[source]
        self.datastore.copy(content, target, self)
        return None

    def _delete_config(self, operation: etree._Element, after: list) -> None:
        target, _ = self._datastore_choice(operation, "target", DATASTORES)
        self.datastore.delete(target, self)
        return None

    def _lock(self, operation: etree._Element, after: list) -> None:
        target, _ = self._datastore_choice(operation, "target", DATASTORES)
        self.datastore.lock(target, self)
        return None

    def _unlock(self, operation: etree._Element, after: list) -> None:
        target, _ = self._datastore_choice(operation, "target", DATASTORES)
        self.datastore.unlock(target, self)
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
            self, confirmed, timeout,
            persist=(persist.text or "") if persist is not None else None,
            persist_id=(persist_id.text or "") if persist_id is not None else None,
        )
        return None

    def _cancel_commit(self, operation: etree._Element, after: list) -> None:
        persist_id = operation.find(_q("persist-id"))
        self.datastore.cancel_commit(self, (persist_id.text or "") if persist_id is not None else None)
        return None

    def _discard_changes(self, operation: etree._Element, after: list) -> None:
        self.datastore.discard_changes(self)
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

    def kill(self, killed_by: int | None = None) -> None:
        """End this session at once (kill-session): locks, commit, transport."""
        self._end("killed", killed_by)
        if self.transport is not None:
            self.transport.loseConnection()

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

    # --- notifications -----------------------------------------------------------------------

    def _create_subscription(self, operation: etree._Element, after: list) -> None:
        ns = NOTIFICATION_NS
        if self.subscription is not None:
            raise RpcError("in-use", "this session already has a subscription")
        stream = operation.find(_q("stream", ns))
        if stream is not None and _text(stream) != STREAM:
            raise _bad("invalid-value", "stream", f"no stream {_text(stream)!r}: only {STREAM}")
        flt = self._filter(operation, ns)
        _check_filter(flt)
        now = self.datastore.clock.seconds()
        start = self._time(operation, "startTime")
        stop = self._time(operation, "stopTime")
        if stop is not None and start is None:
            raise _bad("missing-element", "startTime", "stopTime needs a startTime")
        if start is not None and start > now:
            raise _bad("invalid-value", "startTime", "startTime is in the future")
        if start is not None and stop is not None and stop < start:
            raise _bad("invalid-value", "stopTime", "stopTime is earlier than startTime")
        subscription = Subscription(flt, start, stop)
        replay = [(t, e) for t, e in self.datastore.replay_log if start is not None and t >= start and (stop is None or t <= stop)]
        self.subscription = subscription
        # Replayed events follow the <ok/>; live ones cannot interleave
        # before then (everything here runs in one reactor turn).
        after.append(lambda: self._replay(subscription, replay))
        return None

    def _time(self, operation: etree._Element, name: str) -> float | None:
        element = operation.find(_q(name, NOTIFICATION_NS))
        if element is None:
            return None
        try:
            return parse_time(_text(element))
        except ValueError:
            raise _bad("invalid-value", name, f"{_text(element)!r} is not a date-and-time") from None

    def _replay(self, subscription: Subscription, replay: list[tuple[float, etree._Element]]) -> None:
        if self.subscription is not subscription:
            return
        for when, event in replay:
            self._deliver(subscription, when, event)
        if subscription.start is not None:
            self._send_notification(self.datastore.clock.seconds(), [etree.Element(_q("replayComplete", NETMOD_NOTIFICATION_NS), nsmap={None: NETMOD_NOTIFICATION_NS})])
        if subscription.stop is not None:
            delay = subscription.stop - self.datastore.clock.seconds()
            if delay <= 0:
                self._complete(subscription)
            else:
                subscription.timer = self.datastore.clock.callLater(delay, self._complete, subscription)

    def _complete(self, subscription: Subscription) -> None:
        """stopTime reached: notificationComplete ends the subscription."""
        if self.subscription is not subscription:
            return
        subscription.timer = None
        self.subscription = None
        self._send_notification(self.datastore.clock.seconds(), [etree.Element(_q("notificationComplete", NETMOD_NOTIFICATION_NS), nsmap={None: NETMOD_NOTIFICATION_NS})])

    def _unsubscribe(self) -> None:
        subscription, self.subscription = self.subscription, None
        if subscription is not None and subscription.timer is not None and subscription.timer.active():
            subscription.timer.cancel()

    def deliver(self, when: float, event: etree._Element) -> None:
        """Send a live event if this session subscribed to it."""
        subscription = self.subscription
        if subscription is None or self._ended or self._closing:
            return
        if subscription.stop is not None and when > subscription.stop:
            return
        self._deliver(subscription, when, event)

    def _deliver(self, subscription: Subscription, when: float, event: etree._Element) -> None:
        selected = apply_filter([event], subscription.filter)
        if selected:
            self._send_notification(when, selected)

    def _send_notification(self, when: float, content: list[etree._Element]) -> None:
        if self._held is not None:
            self._held.append((when, content))
            return
        ns = NOTIFICATION_NS
        notification = etree.Element(_q("notification", ns), nsmap={None: ns})
        etree.SubElement(notification, _q("eventTime", ns)).text = format_time(when)
        for element in content:
            notification.append(element)
        self.counters["out-notifications"] += 1
        self.datastore.statistics["out-notifications"] += 1
        self._send(etree.tostring(notification, xml_declaration=True, encoding="UTF-8"))
