"""
NetconfSession against a scripted device: StringTransport and task.Clock.
"""

from __future__ import annotations

from lxml import etree
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from callhome.netconf import operations, xml
from callhome.netconf.framing import ChunkedFramer, EndOfMessageFramer
from callhome.netconf.session import NetconfSession, RPCTimeout, SessionClosed

NS = xml.NETCONF_NS


def server_hello(capabilities=(xml.BASE_1_0, xml.BASE_1_1), session_id="7") -> bytes:
    caps = "".join(f"<capability>{c}</capability>" for c in capabilities)
    sid = f"<session-id>{session_id}</session-id>" if session_id is not None else ""
    return EndOfMessageFramer.encode(
        f'<hello xmlns="{NS}"><capabilities>{caps}</capabilities>{sid}</hello>'.encode()
    )


def reply(message_id: str, body: str = "<ok/>") -> bytes:
    return f'<rpc-reply xmlns="{NS}" message-id="{message_id}">{body}</rpc-reply>'.encode()


class SessionTestCase(SynchronousTestCase):
    """Shared set-up: a session on a StringTransport with a manual clock."""

    def make_session(self, **kwargs) -> NetconfSession:
        self.clock = task.Clock()
        self.transport = StringTransport()
        session = NetconfSession(self.clock, label="dev", **kwargs)
        session.makeConnection(self.transport)
        self.addCleanup(self.flushLoggedErrors)
        return session

    def sent_messages(self, framer) -> list[etree._Element]:
        """Every message the session wrote since the last call, parsed."""
        data = self.transport.value()
        self.transport.clear()
        return [etree.fromstring(m) for m in framer.feed(data)]

    def established(self, **kwargs) -> NetconfSession:
        session = self.make_session(**kwargs)
        session.dataReceived(server_hello())
        self.transport.clear()
        return session

    def lose(self, session: NetconfSession) -> None:
        session.connectionLost(Failure(Exception("gone")))


