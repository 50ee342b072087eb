"""
XML for NETCONF: one hardened parser, hello and reply parsing.

The builders of what we send are in :mod:`callhome.netconf.operations`.

Everything a device sends goes through :func:`parse_message`.  RFC 6241 §3
forbids document type declarations in NETCONF content, so any DTD is refused
outright; the parser itself also never expands entities, never loads
anything from the network and keeps libxml2's limits on depth and node size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lxml import etree

if TYPE_CHECKING:  # pragma: no cover
    # Names types-lxml has (they are not lxml's at run time): what a resolver
    # returns, and the protocol of a parser target.
    from lxml.etree import ParserTarget
    from lxml.etree._docloader import _InputDocument

    _TargetBase = ParserTarget[None]
else:
    _TargetBase = object

NETCONF_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
NOTIFICATION_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"
BASE_1_0 = "urn:ietf:params:netconf:base:1.0"
BASE_1_1 = "urn:ietf:params:netconf:base:1.1"

_NC = "{%s}" % NETCONF_NS
_SESSION_ID = re.compile(r"^[1-9][0-9]{0,9}$")
_CAPABILITY_SETS: dict[tuple[str, ...], tuple[str, ...]] = {}


class XMLRejected(Exception):
    """A message from the device is not acceptable XML."""


class _RefuseExternal(etree.Resolver):
    """Resolve every external reference to nothing: no file is ever opened."""

    def resolve(self, url: str | None, pubid: str | None, context: object) -> _InputDocument:
        """Every URL resolves to an empty document."""
        return self.resolve_string("", context)


def _hardened_parser() -> etree.XMLParser:
    parser = etree.XMLParser(
        # NETCONF is UTF-8 (RFC 6241 §3).  Forcing it also means a document
        # cannot hide a DOCTYPE from the byte scan below in another encoding.
        encoding="utf-8",
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        collect_ids=False,
        remove_blank_text=False,
    )
    parser.resolvers.add(_RefuseExternal())
    return parser


# One parser for everything a device sends.  lxml parsers are not thread-safe,
# but the reactor thread is the only user.
_PARSER = _hardened_parser()


def parse_message(data: bytes) -> etree._Element:
    """
    Parse one NETCONF message from a device.

    @raises XMLRejected: if it is not well-formed, is not UTF-8 (or the
        encoding it declares), or carries a DTD.
    """
    if not data.strip():
        raise XMLRejected("empty message")
    # Refuse a DTD before libxml2 sees it: even with entity loading off it
    # still opens a local file named as an external subset.
    if b"<!DOCTYPE" in data:
        raise XMLRejected("document type declarations are not allowed (RFC 6241 §3)")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as e:
        raise XMLRejected(f"not well-formed XML: {e}") from None
    except ValueError as e:  # e.g. an encoding lxml cannot handle
        raise XMLRejected(f"unreadable XML: {e}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise XMLRejected("document type declarations are not allowed (RFC 6241 §3)")
    return root


#: Messages larger than this are only checked, not parsed, unless they
#: carry an rpc-error (see L{scan_message}).
STREAM_THRESHOLD = 1024 * 1024

# An <rpc-error> start tag, prefixed or not (not <out-rpc-errors>, say).
_RPC_ERROR_TAG = re.compile(rb"<(?:[^\s<>/:]+:)?rpc-error[\s/>]")


def has_rpc_error(data: bytes) -> bool:
    """Whether a message may hold an ``<rpc-error>`` element."""
    # bytes.find runs at memory speed; the regex only looks around a hit.
    position = data.find(b"rpc-error")
    while position >= 0:
        window = data[max(0, position - 512) : position + 10]
        if _RPC_ERROR_TAG.search(window):
            return True
        position = data.find(b"rpc-error", position + 9)
    return False

_RPC_ERROR = "{%s}rpc-error" % NETCONF_NS


class _NoTree(_TargetBase):
    """A parser target with no per-element methods: libxml2 checks, nothing is built."""

    def close(self) -> None:
        return None


def scan_message(data: bytes) -> etree._Element:
    """
    Check a large message without building its tree; return its root element
    (tag and attributes only, no children).

    The same rules as L{parse_message} (well-formed, UTF-8, no DTD, no
    external entities, libxml2's limits), checked in C with a parser target
    that builds nothing: a 50 MB reply costs its bytes, not a tree ten times
    their size, and is checked about ten times faster.  The caller parses
    fully when it needs more (an ``<rpc-error>``, or an action reading data).

    @raises XMLRejected: as L{parse_message}.
    """
    if not data.strip():
        raise XMLRejected("empty message")
    if b"<!DOCTYPE" in data:
        raise XMLRejected("document type declarations are not allowed (RFC 6241 §3)")
    checker = etree.XMLParser(
        target=_NoTree(), encoding="utf-8", resolve_entities=False, no_network=True,
        load_dtd=False, huge_tree=False,
    )
    checker.resolvers.add(_RefuseExternal())
    try:
        etree.fromstring(data, checker)
        head = etree.XMLPullParser(events=("start",), encoding="utf-8", resolve_entities=False, no_network=True, load_dtd=False)
        head.feed(data[:65536])
        for _event, element in head.read_events():
            return element
    except etree.XMLSyntaxError as e:
        raise XMLRejected(f"not well-formed XML: {e}") from None
    except ValueError as e:
        raise XMLRejected(f"unreadable XML: {e}") from None
    raise XMLRejected("no root element in the first 64 KiB")


def parse_xml(data: bytes) -> etree._Element:
    """
    Parse XML with the hardened parser (no entities, no network, no external
    files): for XML the operator wrote (filters, configs, RPC files), which
    needs no DOCTYPE pre-check.  Device messages go through L{parse_message}.

    @raises etree.XMLSyntaxError: if it is not well-formed.
    """
    return etree.fromstring(data, _PARSER)


def qname(tag: str, namespace: str = NETCONF_NS) -> str:
    """Return the Clark-notation name of a NETCONF element."""
    return "{%s}%s" % (namespace, tag)


def local_name(element: etree._Element) -> str:
    """Return an element's name without its namespace."""
    return etree.QName(element).localname


# --- reading what we receive ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """A device's hello: what it can do and which session it opened."""

    capabilities: tuple[str, ...]
    session_id: str

    @property
    def base_1_1(self) -> bool:
        """Whether the device offers base:1.1 (chunked framing)."""
        return BASE_1_1 in self.capabilities


def parse_hello(root: etree._Element) -> Hello:
    """
    Read a server hello.

    @raises XMLRejected: when it is no hello, lacks a base capability or
        lacks a valid session-id.
    """
    if root.tag != qname("hello"):
        raise XMLRejected(f"expected a hello, got <{local_name(root)}>")
    capabilities = tuple(
        (c.text or "").strip() for c in root.iterfind(f"{_NC}capabilities/{_NC}capability")
    )
    # Devices of a kind send the same list: share one tuple between their
    # sessions (10,000 held sessions would otherwise keep 10,000 copies).
    if len(_CAPABILITY_SETS) < 1000:
        capabilities = _CAPABILITY_SETS.setdefault(capabilities, capabilities)
    else:
        capabilities = _CAPABILITY_SETS.get(capabilities, capabilities)
    if BASE_1_0 not in capabilities and BASE_1_1 not in capabilities:
        raise XMLRejected("hello offers no NETCONF base capability (base:1.0 or base:1.1)")
    session_id = root.findtext(f"{_NC}session-id")
    if session_id is None:
        raise XMLRejected("hello has no session-id")
    session_id = session_id.strip()
    # RFC 6241 Appendix B: session-id is a uint32 from 1 (ASCII digits only:
    # str.isdigit() also accepts superscripts and other scripts' digits).
    if not _SESSION_ID.match(session_id) or int(session_id) > 4294967295:
        raise XMLRejected(f"hello has an invalid session-id {session_id[:32]!r}")
    return Hello(capabilities=capabilities, session_id=session_id)


@dataclass
class RPCError(Exception):
    """
    An ``<rpc-error>`` the device answered with (RFC 6241 §4.3).

    All the errors of the reply are in ``errors``; this one's fields are the
    first error of severity ``error``.
    """

    type: str = ""
    tag: str = ""
    severity: str = "error"
    app_tag: str | None = None
    path: str | None = None
    message: str | None = None
    info: dict[str, str] = field(default_factory=dict)
    errors: list["RPCError"] = field(default_factory=list, repr=False)
    #: the whole <rpc-reply> as received (set by the session).
    reply: bytes | None = field(default=None, repr=False)

    def __str__(self) -> str:
        text = f"rpc-error {self.type}/{self.tag}"
        if self.app_tag:
            text += f" ({self.app_tag})"
        if self.path:
            text += f" at {self.path}"
        if self.message:
            text += f": {self.message}"
        return text


def parse_rpc_errors(reply: etree._Element) -> list[RPCError]:
    """Return every ``<rpc-error>`` of an ``<rpc-reply>``."""
    errors = []
    for element in reply.iterfind(f"{_NC}rpc-error"):
        info = {}
        info_element = element.find(f"{_NC}error-info")
        if info_element is not None:
            # Elements only: comments and processing instructions have no name.
            for child in info_element.iterchildren(tag=etree.Element):
                info[local_name(child)] = (child.text or "").strip()
        errors.append(
            RPCError(
                type=(element.findtext(f"{_NC}error-type") or "").strip(),
                tag=(element.findtext(f"{_NC}error-tag") or "").strip(),
                severity=(element.findtext(f"{_NC}error-severity") or "error").strip(),
                app_tag=_stripped(element.findtext(f"{_NC}error-app-tag")),
                path=_stripped(element.findtext(f"{_NC}error-path")),
                message=_stripped(element.findtext(f"{_NC}error-message")),
                info=info,
            )
        )
    return errors


def _stripped(text: str | None) -> str | None:
    return text.strip() if text is not None else None
