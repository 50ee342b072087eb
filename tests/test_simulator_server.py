"""
The simulated device's NETCONF server, driven directly with framed bytes:
every operation the manager's actions send, its errors, locks shared by the
sessions of one device, confirmed commits on an injected clock, and
RFC 5277 notifications with replay.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree
from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from callhome.netconf import operations, xml
from callhome.netconf.framing import ChunkedFramer, EndOfMessageFramer
from callhome.simulator import netconf_server
from callhome.simulator.netconf_server import (
    MONITORING_NS,
    NETCONF_NOTIFICATIONS_NS,
    NETMOD_NOTIFICATION_NS,
    NOTIFICATION_NS,
    Datastore,
    NetconfServerProtocol,
    format_time,
)

NC = xml.NETCONF_NS
IF = "urn:ietf:params:xml:ns:yang:ietf-interfaces"
SYS = "urn:ietf:params:xml:ns:yang:ietf-system"
NS = {"nc": NC, "if": IF, "sys": SYS, "ncm": MONITORING_NS, "n": NOTIFICATION_NS, "ncn": NETCONF_NOTIFICATIONS_NS, "nm": NETMOD_NOTIFICATION_NS}
YANG = Path(netconf_server.__file__).with_name("yang")
START = 1_700_000_000.0


class Client:
    """A manager in a test: one session on a device, bytes in and out by hand."""

    def __init__(self, datastore: Datastore, base_1_1: bool = True, offer_base_1_1: bool = True) -> None:
        self.protocol = NetconfServerProtocol(datastore, offer_base_1_1)
        self.transport = StringTransport()
        self.framer: EndOfMessageFramer | ChunkedFramer = EndOfMessageFramer()
        self.notifications: list[etree._Element] = []
        self.protocol.makeConnection(self.transport)
        (self.hello,) = self.receive()
        capabilities = [xml.BASE_1_0] + ([xml.BASE_1_1] if base_1_1 else [])
        self.protocol.dataReceived(EndOfMessageFramer.encode(operations.hello(capabilities)))
        if base_1_1 and offer_base_1_1:
            self.framer = ChunkedFramer()
        self.chunked = isinstance(self.framer, ChunkedFramer)
        self.next_id = 1

    @property
    def session_id(self) -> int:
        return self.protocol.session_id

    def receive(self) -> list[etree._Element]:
        """Every complete message the server sent since last time."""
        data = self.transport.value()
        self.transport.clear()
        return [xml.parse_message(m) for m in self.framer.feed(data)]

    def send(self, message: bytes) -> None:
        framer = ChunkedFramer if self.chunked else EndOfMessageFramer
        self.protocol.dataReceived(framer.encode(message))

    def rpc(self, body: str, attributes: str | None = None) -> etree._Element:
        """Send one operation; return its reply (notifications are kept aside)."""
        if attributes is None:
            attributes = f'message-id="{self.next_id}"'
            self.next_id += 1
        self.send(f'<rpc xmlns="{NC}" {attributes}>{body}</rpc>'.encode())
        return self.reply()

    def reply(self) -> etree._Element:
        replies = []
        for message in self.receive():
            if message.tag == xml.qname("notification", NOTIFICATION_NS):
                self.notifications.append(message)
            else:
                replies.append(message)
        assert len(replies) == 1, replies
        return replies[0]

    def take_notifications(self) -> list[etree._Element]:
        """Notifications received so far (and any still unread)."""
        for message in self.receive():
            assert message.tag == xml.qname("notification", NOTIFICATION_NS), message.tag
            self.notifications.append(message)
        taken, self.notifications = self.notifications, []
        return taken

    def subscribe(self, extra: str = "") -> etree._Element:
        return self.rpc(f'<create-subscription xmlns="{NOTIFICATION_NS}">{extra}</create-subscription>')

    def hang_up(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def ok(reply: etree._Element) -> bool:
    return reply.find(xml.qname("ok")) is not None and reply.find(xml.qname("rpc-error")) is None


def error(reply: etree._Element) -> xml.RPCError:
    errors = xml.parse_rpc_errors(reply)
    assert errors, etree.tostring(reply)
    return errors[0]


def event(notification: etree._Element) -> etree._Element:
    """The event element of a notification (after eventTime)."""
    return [c for c in notification if c.tag != xml.qname("eventTime", NOTIFICATION_NS)][0]


def hostname(client: Client, source: str = "running") -> str | None:
    reply = client.rpc(f"<get-config><source><{source}/></source></get-config>")
    return reply.findtext("nc:data/sys:system/sys:hostname", namespaces=NS)


def set_hostname(name: str, target: str = "running", operation: str = "") -> str:
    return (
        f"<edit-config><target><{target}/></target><config>"
        f'<system xmlns="{SYS}"{operation}><hostname>{name}</hostname></system>'
        "</config></edit-config>"
    )


def interface_names(client: Client, source: str = "running") -> list[str]:
    reply = client.rpc(f"<get-config><source><{source}/></source></get-config>")
    return [e.text for e in reply.iterfind("nc:data/if:interfaces/if:interface/if:name", namespaces=NS)]


class ServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(START)
        self.datastore = Datastore.from_file(clock=self.clock)

    def client(self, **kwargs) -> Client:
        return Client(self.datastore, **kwargs)


class HelloAndCompatibilityTests(ServerTestCase):
    """What the manager relied on before still works, and the hello says what is new."""

    def test_hello_capabilities(self):
        """The manager's actions decide what to send from these capabilities."""
        client = self.client()
        capabilities = [c.text for c in client.hello.iterfind("nc:capabilities/nc:capability", namespaces=NS)]
        for uri in (
            xml.BASE_1_0, xml.BASE_1_1,
            "urn:ietf:params:netconf:capability:writable-running:1.0",
            "urn:ietf:params:netconf:capability:candidate:1.0",
            "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
            "urn:ietf:params:netconf:capability:validate:1.1",
            "urn:ietf:params:netconf:capability:startup:1.0",
            "urn:ietf:params:netconf:capability:xpath:1.0",
            "urn:ietf:params:netconf:capability:with-defaults:1.0?basic-mode=explicit&also-supported=report-all,trim",
            "urn:ietf:params:netconf:capability:notification:1.0",
            "urn:ietf:params:netconf:capability:interleave:1.0",
            "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring?module=ietf-netconf-monitoring",
            "urn:example:sim:interfaces?module=example-sim-interfaces&revision=2024-05-01",
            "urn:example:sim:system?module=example-sim-system&revision=2024-05-01",
            "urn:example:sim:types?module=example-sim-types&revision=2024-05-01",
        ):
            self.assertIn(uri, capabilities)
        self.assertEqual(client.hello.findtext("nc:session-id", namespaces=NS), str(client.session_id))
        self.assertTrue(client.chunked)

    def test_base_1_0_device(self):
        """A base:1.0-only device frames with ]]>]]> and offers the 1.0 variants."""
        client = self.client(offer_base_1_1=False)
        capabilities = [c.text for c in client.hello.iterfind("nc:capabilities/nc:capability", namespaces=NS)]
        self.assertNotIn(xml.BASE_1_1, capabilities)
        self.assertIn("urn:ietf:params:netconf:capability:confirmed-commit:1.0", capabilities)
        self.assertIn("urn:ietf:params:netconf:capability:validate:1.0", capabilities)
        self.assertFalse(client.chunked)
        self.assertEqual(hostname(client), "sim-device")

    def test_base_1_0_manager(self):
        """A manager that offers only base:1.0 is answered with end-of-message framing."""
        client = self.client(base_1_1=False)
        self.assertFalse(client.chunked)
        self.assertEqual(hostname(client), "sim-device")

    def test_get_and_close_session(self):
        """get returns the file's data; close-session answers ok and hangs up."""
        client = self.client()
        reply = client.rpc("<get/>")
        self.assertEqual(reply.get("message-id"), "1")
        self.assertEqual(reply.findtext("nc:data/sys:system/sys:hostname", namespaces=NS), "sim-device")
        self.assertEqual(len(reply.findall("nc:data/if:interfaces/if:interface", namespaces=NS)), 12)
        self.assertTrue(ok(client.rpc("<close-session/>")))
        self.assertTrue(client.transport.disconnecting)
        client.send(b'<rpc xmlns="%s" message-id="9"><get/></rpc>' % NC.encode())
        self.assertEqual(client.receive(), [])

    def test_datastore_api(self):
        """Other code uses Datastore.elements and select() for running."""
        self.assertEqual([etree.QName(e).localname for e in self.datastore.elements], ["system", "interfaces"])
        flt = etree.fromstring(f'<filter xmlns="{NC}"><system xmlns="{SYS}"/></filter>')
        (selected,) = self.datastore.select(flt)
        self.assertEqual(selected.tag, f"{{{SYS}}}system")
        self.assertEqual(len(self.datastore.select(None)), 2)

    def test_reply_echoes_every_rpc_attribute(self):
        """RFC 6241 §4.2: the reply carries all attributes of <rpc>, so managers can correlate."""
        client = self.client()
        reply = client.rpc("<get/>", attributes='message-id="101" xmlns:ex="urn:example:x" ex:user-id="fred" flag="y"')
        self.assertEqual(reply.get("message-id"), "101")
        self.assertEqual(reply.get("{urn:example:x}user-id"), "fred")
        self.assertEqual(reply.get("flag"), "y")

    def test_missing_message_id(self):
        """An rpc without message-id gets missing-attribute, not silence."""
        client = self.client()
        e = error(client.rpc("<get/>", attributes=""))
        self.assertEqual((e.type, e.tag), ("rpc", "missing-attribute"))
        self.assertEqual(e.info["bad-attribute"], "message-id")

    def test_unknown_operation(self):
        """Anything not implemented is refused with operation-not-supported."""
        client = self.client()
        self.assertEqual(error(client.rpc("<frobnicate/>")).tag, "operation-not-supported")
        self.assertEqual(error(client.rpc('<restart xmlns="urn:example:sim:system"/>')).tag, "operation-not-supported")

    def test_unknown_parameter(self):
        """A misspelt parameter is reported, so an action's bug is visible."""
        client = self.client()
        e = error(client.rpc("<get-config><source><running/></source><fliter/></get-config>"))
        self.assertEqual((e.tag, e.info["bad-element"]), ("unknown-element", "fliter"))

    def test_malformed_message_base_1_1(self):
        """On base:1.1, bad XML gets malformed-message and the session goes on."""
        client = self.client()
        client.send(b"<rpc xmlns='urn:ietf:params:xml:ns:netconf:base:1.0' message-id='1'><get>")
        reply = client.reply()
        self.assertIsNone(reply.get("message-id"))
        self.assertEqual((error(reply).type, error(reply).tag), ("rpc", "malformed-message"))
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(hostname(client), "sim-device")

    def test_not_an_rpc_base_1_1(self):
        """A well-formed message that is not an <rpc> is malformed-message too."""
        client = self.client()
        client.send(f'<hello xmlns="{NC}"/>'.encode())
        self.assertEqual(error(client.reply()).tag, "malformed-message")
        self.assertFalse(client.transport.disconnecting)

    def test_malformed_message_base_1_0(self):
        """malformed-message must not go to base:1.0 peers: the session closes as before."""
        client = self.client(base_1_1=False)
        client.send(b"<rpc><get>")
        self.assertEqual(client.receive(), [])
        self.assertTrue(client.transport.disconnecting)


