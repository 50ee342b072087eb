"""
Tests for the NETCONF XML layer: the hardened parser every device message goes
through, hello and rpc-error parsing, and the operation builders.

A device is untrusted input: whatever it sends must either parse into a plain
element tree or be refused with XMLRejected, without expanding entities,
touching local files or the network, or raising anything the session does
not expect.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lxml import etree
from twisted.trial.unittest import SynchronousTestCase

from callhome.netconf import operations, xml
from callhome.netconf.xml import (
    BASE_1_0,
    BASE_1_1,
    NETCONF_NS,
    Hello,
    RPCError,
    XMLRejected,
    parse_hello,
    parse_message,
    parse_rpc_errors,
    qname,
)

NS = NETCONF_NS

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="1">
<data>&lol9;</data></rpc-reply>"""

# Small enough that libxml2's amplification guard does not trip, so only the
# parser configuration stands between it and a 1000-fold expansion.
SMALL_LAUGHS = b"""<!DOCTYPE l [
 <!ENTITY a "lol">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
]><l>&c;</l>"""


def hello_bytes(
    capabilities=(BASE_1_0, BASE_1_1), session_id: str | None = "42", root: str = "hello",
    namespace: str | None = NS,
) -> bytes:
    """A server hello with the given parts (None: leave the part out)."""
    caps = "".join(f"<capability>{c}</capability>" for c in capabilities)
    sid = f"<session-id>{session_id}</session-id>" if session_id is not None else ""
    xmlns = f' xmlns="{namespace}"' if namespace is not None else ""
    return f"<{root}{xmlns}><capabilities>{caps}</capabilities>{sid}</{root}>".encode()


def parsed_hello(**kwargs) -> Hello:
    """Parse a hello built by L{hello_bytes}."""
    return parse_hello(parse_message(hello_bytes(**kwargs)))


def reparse(data: bytes) -> etree._Element:
    """Parse what we send as the device would: plain lxml, no tricks."""
    return etree.fromstring(data)


class TempDirMixin:
    """A temporary directory outside the checkout, removed after the test."""

    def make_temp_dir(self) -> Path:
        path = tempfile.mkdtemp(prefix="callhome-test-xml-")
        self.addCleanup(shutil.rmtree, path, True)
        return Path(path)