class HelloTests(SessionTestCase):
    """The hello exchange and the choice of framing."""

    def test_sends_hello_at_once_with_both_bases(self):
        """Both sides send their hello without waiting (RFC 6241 §8.1)."""
        self.make_session()
        (hello,) = self.sent_messages(EndOfMessageFramer())
        caps = [c.text for c in hello.iter(f"{{{NS}}}capability")]
        self.assertEqual(caps, [xml.BASE_1_0, xml.BASE_1_1])
        self.assertIsNone(hello.find(f"{{{NS}}}session-id"))

    def test_offer_base_1_0_only(self):
        """The config can turn base:1.1 off for devices with broken chunking."""
        self.make_session(offer_base_1_1=False)
        (hello,) = self.sent_messages(EndOfMessageFramer())
        self.assertEqual([c.text for c in hello.iter(f"{{{NS}}}capability")], [xml.BASE_1_0])

    def test_records_capabilities_and_session_id(self):
        """The device's capabilities and session-id are kept for actions and status."""
        session = self.make_session()
        hellos = []
        session.hello_received.addCallback(hellos.append)
        session.dataReceived(server_hello(session_id="42"))
        self.assertEqual(session.session_id, "42")
        self.assertIn(xml.BASE_1_1, session.capabilities)
        self.assertEqual(len(hellos), 1)

    def test_chunked_when_both_offer_base_1_1(self):
        """After the hellos, both directions use chunked framing."""
        session = self.established()
        self.assertEqual(session.framing, "base:1.1")
        session.rpc(operations.get())
        self.assertTrue(self.transport.value().startswith(b"\n#"))

    def test_end_of_message_when_device_offers_only_base_1_0(self):
        """A base:1.0-only device keeps end-of-message framing."""
        session = self.make_session()
        session.dataReceived(server_hello(capabilities=(xml.BASE_1_0,)))
        self.transport.clear()
        self.assertEqual(session.framing, "base:1.0")
        session.rpc(operations.get())
        self.assertTrue(self.transport.value().endswith(b"]]>]]>"))

    def test_end_of_message_when_we_offer_only_base_1_0(self):
        """With base:1.1 disabled we stay on base:1.0 even if the device offers 1.1."""
        session = self.make_session(offer_base_1_1=False)
        session.dataReceived(server_hello())
        self.assertEqual(session.framing, "base:1.0")

    def test_device_offering_only_base_1_1_while_disabled_is_refused(self):
        """No common framing: close with a reason rather than talk past each other."""
        session = self.make_session(offer_base_1_1=False)
        session.dataReceived(server_hello(capabilities=(xml.BASE_1_1,)))
        self.assertIn("only base:1.1", session.close_reason)
        self.assertTrue(self.transport.disconnecting)

    def test_message_after_hello_in_same_read_is_chunked(self):
        """Bytes after the hello in one read go to the new framer, not lost."""
        session = self.make_session()
        d = None

        def on_hello(_):
            nonlocal d
            d = session.rpc(operations.get())

        session.hello_received.addCallback(on_hello)
        session.dataReceived(server_hello())
        results = []
        d.addCallback(results.append)
        # A reply following a second hello-like chunk in the same read.
        session.dataReceived(ChunkedFramer.encode(reply("1")))
        self.assertEqual(len(results), 1)

    def test_hello_and_reply_in_one_read_base_1_0(self):
        """base:1.0: a hello and a further message in one read are both handled."""
        session = self.make_session()
        notes = []
        session.on_notification = lambda root, raw: notes.append(raw)
        note = f'<notification xmlns="{xml.NOTIFICATION_NS}"><eventTime>2026-01-01T00:00:00Z</eventTime></notification>'.encode()
        session.dataReceived(server_hello(capabilities=(xml.BASE_1_0,)) + EndOfMessageFramer.encode(note))
        self.assertEqual(notes, [note])

    def test_hello_without_base_capability(self):
        """A hello with no base capability is not NETCONF: closed, reason given."""
        session = self.make_session()
        session.dataReceived(server_hello(capabilities=("urn:example:foo",)))
        self.assertIn("no NETCONF base capability", session.close_reason)
        self.assertTrue(self.transport.disconnecting)

    def test_hello_without_session_id(self):
        """RFC 6241 §8.1: a server hello must carry a session-id."""
        session = self.make_session()
        failures = []
        session.hello_received.addErrback(failures.append)
        session.dataReceived(server_hello(session_id=None))
        self.assertIn("no session-id", session.close_reason)
        self.lose(session)
        self.assertEqual(len(failures), 1)

    def test_second_hello_closes(self):
        """A hello sent twice is a protocol violation."""
        session = self.established()
        session.dataReceived(ChunkedFramer.encode(server_hello()[:-6]))
        self.assertIn("second hello", session.close_reason)

    def test_hello_timeout(self):
        """A device that never says hello is dropped after hello_timeout."""
        session = self.make_session(hello_timeout=5)
        self.clock.advance(4.9)
        self.assertIsNone(session.close_reason)
        self.clock.advance(0.2)
        self.assertIn("no hello", session.close_reason)
        self.assertTrue(self.transport.disconnecting)

    def test_hello_timeout_fails_hello_received_with_hello_timeout(self):
        """Who waits for the hello learns it never came (HelloTimeout), not just that the session closed."""
        from callhome.netconf.session import HelloTimeout

        session = self.make_session(hello_timeout=5)
        self.clock.advance(5)
        session.connectionLost(None)
        failure = self.failureResultOf(session.hello_received, HelloTimeout)
        self.assertIn("no hello", str(failure.value))

    def test_hello_cancels_timeout(self):
        """Once the hello is in, the hello timer must not fire."""
        session = self.established(hello_timeout=5)
        self.clock.advance(100)
        self.assertIsNone(session.close_reason)