class RetrievalTests(ServerTestCase):
    """get and get-config with every source and both filter types."""

    def test_get_includes_monitoring_schemas(self):
        """A manager lists every module from /netconf-state/schemas to download it."""
        client = self.client()
        reply = client.rpc(f'<get><filter type="subtree"><netconf-state xmlns="{MONITORING_NS}"><schemas/></netconf-state></filter></get>')
        data = reply.find("nc:data", namespaces=NS)
        (state,) = list(data)
        self.assertEqual([etree.QName(c).localname for c in state], ["schemas"])
        schemas = {
            s.findtext("ncm:identifier", namespaces=NS): (
                s.findtext("ncm:version", namespaces=NS), s.findtext("ncm:format", namespaces=NS),
                s.findtext("ncm:namespace", namespaces=NS), s.findtext("ncm:location", namespaces=NS),
            )
            for s in state.iterfind("ncm:schemas/ncm:schema", namespaces=NS)
        }
        self.assertEqual(schemas, {
            "example-sim-interfaces": ("2024-05-01", "yang", "urn:example:sim:interfaces", "NETCONF"),
            "example-sim-system": ("2024-05-01", "yang", "urn:example:sim:system", "NETCONF"),
            "example-sim-types": ("2024-05-01", "yang", "urn:example:sim:types", "NETCONF"),
            "o-ran-supervision": ("2022-12-05", "yang", "urn:o-ran:supervision:1.0", "NETCONF"),
        })

    def test_get_state_lists_sessions_and_streams(self):
        """get (unfiltered) adds netconf-state sessions and the NETCONF stream to running."""
        one, two = self.client(), self.client()
        reply = one.rpc("<get/>")
        ids = [e.text for e in reply.iterfind("nc:data/ncm:netconf-state/ncm:sessions/ncm:session/ncm:session-id", namespaces=NS)]
        self.assertEqual(ids, [str(one.session_id), str(two.session_id)])
        self.assertEqual(reply.findtext("nc:data/nm:netconf/nm:streams/nm:stream/nm:name", namespaces=NS), "NETCONF")
        self.assertIsNone(one.rpc("<get-config><source><running/></source></get-config>").find("nc:data/ncm:netconf-state", namespaces=NS))

    def test_get_config_sources(self):
        """running, candidate and startup can each be read; startup and candidate start as running."""
        client = self.client()
        for source in ("running", "candidate", "startup"):
            self.assertEqual(hostname(client, source), "sim-device")
        self.assertEqual(error(client.rpc("<get-config><source><other/></source></get-config>")).tag, "invalid-value")
        self.assertEqual(error(client.rpc("<get-config/>")).tag, "missing-element")

    def test_subtree_filter_top_level_and_content_match(self):
        """Top-level selection as before, and a content match picks one list entry."""
        client = self.client()
        reply = client.rpc(f'<get-config><source><running/></source><filter type="subtree"><system xmlns="{SYS}"/></filter></get-config>')
        self.assertEqual([etree.QName(e).localname for e in reply.find("nc:data", namespaces=NS)], ["system"])
        reply = client.rpc(
            f'<get-config><source><running/></source><filter type="subtree"><interfaces xmlns="{IF}">'
            "<interface><name>eth3</name><description/></interface></interfaces></filter></get-config>"
        )
        (entry,) = reply.iterfind("nc:data/if:interfaces/if:interface", namespaces=NS)
        self.assertEqual([etree.QName(c).localname for c in entry], ["name", "description"])
        self.assertEqual(entry.findtext("if:description", namespaces=NS), "uplink 3 to core switch")

    def test_empty_filter_selects_nothing(self):
        """RFC 6241 §6.4.2: an empty filter selects nothing."""
        client = self.client()
        reply = client.rpc('<get-config><source><running/></source><filter type="subtree"/></get-config>')
        self.assertEqual(len(reply.find("nc:data", namespaces=NS)), 0)

    def test_xpath_filter(self):
        """An XPath filter with prefixes from the filter's namespaces selects nodes and their ancestors."""
        client = self.client()
        reply = client.rpc(f'<get-config><source><running/></source><filter type="xpath" xmlns:s="{SYS}" select="/s:system"/></get-config>')
        self.assertEqual([etree.QName(e).localname for e in reply.find("nc:data", namespaces=NS)], ["system"])
        reply = client.rpc(
            f'<get><filter type="xpath" xmlns:i="{IF}" select="/i:interfaces/i:interface[i:name=\'eth7\']/i:description"/></get>'
        )
        (entry,) = reply.iterfind("nc:data/if:interfaces/if:interface", namespaces=NS)
        self.assertEqual([etree.QName(c).localname for c in entry], ["name", "description"])
        self.assertEqual(entry.findtext("if:name", namespaces=NS), "eth7")

    def test_xpath_filter_errors(self):
        """A bad expression or an unknown prefix is invalid-value; a missing select is missing-attribute."""
        client = self.client()
        self.assertEqual(error(client.rpc('<get><filter type="xpath" select="/x:system"/></get>')).tag, "invalid-value")
        self.assertEqual(error(client.rpc('<get><filter type="xpath" select="///"/></get>')).tag, "invalid-value")
        self.assertEqual(error(client.rpc('<get><filter type="xpath"/></get>')).tag, "missing-attribute")
        self.assertEqual(error(client.rpc('<get><filter type="regex"/></get>')).tag, "bad-attribute")

    def test_with_defaults(self):
        """with-defaults is accepted in the advertised modes and refused otherwise."""
        client = self.client()
        wd = "urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults"
        for mode in ("explicit", "report-all", "trim"):
            reply = client.rpc(f'<get-config><source><running/></source><with-defaults xmlns="{wd}">{mode}</with-defaults></get-config>')
            self.assertIsNotNone(reply.find("nc:data/sys:system", namespaces=NS))
        e = error(client.rpc(f'<get><with-defaults xmlns="{wd}">report-all-tagged</with-defaults></get>'))
        self.assertEqual(e.tag, "invalid-value")