class ParseMessageTests(SynchronousTestCase, TempDirMixin):
    """parse_message: well-formed NETCONF in, element tree out; the rest refused."""

    def test_rpc_reply_parses(self):
        """An ordinary rpc-reply with data parses into its element tree."""
        root = parse_message(
            b'<?xml version="1.0" encoding="UTF-8"?>'
            b'<rpc-reply xmlns="' + NS.encode() + b'" message-id="101">'
            b'<data><system xmlns="urn:example:system"><hostname>r1</hostname>'
            b"</system></data></rpc-reply>"
        )
        self.assertEqual(root.tag, qname("rpc-reply"))
        self.assertEqual(root.get("message-id"), "101")
        self.assertEqual(root.findtext(f"{{{NS}}}data/{{urn:example:system}}system/{{urn:example:system}}hostname"), "r1")

    def test_utf8_content_parses(self):
        """Non-ASCII text in UTF-8 (the NETCONF encoding) is decoded correctly."""
        root = parse_message('<rpc-reply xmlns="{}"><d>Zürich — 東京</d></rpc-reply>'.format(NS).encode("utf-8"))
        self.assertEqual(root.findtext(f"{{{NS}}}d"), "Zürich — 東京")

    def test_comments_and_whitespace_are_fine(self):
        """Comments and surrounding whitespace are legal XML and do not matter."""
        root = parse_message(b"\n  <!-- hi --><rpc-reply xmlns='" + NS.encode() + b"'><ok/></rpc-reply>\n")
        self.assertEqual(root.tag, qname("rpc-reply"))

    def test_doctype_rejected(self):
        """
        RFC 6241 §3 forbids document type declarations in NETCONF messages;
        any DOCTYPE, with or without an internal subset, is refused.
        """
        for doc in (
            b"<!DOCTYPE rpc-reply><rpc-reply/>",
            b"<!DOCTYPE rpc-reply []><rpc-reply/>",
            b'<!DOCTYPE rpc-reply [<!ELEMENT rpc-reply ANY>]><rpc-reply/>',
            b'<!DOCTYPE rpc-reply PUBLIC "-//x//y" "http://example.invalid/x.dtd"><rpc-reply/>',
        ):
            self.assertRaises(XMLRejected, parse_message, doc)

    def test_billion_laughs_rejected(self):
        """
        The classic exponential entity expansion is refused, and quickly:
        expanding it would take about 3 GB.
        """
        error = self.assertRaises(XMLRejected, parse_message, BILLION_LAUGHS)
        self.assertLess(len(str(error)), 1000)
        self.assertNotIn("lollollol", str(error))

    def test_small_entity_expansion_rejected(self):
        """
        An entity expansion below libxml2's own amplification guard is still
        refused: the DTD defining it is not allowed.
        """
        error = self.assertRaises(XMLRejected, parse_message, SMALL_LAUGHS)
        self.assertNotIn("lollollol", str(error))

    def test_parser_never_expands_entities(self):
        """
        Defence in depth: even before the DOCTYPE check, the shared parser
        leaves entity references unexpanded, so no expansion ever costs
        memory or time.
        """
        root = etree.fromstring(SMALL_LAUGHS, xml._PARSER)
        self.assertEqual([type(node) for node in root], [etree._Entity])
        self.assertNotIn(b"lol", etree.tostring(root))

    def test_external_entity_to_etc_passwd_rejected(self):
        """
        An external entity pointing at /etc/passwd is refused and the file's
        content appears nowhere: not in the error, not in a tree.
        """
        doc = (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b'<rpc-reply xmlns="' + NS.encode() + b'"><data>&xxe;</data></rpc-reply>'
        )
        error = self.assertRaises(XMLRejected, parse_message, doc)
        if os.path.exists("/etc/passwd"):
            with open("/etc/passwd", "rb") as f:
                first_line = f.readline().decode("utf-8", "replace").strip()
            if first_line:
                self.assertNotIn(first_line, str(error))
                self.assertNotIn(first_line.split(":")[0] + ":", str(error))
        # The parser itself keeps the reference as a reference.
        root = etree.fromstring(doc, xml._PARSER)
        self.assertNotIn("root:", "".join(root.itertext()))

    def test_external_entity_content_never_appears(self):
        """
        Same as /etc/passwd with a file whose content we know exactly: the
        secret never reaches the error message or the parsed tree.
        """
        secret_file = self.make_temp_dir() / "secret.txt"
        secret_file.write_text("SECRET-TOKEN-7f3a9\n")
        doc = (
            b'<!DOCTYPE r [<!ENTITY xxe SYSTEM "' + secret_file.as_uri().encode() + b'">]>'
            b"<r>&xxe;</r>"
        )
        error = self.assertRaises(XMLRejected, parse_message, doc)
        self.assertNotIn("SECRET-TOKEN", str(error))
        root = etree.fromstring(doc, xml._PARSER)
        self.assertNotIn("SECRET-TOKEN", "".join(root.itertext()))
        self.assertNotIn(b"SECRET-TOKEN", etree.tostring(root))

    def test_external_parameter_entity_to_etc_passwd_rejected(self):
        """
        A parameter entity pulling /etc/passwd into the DTD is refused too,
        without the file's content appearing in the error.
        """
        doc = b'<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><r/>'
        error = self.assertRaises(XMLRejected, parse_message, doc)
        self.assertNotIn("root:", str(error))

    def test_external_dtd_subset_is_never_read(self):
        """
        A device must not make the manager open local files: a DOCTYPE naming
        a local DTD is refused for being a DOCTYPE, whatever the file holds
        (reading it lets a device probe files, or hang the reactor on a FIFO).
        """
        directory = self.make_temp_dir()
        broken = directory / "broken-7f3a9.dtd"
        broken.write_text("<!ENTITY NAME_FROM_FILE oops")
        fine = directory / "fine-7f3a9.dtd"
        fine.write_text('<!ENTITY fine "ok">')
        errors = []
        for dtd in (broken, fine):
            doc = b'<!DOCTYPE r SYSTEM "' + dtd.as_uri().encode() + b'"><r/>'
            errors.append(str(self.assertRaises(XMLRejected, parse_message, doc)))
        self.assertNotIn("broken-7f3a9", errors[0])
        self.assertEqual(errors[0], errors[1])

    def test_external_parameter_entity_is_never_read(self):
        """
        Like the external subset, an external parameter entity must not make
        the manager open a local file: the outcome must not depend on it.
        """
        directory = self.make_temp_dir()
        broken = directory / "broken-7f3a9.ent"
        broken.write_text("<!ENTITY NAME_FROM_FILE oops")
        fine = directory / "fine-7f3a9.ent"
        fine.write_text('<!ENTITY fine "ok">')
        errors = []
        for ent in (broken, fine):
            doc = b'<!DOCTYPE r [<!ENTITY % p SYSTEM "' + ent.as_uri().encode() + b'"> %p;]><r/>'
            errors.append(str(self.assertRaises(XMLRejected, parse_message, doc)))
        self.assertNotIn("broken-7f3a9", errors[0])
        self.assertEqual(errors[0], errors[1])

    def test_non_utf8_bytes_rejected(self):
        """
        NETCONF is UTF-8; bytes that are not valid UTF-8 (and no other
        encoding declared) are refused, not decoded into mojibake.
        """
        for doc in (
            b"<rpc-reply><d>\xff\xfe</d></rpc-reply>",
            "<rpc-reply><d>Zürich</d></rpc-reply>".encode("latin-1"),
            b"<rpc-reply><d>\xc3</d></rpc-reply>",  # truncated sequence
            b"<rpc-reply><d>\xed\xa0\x80</d></rpc-reply>",  # UTF-16 surrogate
        ):
            self.assertRaises(XMLRejected, parse_message, doc)

    def test_not_well_formed_rejected(self):
        """Broken XML is refused with XMLRejected, never an lxml exception."""
        for doc in (
            b"<rpc-reply><data></rpc-reply>",
            b"<rpc-reply>",
            b"<a/><b/>",
            b"just text",
            b"<a>&undefined;</a>",
            b"<a>&#0;</a>",
            b"<a b='1' b='2'/>",
            b"<p:a/>",
            b"\x00<a/>",
        ):
            self.assertRaises(XMLRejected, parse_message, doc)

    def test_empty_message_rejected(self):
        """An empty (or all-whitespace) message is refused, not a crash."""
        for doc in (b"", b" ", b"\n\t\r\n"):
            self.assertRaises(XMLRejected, parse_message, doc)

    def test_rejection_is_not_an_lxml_error(self):
        """
        The session only catches XMLRejected; lxml's own errors must never
        escape parse_message.
        """
        self.assertFalse(issubclass(XMLRejected, etree.LxmlError))
        error = self.assertRaises(XMLRejected, parse_message, b"<unclosed>")
        self.assertIsNone(error.__cause__)