class RPCTests(SessionTestCase):
    """rpc(): message-ids, replies, errors, timeouts, loss."""

    def test_reply_matched_by_message_id_out_of_order(self):
        """Replies are matched by message-id, whatever order they come in."""
        session = self.established()
        first, second = [], []
        session.rpc(operations.get()).addCallback(first.append)
        session.rpc(operations.get_config()).addCallback(second.append)
        sent = self.sent_messages(ChunkedFramer())
        self.assertEqual([m.get("message-id") for m in sent], ["1", "2"])
        session.dataReceived(ChunkedFramer.encode(reply("2", "<data><b/></data>")))
        session.dataReceived(ChunkedFramer.encode(reply("1", "<data><a/></data>")))
        self.assertEqual(first[0].data[0].tag, "{%s}a" % NS)
        self.assertEqual(second[0].data[0].tag, "{%s}b" % NS)
        self.assertIn(b'message-id="1"', first[0].raw)

    def test_rpc_error_becomes_exception_with_fields(self):
        """An rpc-error reaches the caller with every field the device gave."""
        session = self.established()
        failures = []
        session.rpc(operations.get()).addErrback(failures.append)
        body = (
            "<rpc-error><error-type>application</error-type><error-tag>invalid-value</error-tag>"
            "<error-severity>error</error-severity><error-app-tag>too-big</error-app-tag>"
            "<error-path>/a/b</error-path><error-message>bad value</error-message>"
            "<error-info><bad-element>mtu</bad-element></error-info></rpc-error>"
        )
        session.dataReceived(ChunkedFramer.encode(reply("1", body)))
        error = failures[0].value
        self.assertIsInstance(error, xml.RPCError)
        self.assertEqual(
            (error.type, error.tag, error.severity, error.app_tag, error.path, error.message, error.info),
            ("application", "invalid-value", "error", "too-big", "/a/b", "bad value", {"bad-element": "mtu"}),
        )
        self.assertIsNone(session.close_reason, "an rpc-error is not a reason to drop the session")

    def test_warning_only_reply_succeeds(self):
        """Warnings do not fail an RPC; they are kept on the reply."""
        session = self.established()
        replies = []
        session.rpc(operations.get()).addCallback(replies.append)
        body = "<rpc-error><error-type>application</error-type><error-tag>x</error-tag><error-severity>warning</error-severity></rpc-error><ok/>"
        session.dataReceived(ChunkedFramer.encode(reply("1", body)))
        self.assertEqual(replies[0].warnings[0].severity, "warning")
        self.assertTrue(replies[0].ok)

    def test_timeout(self):
        """A device that never answers fails the RPC after its timeout."""
        session = self.established(rpc_timeout=10)
        failures = []
        session.rpc(operations.get()).addErrback(failures.append)
        self.clock.advance(9)
        self.assertEqual(failures, [])
        self.clock.advance(2)
        failures[0].trap(RPCTimeout)

    def test_per_call_timeout(self):
        """rpc(timeout=) overrides the session default."""
        session = self.established(rpc_timeout=100)
        failures = []
        session.rpc(operations.get(), timeout=1).addErrback(failures.append)
        self.clock.advance(1.5)
        failures[0].trap(RPCTimeout)

    def test_late_reply_after_timeout_is_dropped_not_fatal(self):
        """A reply to an RPC we gave up on is logged and ignored, session kept."""
        session = self.established(rpc_timeout=1)
        session.rpc(operations.get()).addErrback(lambda f: None)
        self.clock.advance(2)
        session.dataReceived(ChunkedFramer.encode(reply("1")))
        self.assertIsNone(session.close_reason)

    def test_cancel_abandons(self):
        """Cancelling an RPC frees its slot; a late reply is not an error."""
        session = self.established()
        d = session.rpc(operations.get())
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        d.cancel()
        session.dataReceived(ChunkedFramer.encode(reply("1")))
        self.assertIsNone(session.close_reason)

    def test_connection_loss_fails_every_pending_rpc(self):
        """Nothing waits forever: pending RPCs fail when the session drops."""
        session = self.established()
        failures = []
        for _ in range(3):
            session.rpc(operations.get()).addErrback(failures.append)
        self.lose(session)
        self.assertEqual(len(failures), 3)
        for f in failures:
            f.trap(SessionClosed)

    def test_rpc_after_close_fails_at_once(self):
        """An RPC on a closed session fails immediately."""
        session = self.established()
        self.lose(session)
        self.failureResultOf(session.rpc(operations.get()), SessionClosed)

    def test_rpc_before_hello_fails(self):
        """No RPC before the session is established."""
        session = self.make_session()
        self.failureResultOf(session.rpc(operations.get()), SessionClosed)

    def test_unknown_message_id_closes(self):
        """A reply to something we never asked is a broken or hostile device."""
        session = self.established()
        failures = []
        session.rpc(operations.get()).addErrback(failures.append)
        session.dataReceived(ChunkedFramer.encode(reply("99")))
        self.assertIn("unknown message-id", session.close_reason)
        self.lose(session)
        failures[0].trap(SessionClosed)

    def test_missing_message_id_closes(self):
        """A reply without a message-id cannot be matched: closed."""
        session = self.established()
        session.dataReceived(ChunkedFramer.encode(f'<rpc-reply xmlns="{NS}"><ok/></rpc-reply>'.encode()))
        self.assertIn("without a message-id", session.close_reason)

    def test_framing_error_closes_with_reason(self):
        """A malformed chunk header closes the session and says why."""
        session = self.established()
        session.dataReceived(b"\n#0\n")
        self.assertIn("framing error", session.close_reason)
        self.assertTrue(self.transport.disconnecting)

    def test_malformed_xml_closes(self):
        """A reply that is not well-formed XML closes the session."""
        session = self.established()
        session.dataReceived(ChunkedFramer.encode(b"<rpc-reply message-id='1'>"))
        self.assertIn("not well-formed", session.close_reason)

    def test_doctype_closes(self):
        """Hostile XML (a DTD) closes the session; nothing is expanded."""
        session = self.established()
        evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
        session.dataReceived(ChunkedFramer.encode(evil))
        self.assertIn("document type declarations", session.close_reason)

    def test_oversized_message_closes(self):
        """A message over DISCARD_FACTOR times max_message_size closes the session."""
        session = self.established(max_message_size=2048)
        session.dataReceived(b"\n#9000\n" + b"x" * 100)
        self.assertIn("exceeds 2048", session.close_reason)

    def test_oversized_reply_fails_its_rpc_and_the_session_goes_on(self):
        """A reply over max_message_size (within the discard limit) is dropped whole: its RPC fails, the next works."""
        from callhome.netconf.session import ReplyTooLarge

        session = self.established(max_message_size=2048)
        failures, replies = [], []
        session.rpc(operations.get()).addErrback(failures.append)
        big = reply("1", "<data>" + "x" * 5000 + "</data>")
        session.dataReceived(ChunkedFramer.encode(big))
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0].value, ReplyTooLarge)
        self.assertIn("exceeds max_message_size (2048)", str(failures[0].value))
        self.assertIsNone(session.close_reason)
        session.rpc(operations.get()).addCallback(replies.append)
        session.dataReceived(ChunkedFramer.encode(reply("2")))
        self.assertEqual(len(replies), 1)

    def test_earlier_replies_survive_a_later_bad_message(self):
        """What was received before a bad message is delivered, not lost."""
        session = self.established()
        replies, failures = [], []
        session.rpc(operations.get()).addCallback(replies.append)
        session.rpc(operations.get()).addErrback(failures.append)
        session.dataReceived(ChunkedFramer.encode(reply("1")) + b"\n#garbage")
        self.assertEqual(len(replies), 1)
        self.lose(session)
        failures[0].trap(SessionClosed)

    def test_notification_delivered(self):
        """Notifications go to the handler with the raw bytes."""
        seen = []
        session = self.established(on_notification=lambda root, raw: seen.append(root.tag))
        note = f'<notification xmlns="{xml.NOTIFICATION_NS}"><eventTime>t</eventTime></notification>'.encode()
        session.dataReceived(ChunkedFramer.encode(note))
        self.assertEqual(seen, ["{%s}notification" % xml.NOTIFICATION_NS])