class EditConfigTests(ServerTestCase):
    """edit-config's operations and errors, on running and candidate."""

    def edit(self, client: Client, config: str, target: str = "running", extra: str = "") -> etree._Element:
        return client.rpc(
            f'<edit-config xmlns:nc="{NC}"><target><{target}/></target>{extra}<config>{config}</config></edit-config>'
        )

    def test_merge_running(self):
        """A merge on running changes it at once (writable-running)."""
        client = self.client()
        self.assertTrue(ok(client.rpc(set_hostname("edge-7"))))
        self.assertEqual(hostname(client), "edge-7")
        self.assertEqual(hostname(client, "startup"), "sim-device")

    def test_candidate_edit_leaves_running(self):
        """An edit of the candidate is invisible in running until commit."""
        client = self.client()
        self.assertTrue(ok(client.rpc(set_hostname("cand", "candidate"))))
        self.assertEqual(hostname(client, "candidate"), "cand")
        self.assertEqual(hostname(client), "sim-device")

    def test_create_and_data_exists(self):
        """create adds a new list entry; creating it again is data-exists."""
        client = self.client()
        new = f'<interfaces xmlns="{IF}"><interface nc:operation="create"><name>eth99</name><mtu xmlns="urn:example:sim">9000</mtu></interface></interfaces>'
        self.assertTrue(ok(self.edit(client, new)))
        self.assertEqual(interface_names(client)[-1], "eth99")
        e = error(self.edit(client, new))
        self.assertEqual((e.type, e.tag), ("application", "data-exists"))
        self.assertIn("eth99", e.path)

    def test_delete_remove_and_data_missing(self):
        """delete of a missing entry is data-missing; remove of one is fine."""
        client = self.client()
        gone = f'<interfaces xmlns="{IF}"><interface nc:operation="delete"><name>eth0</name></interface></interfaces>'
        self.assertTrue(ok(self.edit(client, gone)))
        self.assertNotIn("eth0", interface_names(client))
        self.assertEqual(error(self.edit(client, gone)).tag, "data-missing")
        self.assertTrue(ok(self.edit(client, gone.replace("delete", "remove"))))
        self.assertTrue(ok(self.edit(client, f'<system xmlns="{SYS}" nc:operation="delete"/>')))
        self.assertIsNone(hostname(client))

    def test_replace_entry(self):
        """replace swaps one entry for the given content, in place."""
        client = self.client()
        self.assertTrue(ok(self.edit(client, f'<interfaces xmlns="{IF}"><interface nc:operation="replace"><name>eth2</name><description>new</description></interface></interfaces>')))
        reply = client.rpc("<get-config><source><running/></source></get-config>")
        (entry,) = [e for e in reply.iterfind("nc:data/if:interfaces/if:interface", namespaces=NS) if e.findtext("if:name", namespaces=NS) == "eth2"]
        self.assertEqual([etree.QName(c).localname for c in entry], ["name", "description"])
        self.assertEqual(interface_names(client)[2], "eth2")

    def test_merge_nested_leaf(self):
        """A merge reaches a leaf inside a keyed list entry."""
        client = self.client()
        self.assertTrue(ok(self.edit(client, f'<interfaces xmlns="{IF}"><interface><name>eth1</name><description>changed</description></interface></interfaces>')))
        reply = client.rpc("<get-config><source><running/></source></get-config>")
        self.assertEqual(reply.xpath("//if:interface[if:name='eth1']/if:description/text()", namespaces=NS), ["changed"])
        self.assertEqual(len(interface_names(client)), 12)

    def test_default_operation_none(self):
        """With default-operation none only explicit operations change anything."""
        client = self.client()
        config = f'<system xmlns="{SYS}"><hostname>ignored</hostname><location nc:operation="replace">moved</location></system>'
        self.assertTrue(ok(self.edit(client, config, extra="<default-operation>none</default-operation>")))
        reply = client.rpc("<get-config><source><running/></source></get-config>")
        self.assertEqual(reply.findtext("nc:data/sys:system/sys:hostname", namespaces=NS), "sim-device")
        self.assertEqual(reply.findtext("nc:data/sys:system/sys:location", namespaces=NS), "moved")

    def test_default_operation_replace(self):
        """default-operation replace makes <config> the whole datastore."""
        client = self.client()
        self.assertTrue(ok(self.edit(client, f'<system xmlns="{SYS}"><hostname>only</hostname></system>', extra="<default-operation>replace</default-operation>")))
        reply = client.rpc("<get-config><source><running/></source></get-config>")
        (system,) = reply.find("nc:data", namespaces=NS)
        self.assertEqual([etree.QName(c).localname for c in system], ["hostname"])

    def test_bad_options(self):
        """Unknown operation and option values are refused; nothing changes."""
        client = self.client()
        e = error(self.edit(client, f'<system xmlns="{SYS}" nc:operation="upsert"/>'))
        self.assertEqual((e.tag, e.info["bad-attribute"]), ("bad-attribute", "operation"))
        self.assertEqual(error(self.edit(client, "", extra="<default-operation>merge-all</default-operation>")).tag, "invalid-value")
        self.assertEqual(error(client.rpc("<edit-config><target><running/></target></edit-config>")).tag, "missing-element")
        self.assertEqual(error(self.edit(client, "", target="startup")).tag, "operation-not-supported")
        self.assertEqual(hostname(client), "sim-device")

    def test_test_and_error_options(self):
        """test-option and error-option are accepted; test-only validates without changing."""
        client = self.client()
        extra = "<test-option>test-only</test-option><error-option>rollback-on-error</error-option>"
        self.assertTrue(ok(client.rpc(set_hostname("tested").replace("</target>", "</target>" + extra))))
        self.assertEqual(hostname(client), "sim-device")
        extra = "<test-option>set</test-option><error-option>continue-on-error</error-option>"
        self.assertTrue(ok(client.rpc(set_hostname("set").replace("</target>", "</target>" + extra))))
        self.assertEqual(hostname(client), "set")

    def test_invalid_content_is_refused(self):
        """The device validates: an <invalid> element fails with invalid-value and changes nothing."""
        client = self.client()
        e = error(self.edit(client, f'<system xmlns="{SYS}"><invalid>1</invalid></system>'))
        self.assertEqual(e.tag, "invalid-value")
        self.assertIsNotNone(e.path)
        reply = client.rpc("<get-config><source><running/></source></get-config>")
        self.assertIsNone(reply.find(".//sys:invalid", namespaces=NS))