class ParseHelloTests(SynchronousTestCase):
    """parse_hello: the server's hello sets capabilities, framing and session-id."""

    def test_happy_path(self):
        """A normal hello gives its capabilities (in order) and session-id."""
        hello = parsed_hello(
            capabilities=(BASE_1_0, BASE_1_1, "urn:ietf:params:netconf:capability:candidate:1.0"),
            session_id="4",
        )
        self.assertEqual(
            hello.capabilities,
            (BASE_1_0, BASE_1_1, "urn:ietf:params:netconf:capability:candidate:1.0"),
        )
        self.assertEqual(hello.session_id, "4")
        self.assertTrue(hello.base_1_1)

    def test_base_1_0_only(self):
        """A base:1.0-only device is accepted and does not offer chunked framing."""
        hello = parsed_hello(capabilities=(BASE_1_0,))
        self.assertFalse(hello.base_1_1)

    def test_base_1_1_only(self):
        """A base:1.1-only device is accepted (framing is the session's choice)."""
        self.assertTrue(parsed_hello(capabilities=(BASE_1_1,)).base_1_1)

    def test_whitespace_around_values_is_ignored(self):
        """Pretty-printed hellos put whitespace around capabilities and the id."""
        doc = (
            f'<hello xmlns="{NS}">\n  <capabilities>\n    <capability>\n      {BASE_1_1}\n'
            f"    </capability>\n  </capabilities>\n  <session-id> 17 </session-id>\n</hello>"
        ).encode()
        hello = parse_hello(parse_message(doc))
        self.assertEqual(hello.capabilities, (BASE_1_1,))
        self.assertEqual(hello.session_id, "17")

    def test_largest_session_id(self):
        """4294967295 is the largest session-id (uint32) and is accepted."""
        self.assertEqual(parsed_hello(session_id="4294967295").session_id, "4294967295")

    def test_no_base_capability_rejected(self):
        """
        Without base:1.0 or base:1.1 there is no framing both sides know: the
        hello is refused (also with no capabilities at all).
        """
        self.assertRaises(
            XMLRejected, parsed_hello,
            capabilities=("urn:ietf:params:netconf:capability:candidate:1.0",),
        )
        self.assertRaises(XMLRejected, parsed_hello, capabilities=())
        self.assertRaises(
            XMLRejected, parsed_hello, capabilities=("urn:ietf:params:netconf:base:1.2",)
        )

    def test_base_capability_outside_capabilities_rejected(self):
        """Only <capability> elements inside <capabilities> count."""
        doc = (
            f'<hello xmlns="{NS}"><capability>{BASE_1_0}</capability>'
            f"<session-id>1</session-id></hello>"
        ).encode()
        self.assertRaises(XMLRejected, parse_hello, parse_message(doc))

    def test_missing_session_id_rejected(self):
        """A server hello must carry a session-id (RFC 6241 §8.1)."""
        self.assertRaises(XMLRejected, parsed_hello, session_id=None)

    def test_invalid_session_id_rejected(self):
        """
        session-id is a positive integer: 0, negatives, non-numbers and the
        empty string are refused.
        """
        for bad in ("0", "00", "-1", "+1", "abc", "1a", "1.5", "", "0x10", "1 2"):
            self.assertRaises(XMLRejected, parsed_hello, session_id=bad)

    def test_wrong_root_element_rejected(self):
        """Anything but a NETCONF <hello> first is refused."""
        self.assertRaises(XMLRejected, parsed_hello, root="rpc-reply")
        self.assertRaises(XMLRejected, parsed_hello, root="rpc")

    def test_hello_in_wrong_namespace_rejected(self):
        """A <hello> outside the NETCONF namespace is not a NETCONF hello."""
        self.assertRaises(XMLRejected, parsed_hello, namespace=None)
        self.assertRaises(XMLRejected, parsed_hello, namespace="urn:example:other")

    def test_superscript_digit_session_id_rejected(self):
        """
        Device input must be refused with XMLRejected, never crash the
        session with another exception.
        """
        self.assertRaises(XMLRejected, parsed_hello, session_id="²")

    def test_non_ascii_digit_session_id_rejected(self):
        """The session-id is a uint32 written in ASCII digits (RFC 6241 App. B)."""
        self.assertRaises(XMLRejected, parsed_hello, session_id="١٢")

    def test_session_id_above_uint32_rejected(self):
        """
        RFC 6241 Appendix B: session-id is xs:unsignedInt with minimum 1; 0 is
        refused, so must be anything above 4294967295.
        """
        self.assertRaises(XMLRejected, parsed_hello, session_id="4294967296")


