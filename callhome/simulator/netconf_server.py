"""
A small NETCONF server for the simulated device.

It speaks base:1.0 and base:1.1 (with the same framers the manager uses),
answers ``<get>`` and ``<get-config>`` from an XML datastore, honours a
top-level subtree filter, ends on ``<close-session>`` and answers anything
else with an ``operation-not-supported`` rpc-error.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from lxml import etree
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from callhome.netconf import xml
from callhome.netconf.framing import ChunkedFramer, EndOfMessageFramer, FramingError

DEFAULT_DATASTORE = Path(__file__).with_name("datastore.xml")

_session_ids = itertools.count(1)


class Datastore:
    """
    The device's data: the children of the file's root element.

    @ivar elements: the top-level data elements.
    """

    def __init__(self, elements: list[etree._Element]) -> None:
        self.elements = elements

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_DATASTORE) -> "Datastore":
        """Load a datastore file: any root element, its children are the data."""
        root = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)).getroot()
        return cls(list(root))

    def select(self, subtree: etree._Element | None) -> list[etree._Element]:
        """Return the top-level elements a subtree filter selects (all without one)."""
        if subtree is None or len(subtree) == 0:
            return self.elements
        wanted = {child.tag for child in subtree}
        return [e for e in self.elements if e.tag in wanted]


class NetconfServerProtocol(Protocol):
    """One NETCONF server session on a subsystem channel."""

    log = Logger(namespace="callhome.simulator")

    def __init__(self, datastore: Datastore, offer_base_1_1: bool = True) -> None:
        self.datastore = datastore
        self.offer_base_1_1 = offer_base_1_1
        self.session_id = next(_session_ids)
        self._framer: EndOfMessageFramer | ChunkedFramer = EndOfMessageFramer()
        self._hello_done = False
        self.rpcs_answered = 0

    def connectionMade(self) -> None:
        """Send our hello at once, as RFC 6241 §8.1 asks."""
        offered = [xml.BASE_1_0] + ([xml.BASE_1_1] if self.offer_base_1_1 else [])
        self.transport.write(EndOfMessageFramer.encode(xml.hello(offered, self.session_id)))

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
            return
        capabilities = {c.text for c in hello.iter(xml.qname("capability"))}
        self._hello_done = True
        old = self._framer
        if self.offer_base_1_1 and xml.BASE_1_1 in capabilities:
            self._framer = ChunkedFramer()
        rest = old.take_remaining()  # type: ignore[union-attr]
        if rest or self._framer is not old:
            self.dataReceived(rest)

    def _send(self, message: bytes) -> None:
        framer = ChunkedFramer if isinstance(self._framer, ChunkedFramer) else EndOfMessageFramer
        self.transport.write(framer.encode(message))

    def _rpc(self, message: bytes) -> None:
        request = self._parse(message)
        if request is None:
            return
        message_id = request.get("message-id", "")
        reply = etree.Element(xml.qname("rpc-reply"), nsmap={None: xml.NETCONF_NS})
        reply.set("message-id", message_id)
        operation = request[0] if len(request) else None
        name = xml.local_name(operation) if operation is not None else ""
        close = False
        if name in ("get", "get-config"):
            data = etree.SubElement(reply, xml.qname("data"))
            for element in self.datastore.select(operation.find(xml.qname("filter"))):  # type: ignore[union-attr]
                data.append(_copy(element))
        elif name == "close-session":
            etree.SubElement(reply, xml.qname("ok"))
            close = True
        else:
            error = etree.SubElement(reply, xml.qname("rpc-error"))
            for tag, text in (("error-type", "protocol"), ("error-tag", "operation-not-supported"), ("error-severity", "error"), ("error-message", f"operation {name or '(none)'} is not supported")):
                etree.SubElement(error, xml.qname(tag)).text = text
        self._send(etree.tostring(reply, xml_declaration=True, encoding="UTF-8"))
        self.rpcs_answered += 1
        if close:
            self.transport.loseConnection()


def _copy(element: etree._Element) -> etree._Element:
    """A copy, so the datastore's own elements are never moved into a reply."""
    import copy

    return copy.deepcopy(element)