class LockTests(ServerTestCase):
    """Locks belong to sessions and are shared by all sessions of a device."""

    def test_lock_denied_to_other_session(self):
        """A second session's lock is lock-denied naming the holder; its edits are in-use."""
        one, two = self.client(), self.client()
        self.assertTrue(ok(one.rpc("<lock><target><running/></target></lock>")))
        e = error(two.rpc("<lock><target><running/></target></lock>"))
        self.assertEqual(e.tag, "lock-denied")
        self.assertEqual(e.info["session-id"], str(one.session_id))
        self.assertEqual(error(two.rpc(set_hostname("two"))).tag, "in-use")
        self.assertTrue(ok(one.rpc(set_hostname("one"))))
        self.assertEqual(error(one.rpc("<lock><target><running/></target></lock>")).tag, "lock-denied")
        self.assertEqual(error(two.rpc("<unlock><target><running/></target></unlock>")).tag, "operation-failed")
        self.assertTrue(ok(one.rpc("<unlock><target><running/></target></unlock>")))
        self.assertTrue(ok(two.rpc("<lock><target><running/></target></lock>")))
        self.assertTrue(ok(one.rpc("<lock><target><candidate/></target></lock>")))

    def test_locks_per_datastore_in_state(self):
        """/netconf-state/datastores shows who holds which lock."""
        one = self.client()
        one.rpc("<lock><target><startup/></target></lock>")
        reply = one.rpc("<get/>")
        holder = reply.xpath("//ncm:datastore[ncm:name='startup']/ncm:locks/ncm:global-lock/ncm:locked-by-session/text()", namespaces=NS)
        self.assertEqual(holder, [str(one.session_id)])
        self.assertEqual(reply.xpath("//ncm:datastore[ncm:name='running']/ncm:locks", namespaces=NS), [])

    def test_locks_released_when_session_ends(self):
        """A session that hangs up does not keep the device locked."""
        one, two = self.client(), self.client()
        one.rpc("<lock><target><running/></target></lock>")
        one.rpc("<lock><target><candidate/></target></lock>")
        one.rpc(set_hostname("uncommitted", "candidate"))
        one.hang_up()
        self.assertTrue(ok(two.rpc("<lock><target><running/></target></lock>")))
        # RFC 6241 §8.3.5.2: releasing the candidate lock discards its changes.
        self.assertEqual(hostname(two, "candidate"), "sim-device")
        self.assertTrue(ok(two.rpc("<lock><target><candidate/></target></lock>")))

    def test_modified_candidate_cannot_be_locked(self):
        """RFC 6241 §8.3.5.1: a candidate with uncommitted changes is lock-denied (session-id 0)."""
        one, two = self.client(), self.client()
        one.rpc(set_hostname("dirty", "candidate"))
        e = error(two.rpc("<lock><target><candidate/></target></lock>"))
        self.assertEqual((e.tag, e.info["session-id"]), ("lock-denied", "0"))
        self.assertEqual(error(two.rpc("<lock><target><url/></target></lock>")).tag, "operation-not-supported")