class CloseTests(SessionTestCase):
    """close(): close-session, then disconnect, whatever the device does."""

    def test_close_sends_close_session_then_disconnects(self):
        """A polite close: <close-session>, wait for <ok/>, then disconnect."""
        session = self.established()
        session.close()
        (sent,) = self.sent_messages(ChunkedFramer())
        self.assertEqual(sent[0].tag, "{%s}close-session" % NS)
        self.assertFalse(self.transport.disconnecting)
        session.dataReceived(ChunkedFramer.encode(reply("1")))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(session.close_reason, "closed by manager")

    def test_close_disconnects_a_silent_device(self):
        """A device that never answers close-session is cut off after the timeout."""
        session = self.established()
        session.close(timeout=3)
        self.clock.advance(3.1)
        self.assertTrue(self.transport.disconnecting)

    def test_close_before_hello(self):
        """Closing before the hello just disconnects."""
        session = self.make_session()
        closed = session.close()
        self.assertTrue(self.transport.disconnecting)
        self.lose(session)
        self.assertEqual(self.successResultOf(closed), "closed by manager")


class LargeMessageTests(SessionTestCase):
    """Replies over STREAM_THRESHOLD are checked without building a tree."""

    def big_reply(self, message_id: str, extra: str = "") -> bytes:
        body = "<data>" + "<x><y>value</y></x>" * (xml.STREAM_THRESHOLD // 18 + 10) + "</data>" + extra
        return reply(message_id, body)

    def test_large_reply_scanned_and_data_parsed_on_demand(self):
        """A large reply arrives whole; its tree is built only when asked for."""
        session = self.established()
        replies = []
        session.rpc(operations.get()).addCallback(replies.append)
        raw = self.big_reply("1")
        self.assertGreater(len(raw), xml.STREAM_THRESHOLD)
        session.dataReceived(ChunkedFramer.encode(raw))
        (got,) = replies
        self.assertTrue(got.scanned)
        self.assertEqual(got.raw, raw)
        self.assertEqual(len(got.data), xml.STREAM_THRESHOLD // 18 + 10)

    def test_large_reply_with_rpc_error_is_parsed(self):
        """A large reply carrying an rpc-error still fails its RPC with the error."""
        session = self.established()
        failures = []
        session.rpc(operations.get()).addErrback(failures.append)
        error = "<rpc-error><error-type>application</error-type><error-tag>too-big</error-tag><error-severity>error</error-severity></rpc-error>"
        session.dataReceived(ChunkedFramer.encode(self.big_reply("1", error)))
        self.assertEqual(failures[0].value.tag, "too-big")

    def test_large_malformed_or_hostile_reply_closes(self):
        """The scan refuses what the full parser refuses."""
        for bad, reason in (
            (self.big_reply("1")[:-20], "not well-formed"),
            (b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "file:///etc/passwd">' + self.big_reply("1"), "document type"),
            (self.big_reply("1").replace(b"value", b"val\xffue", 1), "rejected message"),
        ):
            session = self.established()
            session.rpc(operations.get()).addErrback(lambda f: None)
            session.dataReceived(ChunkedFramer.encode(bad))
            self.assertIn(reason, session.close_reason)
