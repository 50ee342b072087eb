"""``<rpc-error>`` replies (RFC 6241 §4.3, Appendix A)."""

from __future__ import annotations

from typing import Sequence

from lxml import etree

from callhome.simulator.constants import NETCONF_NS
from callhome.simulator.xmltree import _q


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