class CommitTests(ServerTestCase):
    """commit, confirmed commit on the injected clock, cancel-commit, discard-changes."""

    def test_commit(self):
        """commit copies the candidate to running."""
        client = self.client()
        client.rpc(set_hostname("committed", "candidate"))
        self.assertTrue(ok(client.rpc("<commit/>")))
        self.assertEqual(hostname(client), "committed")

    def test_commit_refused_when_locked_or_invalid(self):
        """Another session's lock on running is in-use; an invalid candidate is not committed."""
        one, two = self.client(), self.client()
        one.rpc("<lock><target><running/></target></lock>")
        two.rpc(set_hostname("x", "candidate"))
        self.assertEqual(error(two.rpc("<commit/>")).tag, "in-use")
        one.rpc("<unlock><target><running/></target></unlock>")
        two.rpc(f'<edit-config><target><candidate/></target><test-option>set</test-option><config><system xmlns="{SYS}"><invalid/></system></config></edit-config>')
        self.assertEqual(error(two.rpc("<commit/>")).tag, "invalid-value")
        self.assertEqual(hostname(two), "sim-device")

    def test_confirmed_commit_rolls_back_on_timeout(self):
        """Without a confirming commit, running returns to what it was after confirm-timeout."""
        client = self.client()
        client.rpc(set_hostname("trial", "candidate"))
        self.assertTrue(ok(client.rpc("<commit><confirmed/><confirm-timeout>30</confirm-timeout></commit>")))
        self.assertEqual(hostname(client), "trial")
        self.clock.advance(29)
        self.assertEqual(hostname(client), "trial")
        self.clock.advance(1)
        self.assertEqual(hostname(client), "sim-device")
        self.assertEqual(hostname(client, "candidate"), "sim-device")

    def test_confirmed_commit_default_timeout(self):
        """The default confirm-timeout is 600 seconds."""
        client = self.client()
        client.rpc(set_hostname("trial", "candidate"))
        client.rpc("<commit><confirmed/></commit>")
        self.clock.advance(599)
        self.assertEqual(hostname(client), "trial")
        self.clock.advance(1)
        self.assertEqual(hostname(client), "sim-device")

    def test_confirming_commit_keeps_change(self):
        """A confirming commit before the timeout makes the change permanent."""
        client = self.client()
        client.rpc(set_hostname("kept", "candidate"))
        client.rpc("<commit><confirmed/><confirm-timeout>30</confirm-timeout></commit>")
        self.clock.advance(10)
        self.assertTrue(ok(client.rpc("<commit/>")))
        self.clock.advance(1000)
        self.assertEqual(hostname(client), "kept")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_commit(self):
        """cancel-commit rolls back at once; without a pending commit it fails."""
        client = self.client()
        self.assertEqual(error(client.rpc("<cancel-commit/>")).tag, "operation-failed")
        client.rpc(set_hostname("cancelled", "candidate"))
        client.rpc("<commit><confirmed/></commit>")
        self.assertTrue(ok(client.rpc("<cancel-commit/>")))
        self.assertEqual(hostname(client), "sim-device")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_confirmed_commit_rolled_back_when_session_ends(self):
        """RFC 6241 §8.4.1: the session that issued a confirmed commit (no persist) ends: roll back."""
        one, two = self.client(), self.client()
        one.rpc(set_hostname("lost", "candidate"))
        one.rpc("<commit><confirmed/></commit>")
        self.assertEqual(error(two.rpc("<commit/>")).tag, "in-use")
        one.hang_up()
        self.assertEqual(hostname(two), "sim-device")

    def test_persistent_confirmed_commit(self):
        """With persist, the commit outlives its session and is confirmed by persist-id."""
        one, two = self.client(), self.client()
        one.rpc(set_hostname("persisted", "candidate"))
        self.assertTrue(ok(one.rpc("<commit><confirmed/><persist>abc</persist></commit>")))
        one.hang_up()
        self.assertEqual(hostname(two), "persisted")
        self.assertEqual(error(two.rpc("<commit/>")).tag, "invalid-value")
        self.assertEqual(error(two.rpc("<commit><persist-id>wrong</persist-id></commit>")).tag, "invalid-value")
        self.assertTrue(ok(two.rpc("<commit><persist-id>abc</persist-id></commit>")))
        self.clock.advance(1000)
        self.assertEqual(hostname(two), "persisted")

    def test_bad_confirm_timeout(self):
        """A confirm-timeout that is not a positive integer is invalid-value."""
        client = self.client()
        self.assertEqual(error(client.rpc("<commit><confirmed/><confirm-timeout>soon</confirm-timeout></commit>")).tag, "invalid-value")

    def test_discard_changes(self):
        """discard-changes resets the candidate to running."""
        client = self.client()
        client.rpc(set_hostname("discarded", "candidate"))
        self.assertTrue(ok(client.rpc("<discard-changes/>")))
        self.assertEqual(hostname(client, "candidate"), "sim-device")

    def test_candidate_follows_running_when_unmodified(self):
        """An untouched candidate follows edits of running, so a later commit does not undo them."""
        client = self.client()
        client.rpc(set_hostname("direct"))
        self.assertEqual(hostname(client, "candidate"), "direct")
        client.rpc("<commit/>")
        self.assertEqual(hostname(client), "direct")