FULL_ERROR = f"""
<rpc-reply xmlns="{NS}" xmlns:if="urn:ietf:params:xml:ns:yang:ietf-interfaces" message-id="5">
  <rpc-error>
    <error-type>application</error-type>
    <error-tag>invalid-value</error-tag>
    <error-severity>error</error-severity>
    <error-app-tag>mtu-out-of-range</error-app-tag>
    <error-path>
      /if:interfaces/if:interface[if:name='eth0']/if:mtu
    </error-path>
    <error-message xml:lang="en">MTU must be 68..9000</error-message>
    <error-info>
      <bad-element>mtu</bad-element>
      <session-id>0</session-id>
      <v:detail xmlns:v="urn:example:vendor"> too big </v:detail>
    </error-info>
  </rpc-error>
  <rpc-error>
    <error-type>protocol</error-type>
    <error-tag>operation-failed</error-tag>
    <error-severity>warning</error-severity>
  </rpc-error>
  <rpc-error>
    <error-type>rpc</error-type>
    <error-tag>missing-attribute</error-tag>
    <error-info><bad-attribute>message-id</bad-attribute><bad-element>rpc</bad-element></error-info>
  </rpc-error>
</rpc-reply>
""".encode()


class ParseRPCErrorsTests(SynchronousTestCase):
    """parse_rpc_errors: every <rpc-error> of a reply, all its fields."""

    def test_all_fields_of_multiple_errors(self):
        """
        Operators need the whole error to act on it: type, tag, severity,
        app-tag, path, message and the error-info children, for every error
        in the reply and in document order.
        """
        errors = parse_rpc_errors(parse_message(FULL_ERROR))
        self.assertEqual(len(errors), 3)
        first, second, third = errors
        self.assertEqual(first.type, "application")
        self.assertEqual(first.tag, "invalid-value")
        self.assertEqual(first.severity, "error")
        self.assertEqual(first.app_tag, "mtu-out-of-range")
        self.assertEqual(first.path, "/if:interfaces/if:interface[if:name='eth0']/if:mtu")
        self.assertEqual(first.message, "MTU must be 68..9000")
        self.assertEqual(first.info, {"bad-element": "mtu", "session-id": "0", "detail": "too big"})

        self.assertEqual((second.type, second.tag, second.severity), ("protocol", "operation-failed", "warning"))
        self.assertIsNone(second.app_tag)
        self.assertIsNone(second.path)
        self.assertIsNone(second.message)
        self.assertEqual(second.info, {})

        self.assertEqual((third.type, third.tag), ("rpc", "missing-attribute"))
        self.assertEqual(third.severity, "error", "missing severity defaults to error")
        self.assertEqual(third.info, {"bad-attribute": "message-id", "bad-element": "rpc"})

    def test_ok_reply_has_no_errors(self):
        """A successful reply yields an empty list, not an error."""
        reply = parse_message(f'<rpc-reply xmlns="{NS}" message-id="1"><ok/></rpc-reply>'.encode())
        self.assertEqual(parse_rpc_errors(reply), [])

    def test_errors_outside_netconf_namespace_ignored(self):
        """Only NETCONF <rpc-error> elements are errors; data that looks alike is not."""
        reply = parse_message(
            f'<rpc-reply xmlns="{NS}" message-id="1"><data>'
            f'<rpc-error xmlns="urn:example:app"><error-tag>x</error-tag></rpc-error>'
            f"</data></rpc-reply>".encode()
        )
        self.assertEqual(parse_rpc_errors(reply), [])

    def test_comment_in_error_info_is_ignored(self):
        """
        Comments are legal anywhere in a device's XML; one inside error-info
        must not stop the error from being reported.
        """
        reply = parse_message(
            f'<rpc-reply xmlns="{NS}" message-id="1"><rpc-error>'
            f"<error-type>rpc</error-type><error-tag>bad-element</error-tag>"
            f"<error-info><!-- vendor note --><bad-element>x</bad-element><?pi y?></error-info>"
            f"</rpc-error></rpc-reply>".encode()
        )
        [error] = parse_rpc_errors(reply)
        self.assertEqual(error.info, {"bad-element": "x"})

    def test_str_is_readable(self):
        """
        The error is logged and shown to operators: str() names type/tag,
        app-tag, path and message in one line.
        """
        error = parse_rpc_errors(parse_message(FULL_ERROR))[0]
        self.assertEqual(
            str(error),
            "rpc-error application/invalid-value (mtu-out-of-range) at "
            "/if:interfaces/if:interface[if:name='eth0']/if:mtu: MTU must be 68..9000",
        )

    def test_str_of_minimal_error(self):
        """An error with only type and tag still reads well, with no empty parts."""
        self.assertEqual(str(RPCError(type="protocol", tag="lock-denied")), "rpc-error protocol/lock-denied")

    def test_rpc_error_is_an_exception(self):
        """The session fails Deferreds with it, so it must be raisable."""
        with self.assertRaises(RPCError) as raised:
            raise RPCError(type="rpc", tag="in-use")
        self.assertEqual(raised.exception.tag, "in-use")