class OtherOperationTests(ServerTestCase):
    """validate, copy-config, delete-config, get-schema, kill-session."""

    def test_validate(self):
        """validate accepts good sources and reports an <invalid> element anywhere."""
        client = self.client()
        for source in ("running", "candidate", "startup"):
            self.assertTrue(ok(client.rpc(f"<validate><source><{source}/></source></validate>")))
        self.assertTrue(ok(client.rpc(f'<validate><source><config><system xmlns="{SYS}"/></config></source></validate>')))
        e = error(client.rpc(f'<validate><source><config><system xmlns="{SYS}"><ntp><invalid/></ntp></system></config></source></validate>'))
        self.assertEqual(e.tag, "invalid-value")
        self.assertIn("invalid", e.path)

    def test_copy_config(self):
        """copy-config copies between datastores or from inline <config>."""
        client = self.client()
        client.rpc(set_hostname("saved"))
        self.assertTrue(ok(client.rpc("<copy-config><target><startup/></target><source><running/></source></copy-config>")))
        self.assertEqual(hostname(client, "startup"), "saved")
        config = f'<config><system xmlns="{SYS}"><hostname>inline</hostname></system></config>'
        self.assertTrue(ok(client.rpc(f"<copy-config><target><candidate/></target><source>{config}</source></copy-config>")))
        self.assertEqual(hostname(client, "candidate"), "inline")
        self.assertEqual(interface_names(client, "candidate"), [])
        self.assertTrue(ok(client.rpc(f"<copy-config><target><running/></target><source>{config}</source></copy-config>")))
        self.assertEqual(hostname(client), "inline")

    def test_copy_config_errors(self):
        """Same source and target is invalid-value; a target locked by another session is in-use."""
        one, two = self.client(), self.client()
        self.assertEqual(error(one.rpc("<copy-config><target><running/></target><source><running/></source></copy-config>")).tag, "invalid-value")
        one.rpc("<lock><target><startup/></target></lock>")
        self.assertEqual(error(two.rpc("<copy-config><target><startup/></target><source><running/></source></copy-config>")).tag, "in-use")

    def test_delete_config(self):
        """Only startup can be deleted; running cannot."""
        client = self.client()
        self.assertTrue(ok(client.rpc("<delete-config><target><startup/></target></delete-config>")))
        self.assertEqual(len(client.rpc("<get-config><source><startup/></source></get-config>").find("nc:data", namespaces=NS)), 0)
        self.assertEqual(error(client.rpc("<delete-config><target><running/></target></delete-config>")).tag, "operation-not-supported")
        self.assertEqual(hostname(client), "sim-device")

    def test_get_schema_of_shipped_module(self):
        """Every module in the hello can be downloaded, byte for byte."""
        client = self.client()
        for version in ("", "<version>2024-05-01</version>"):
            reply = client.rpc(
                f'<get-schema xmlns="{MONITORING_NS}"><identifier>example-sim-system</identifier>{version}<format>yang</format></get-schema>'
            )
            data = reply.find(f"{{{MONITORING_NS}}}data")
            self.assertEqual(data.text, (YANG / "example-sim-system@2024-05-01.yang").read_text())

    def test_get_schema_errors(self):
        """An unknown module, version or format is invalid-value."""
        client = self.client()
        for body in (
            "<identifier>ietf-nothing</identifier>",
            "<identifier>example-sim-system</identifier><version>1999-01-01</version>",
            "<identifier>example-sim-system</identifier><format>yin</format>",
        ):
            e = error(client.rpc(f'<get-schema xmlns="{MONITORING_NS}">{body}</get-schema>'))
            self.assertEqual(e.tag, "invalid-value")
        self.assertEqual(error(client.rpc(f'<get-schema xmlns="{MONITORING_NS}"/>')).tag, "missing-element")

    def test_kill_session(self):
        """kill-session ends another session and frees its locks; not oneself, not a stranger."""
        one, two = self.client(), self.client()
        one.rpc("<lock><target><running/></target></lock>")
        self.assertEqual(error(two.rpc(f"<kill-session><session-id>{two.session_id}</session-id></kill-session>")).tag, "invalid-value")
        self.assertEqual(error(two.rpc("<kill-session><session-id>999999</session-id></kill-session>")).tag, "invalid-value")
        self.assertTrue(ok(two.rpc(f"<kill-session><session-id>{one.session_id}</session-id></kill-session>")))
        self.assertTrue(one.transport.disconnecting)
        self.assertTrue(ok(two.rpc("<lock><target><running/></target></lock>")))
        one.hang_up()


class NotificationTests(ServerTestCase):
    """RFC 5277 subscriptions: live events, RFC 6470 events, filters and replay."""

    def test_pushed_notification_reaches_subscribers_only(self):
        """Datastore.notify goes to subscribed sessions, not to the others."""
        subscribed, other = self.client(), self.client()
        self.assertTrue(ok(subscribed.subscribe()))
        self.datastore.notify(etree.fromstring('<alarm xmlns="urn:example:alarms"><text>fan</text></alarm>'))
        (notification,) = subscribed.take_notifications()
        self.assertEqual(notification.findtext("n:eventTime", namespaces=NS), format_time(START))
        self.assertEqual(event(notification).tag, "{urn:example:alarms}alarm")
        self.assertEqual(other.take_notifications(), [])

    def test_config_change_notification(self):
        """Every change of running is announced: edit-config, commit, copy-config, rollback."""
        watcher, editor = self.client(), self.client()
        watcher.subscribe()
        editor.rpc(set_hostname("a"))
        (change,) = watcher.take_notifications()
        change = event(change)
        self.assertEqual(change.tag, f"{{{NETCONF_NOTIFICATIONS_NS}}}netconf-config-change")
        self.assertEqual(change.findtext("ncn:changed-by/ncn:session-id", namespaces=NS), str(editor.session_id))
        self.assertEqual(change.findtext("ncn:datastore", namespaces=NS), "running")
        target = change.find("ncn:edit/ncn:target", namespaces=NS)
        self.assertEqual(target.text, "/sys:system/sys:hostname")
        self.assertEqual(target.nsmap["sys"], SYS)
        editor.rpc(set_hostname("b", "candidate"))
        self.assertEqual(watcher.take_notifications(), [])
        editor.rpc("<commit><confirmed/><confirm-timeout>5</confirm-timeout></commit>")
        self.assertEqual(len(watcher.take_notifications()), 1)
        self.clock.advance(5)
        (rollback,) = watcher.take_notifications()
        self.assertIsNotNone(event(rollback).find("ncn:changed-by/ncn:server", namespaces=NS))
        editor.rpc(f'<copy-config><target><running/></target><source><config><system xmlns="{SYS}"/></config></source></copy-config>')
        self.assertEqual(len(watcher.take_notifications()), 1)

    def test_own_change_notified_after_reply(self):
        """A session's own change is announced to it after the rpc-reply, not before."""
        client = self.client()
        client.subscribe()
        client.send(f'<rpc xmlns="{NC}" message-id="7">{set_hostname("own")}</rpc>'.encode())
        reply, notification = client.receive()
        self.assertEqual(reply.tag, xml.qname("rpc-reply"))
        self.assertEqual(notification.tag, xml.qname("notification", NOTIFICATION_NS))

    def test_session_start_and_end(self):
        """Other sessions starting and ending are announced, with why they ended."""
        watcher = self.client()
        watcher.subscribe()
        other = self.client()
        (start,) = watcher.take_notifications()
        self.assertEqual(event(start).tag, f"{{{NETCONF_NOTIFICATIONS_NS}}}netconf-session-start")
        self.assertEqual(event(start).findtext("ncn:session-id", namespaces=NS), str(other.session_id))
        self.assertEqual(event(start).findtext("ncn:username", namespaces=NS), "admin")
        other.rpc("<close-session/>")
        other.hang_up()
        (end,) = watcher.take_notifications()
        self.assertEqual(event(end).findtext("ncn:termination-reason", namespaces=NS), "closed")
        victim = self.client()
        watcher.take_notifications()
        watcher.rpc(f"<kill-session><session-id>{victim.session_id}</session-id></kill-session>")
        (end,) = watcher.take_notifications()
        self.assertEqual(event(end).findtext("ncn:termination-reason", namespaces=NS), "killed")
        self.assertEqual(event(end).findtext("ncn:killed-by", namespaces=NS), str(watcher.session_id))

    def test_username_from_ssh_avatar(self):
        """Where the SSH avatar records its user, events name that user instead of admin."""
        watcher = self.client()
        watcher.subscribe()
        protocol = NetconfServerProtocol(self.datastore)
        transport = StringTransport()
        transport.session = type("Session", (), {"avatar": type("Avatar", (), {"username": b"operator"})()})()
        protocol.makeConnection(transport)
        (start,) = watcher.take_notifications()
        self.assertEqual(event(start).findtext("ncn:username", namespaces=NS), "operator")

    def test_subscription_filter(self):
        """A subscription's subtree filter keeps only matching events."""
        client = self.client()
        client.subscribe(f'<filter type="subtree"><netconf-config-change xmlns="{NETCONF_NOTIFICATIONS_NS}"/></filter>')
        self.client()  # a session start: filtered out
        self.datastore.notify(etree.fromstring('<alarm xmlns="urn:example:alarms"/>'))
        client.rpc(set_hostname("filtered"))
        (only,) = client.take_notifications()
        self.assertEqual(etree.QName(event(only)).localname, "netconf-config-change")

    def test_subscription_errors(self):
        """Unknown stream, second subscription, future startTime, stopTime alone are refused."""
        client = self.client()
        self.assertEqual(error(client.subscribe("<stream>SYSLOG</stream>")).tag, "invalid-value")
        self.assertEqual(error(client.subscribe(f"<startTime>{format_time(START + 60)}</startTime>")).tag, "invalid-value")
        self.assertEqual(error(client.subscribe(f"<stopTime>{format_time(START)}</stopTime>")).tag, "missing-element")
        self.assertEqual(error(client.subscribe("<startTime>yesterday</startTime>")).tag, "invalid-value")
        self.assertTrue(ok(client.subscribe("<stream>NETCONF</stream>")))
        self.assertEqual(error(client.subscribe()).tag, "in-use")
        self.assertIsNotNone(client.rpc("<get/>").find("nc:data", namespaces=NS))  # interleave: rpcs go on

    def test_replay_from_start_time(self):
        """startTime replays logged events from then, then replayComplete, then live ones."""
        for index in range(3):
            self.datastore.notify(etree.fromstring(f'<tick xmlns="urn:example:t"><n>{index}</n></tick>'))
            self.clock.advance(10)
        client = self.client()
        self.assertTrue(ok(client.subscribe(f"<startTime>{format_time(START + 5)}</startTime>")))
        replayed = client.take_notifications()
        self.assertEqual([event(n).findtext("{urn:example:t}n") for n in replayed[:2]], ["1", "2"])
        self.assertEqual(replayed[0].findtext("n:eventTime", namespaces=NS), format_time(START + 10))
        # The log also holds this session's own start.
        self.assertEqual(etree.QName(event(replayed[2])).localname, "netconf-session-start")
        self.assertEqual(event(replayed[3]).tag, f"{{{NETMOD_NOTIFICATION_NS}}}replayComplete")
        self.assertEqual(len(replayed), 4)
        self.datastore.notify(etree.fromstring('<tick xmlns="urn:example:t"><n>live</n></tick>'))
        (live,) = client.take_notifications()
        self.assertEqual(event(live).findtext("{urn:example:t}n"), "live")

    def test_replay_with_stop_time(self):
        """stopTime bounds the replay and ends the subscription with notificationComplete."""
        for index in range(3):
            self.datastore.notify(etree.fromstring(f'<tick xmlns="urn:example:t"><n>{index}</n></tick>'))
            self.clock.advance(10)
        client = self.client()
        client.subscribe(f"<startTime>{format_time(START)}</startTime><stopTime>{format_time(START + 15)}</stopTime>")
        names = [etree.QName(event(n)).localname for n in client.take_notifications()]
        self.assertEqual(names, ["tick", "tick", "replayComplete", "notificationComplete"])
        self.datastore.notify(etree.fromstring('<tick xmlns="urn:example:t"/>'))
        self.assertEqual(client.take_notifications(), [])
        self.assertTrue(ok(client.subscribe()))  # the old one ended

    def test_future_stop_time(self):
        """A stopTime in the future ends the subscription when the clock gets there."""
        client = self.client()
        client.subscribe(f"<startTime>{format_time(START)}</startTime><stopTime>{format_time(START + 30)}</stopTime>")
        self.assertEqual([etree.QName(event(n)).localname for n in client.take_notifications()], ["netconf-session-start", "replayComplete"])
        self.clock.advance(10)
        self.datastore.notify(etree.fromstring('<tick xmlns="urn:example:t"/>'))
        self.assertEqual(len(client.take_notifications()), 1)
        self.clock.advance(20)
        self.assertEqual([etree.QName(event(n)).localname for n in client.take_notifications()], ["notificationComplete"])

    def test_replay_log_is_bounded(self):
        """Only the last 100 events are kept for replay."""
        for index in range(150):
            self.datastore.notify(etree.fromstring(f'<tick xmlns="urn:example:t"><n>{index}</n></tick>'))
        self.assertEqual(len(self.datastore.replay_log), 100)
        client = self.client()
        client.subscribe(f"<startTime>{format_time(0)}</startTime>")
        replayed = client.take_notifications()
        # The newest entry is this session's own start, so ticks 51-149 remain.
        self.assertEqual(event(replayed[0]).findtext("{urn:example:t}n"), "51")
        self.assertEqual(len(replayed), 101)