class BuilderTests(SynchronousTestCase):
    """Operation builders: what we send must be the XML RFC 6241 specifies."""

    def test_hello(self):
        """
        Our hello lists our capabilities in the NETCONF namespace and has no
        session-id (only the server sends one, RFC 6241 §8.1).
        """
        data = operations.hello([BASE_1_0, BASE_1_1])
        self.assertTrue(data.startswith(b"<?xml"))
        root = reparse(data)
        self.assertEqual(root.tag, qname("hello"))
        self.assertEqual(
            [c.text for c in root.iterfind(f"{{{NS}}}capabilities/{{{NS}}}capability")],
            [BASE_1_0, BASE_1_1],
        )
        self.assertIsNone(root.find(f"{{{NS}}}session-id"))

    def test_rpc_wraps_operation(self):
        """
        rpc() puts the operation inside <rpc message-id=...> in the NETCONF
        namespace, whether given as an element, text or bytes.
        """
        for operation in (operations.close_session(), f'<close-session xmlns="{NS}"/>', f'<close-session xmlns="{NS}"/>'.encode()):
            root = reparse(operations.rpc("17", operation))
            self.assertEqual(root.tag, qname("rpc"))
            self.assertEqual(root.get("message-id"), "17")
            self.assertEqual([child.tag for child in root], [qname("close-session")])

    def test_close_session(self):
        """close-session is an empty element in the NETCONF namespace."""
        element = operations.close_session()
        self.assertEqual(element.tag, qname("close-session"))
        self.assertEqual(len(element), 0)

    def test_get_without_filter(self):
        """An unfiltered get has no <filter> child at all."""
        root = reparse(operations.rpc("1", operations.get()))
        get = root.find(qname("get"))
        self.assertIsNotNone(get)
        self.assertEqual(len(get), 0)

    def test_get_config_source(self):
        """
        get-config names its datastore as an empty element inside <source>:
        running by default, or the one asked for.
        """
        for args, datastore in (((), "running"), (("candidate",), "candidate"), (("startup",), "startup")):
            op = reparse(operations.rpc("1", operations.get_config(*args))).find(qname("get-config"))
            source = op.find(qname("source"))
            self.assertEqual([child.tag for child in source], [qname(datastore)])
            self.assertEqual(len(source[0]), 0)
            self.assertIsNone(op.find(qname("filter")))

    def test_subtree_filter_with_several_top_level_elements(self):
        """
        A subtree filter may select several top-level trees; all of them go
        into <filter type="subtree">, in order, with their own namespaces.
        """
        subtree = (
            "<interfaces xmlns='urn:ietf:params:xml:ns:yang:ietf-interfaces'><interface><name/></interface></interfaces>"
            "<system xmlns='urn:ietf:params:xml:ns:yang:ietf-system'><hostname/></system>"
        )
        for op_element, name in ((operations.get(subtree=subtree), "get"), (operations.get_config("running", subtree=subtree), "get-config")):
            op = reparse(operations.rpc("1", op_element)).find(qname(name))
            flt = op.find(qname("filter"))
            self.assertEqual(flt.get("type"), "subtree")
            self.assertIsNone(flt.get("select"))
            self.assertEqual(
                [child.tag for child in flt],
                [
                    "{urn:ietf:params:xml:ns:yang:ietf-interfaces}interfaces",
                    "{urn:ietf:params:xml:ns:yang:ietf-system}system",
                ],
            )
            self.assertIsNotNone(flt.find("{urn:ietf:params:xml:ns:yang:ietf-interfaces}interfaces/{urn:ietf:params:xml:ns:yang:ietf-interfaces}interface/{urn:ietf:params:xml:ns:yang:ietf-interfaces}name"))

    def test_subtree_filter_with_prefixed_namespace_and_content_match(self):
        """A prefixed namespace and a content-match node survive serialization."""
        subtree = "<if:interfaces xmlns:if='urn:if'><if:interface><if:name>eth0</if:name></if:interface></if:interfaces>"
        flt = reparse(operations.rpc("1", operations.get(subtree=subtree))).find(f"{qname('get')}/{qname('filter')}")
        self.assertEqual(flt.findtext("{urn:if}interfaces/{urn:if}interface/{urn:if}name"), "eth0")

    def test_get_config_source_comes_before_filter(self):
        """RFC 6241 §7.1 lists <source> then <filter>; keep that order."""
        op = operations.get_config("running", subtree="<a xmlns='urn:a'/>")
        self.assertEqual([child.tag for child in op], [qname("source"), qname("filter")])

    def test_xpath_filter_with_namespaces(self):
        """
        An XPath filter carries the expression in select= and declares every
        prefix the expression uses on the <filter> element itself, so the
        device can resolve them (RFC 6241 §8.9).
        """
        namespaces = {"if": "urn:ietf:params:xml:ns:yang:ietf-interfaces", "sys": "urn:ietf:params:xml:ns:yang:ietf-system"}
        select = "/if:interfaces/if:interface[if:name='eth0'] | /sys:system/sys:hostname"
        for op_element, name in (
            (operations.get(xpath=select, namespaces=namespaces), "get"),
            (operations.get_config("candidate", xpath=select, namespaces=namespaces), "get-config"),
        ):
            data = operations.rpc("1", op_element)
            op = reparse(data).find(qname(name))
            flt = op.find(qname("filter"))
            self.assertEqual(flt.get("type"), "xpath")
            self.assertEqual(flt.get("select"), select)
            self.assertEqual(len(flt), 0)
            for prefix, uri in namespaces.items():
                self.assertEqual(flt.nsmap.get(prefix), uri)
        self.assertEqual(op.find(qname("source"))[0].tag, qname("candidate"))

    def test_xpath_filter_without_namespaces(self):
        """An XPath without prefixes needs no namespace declarations."""
        flt = reparse(operations.rpc("1", operations.get(xpath="/system"))).find(f"{qname('get')}/{qname('filter')}")
        self.assertEqual((flt.get("type"), flt.get("select")), ("xpath", "/system"))

    def test_subtree_and_xpath_together_rejected(self):
        """A filter is one or the other; asking for both is a programming error."""
        self.assertRaises(ValueError, operations.get, subtree="<a xmlns='urn:a'/>", xpath="/a")
        self.assertRaises(ValueError, operations.get_config, "running", subtree="<a xmlns='urn:a'/>", xpath="/a")