class HeartbeatTests(SynchronousTestCase):
    """``callhome-device --notify-every``: a steady stream of events, spread over the devices."""

    def test_each_device_raises_numbered_heartbeats_spread_over_the_interval(self) -> None:
        from callhome.simulator.cli import start_heartbeats
        from callhome.simulator.constants import SIMULATOR_NS

        clock = task.Clock()
        clock.advance(START)
        stores = [Datastore.from_file(clock=clock) for _ in range(4)]
        loops = start_heartbeats(clock, stores, 60.0)  # type: ignore[arg-type]
        for _ in range(3):
            clock.advance(15)  # device 0 starts at 0, device 1 at 15 s...: none has fired yet
        self.assertEqual([len(s.replay_log) for s in stores], [0, 0, 0, 0])
        clock.advance(15)  # 60 s: device 0's first beat
        self.assertEqual([len(s.replay_log) for s in stores], [1, 0, 0, 0])
        clock.pump([15] * 12)  # 240 s: device 0 four beats, devices 1-3 (started at 15-45 s) three
        self.assertEqual([len(s.replay_log) for s in stores], [4, 3, 3, 3])
        sequences = [e.findtext(f"{{{SIMULATOR_NS}}}sequence") for _, e in stores[0].replay_log]
        self.assertEqual(sequences, ["1", "2", "3", "4"])
        for loop in loops:
            loop.stop()
