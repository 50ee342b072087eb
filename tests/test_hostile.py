"""
Devices that misbehave after login, in memory: each call ends with a
specific reason, the connection is really gone, and results saved before
the bad message stay.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from callhome.netconf.framing import ChunkedFramer
from callhome.simulator.netconf_server import NetconfServerProtocol
from tests.helpers import make_keys, InMemoryCall, device_factory, make_config, memory_manager, new_key, write_key


class AnswersOnceThen(NetconfServerProtocol):
    """Answers the first RPC properly, then sends C{bad} for the next."""

    bad = b""
    answered = 0

    def _rpc(self, message: bytes) -> None:
        self.answered += 1
        if self.answered == 1:
            super()._rpc(message)
        elif self.bad:
            self.transport.write(self.bad)


class Stalls(AnswersOnceThen):
    """Answers the first RPC, then never anything again."""


class GarbageFraming(AnswersOnceThen):
    bad = b"\n#99999999999\n"


class HostileXML(AnswersOnceThen):
    bad = ChunkedFramer.encode(
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="2">&e;</rpc-reply>'
    )


class UnknownMessageId(AnswersOnceThen):
    bad = ChunkedFramer.encode(
        b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="77"><ok/></rpc-reply>'
    )


class NotUTF8(AnswersOnceThen):
    bad = ChunkedFramer.encode(
        b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="2">\xff\xfe</rpc-reply>'
    )


class HalfReplyThenHangUp(AnswersOnceThen):
    """Sends half a reply, then drops the connection."""

    def _rpc(self, message: bytes) -> None:
        self.answered += 1
        if self.answered == 1:
            NetconfServerProtocol._rpc(self, message)
        else:
            self.transport.write(b"\n#500\n<rpc-reply xmlns=")
            self.transport.loseConnection()


class SlowDrip(AnswersOnceThen):
    """Answers the second RPC with bytes that never complete a message."""

    bad = b"\n#1000\n" + b"<" * 10


class Oversized(AnswersOnceThen):
    """A base:1.0 device whose second reply is larger than allowed."""

    bad = b"<rpc-reply>" + b"x" * 70_000


class NoHello(NetconfServerProtocol):
    """Opens the subsystem and never says hello."""

    def connectionMade(self) -> None:
        pass


class HostileDeviceTests(SynchronousTestCase):
    """A misbehaving device loses its session, not our data or our service."""

    def setUp(self) -> None:
        make_keys(self)
        self.good_key = new_key()
        self.config = make_config(
            self.tmp, {"edge-1": self.device_key, "good": self.good_key}, f"private_key: {self.key_path}",
            chain="[{get-config: {source: running}}, {get: {}}]",
            extra="netconf: {rpc_timeout: 5, hello_timeout: 5, max_message_size: 65536}",
        )

    def call(self, protocol, **kwargs) -> InMemoryCall:
        """
        The hostile device calls, and a good device calls at the same time
        on the same manager; the good one must be served regardless.
        """
        manager = memory_manager(self.config)
        call = InMemoryCall(manager, device_factory(self.device_key, [self.manager_key], netconf_protocol=protocol, **kwargs))
        self.good = InMemoryCall(manager, device_factory(self.good_key, [self.manager_key]))
        for _ in range(20):
            call.pump.pump()
            self.good.pump.pump()
        call.run()
        self.good.run()
        self.addCleanup(self.assert_good_served)
        return call

    def assert_good_served(self) -> None:
        record = self.good.call.call
        self.assertEqual(record.outcome, "ok", record.reason)
        self.assertEqual(len(list((self.tmp / "results" / "good").glob("*.xml"))), 2)

    def assert_ended(self, call: InMemoryCall, reason: str, saved_first: bool = True) -> None:
        record = call.call.call
        self.assertNotEqual(record.outcome, "open", "the call must be over")
        self.assertNotEqual(record.outcome, "ok")
        self.assertIn(reason, record.reason)
        self.assertTrue(call.pump.clientIO.disconnected and call.pump.serverIO.disconnected)
        saved = list((self.tmp / "results" / "edge-1").glob("*-get-config.xml"))
        self.assertEqual(len(saved), 1 if saved_first else 0, "the first reply is kept")
        self.assertFalse(list((self.tmp / "results").glob("**/.partial-*")))

    def test_garbage_framing(self):
        """An invalid chunk header closes the session with a framing error."""
        call = self.call(GarbageFraming)
        self.assert_ended(call, "framing error")

    def test_hostile_xml(self):
        """An external entity in a reply: refused, the file never read."""
        call = self.call(HostileXML)
        self.assert_ended(call, "document type declarations are not allowed")

    def test_unknown_message_id(self):
        """A reply to nothing we asked is a protocol violation."""
        call = self.call(UnknownMessageId)
        self.assert_ended(call, "unknown message-id")

    def test_not_utf8(self):
        """Bytes that are not UTF-8 are rejected."""
        call = self.call(NotUTF8)
        self.assert_ended(call, "rejected message")

    def test_stalled_device_is_hung_up_on(self):
        """
        A device that stops answering is cut off: the RPC times out, the
        close-session goes unanswered, and the connection is dropped without
        waiting for the device to acknowledge anything.
        """
        call = self.call(Stalls)
        self.assertEqual(call.call.call.outcome, "open")
        for _ in range(30):
            call.manager.clock.advance(1)
            call.run()
        self.assert_ended(call, "RPCTimeout")

    def test_device_that_never_says_hello(self):
        """No hello within hello_timeout: session closed, reason given."""
        call = self.call(NoHello)
        call.manager.clock.advance(6)
        call.run()
        self.assert_ended(call, "no hello from the device within 5s", saved_first=False)

    def test_disconnect_in_the_middle_of_a_reply(self):
        """A device that hangs up mid-reply: pending RPC fails, first result kept."""
        call = self.call(HalfReplyThenHangUp)
        self.assert_ended(call, "step 1 get: SessionClosed")

    def test_end_of_message_never_sent(self):
        """A reply that never completes is cut off by the RPC timeout."""
        call = self.call(SlowDrip)
        for _ in range(30):
            call.manager.clock.advance(1)
            call.run()
        self.assert_ended(call, "RPCTimeout")

    def test_oversized_base_1_0_message(self):
        """base:1.0: a message over max_message_size closes the session."""
        call = self.call(Oversized, offer_base_1_1=False)
        self.assert_ended(call, "exceeds 65536")


class HandshakeHostilityTests(SynchronousTestCase):
    """Hostility before SSH is up."""

    def setUp(self) -> None:
        from tests.helpers import make_config

        tmp = Path(self.mktemp())
        key = write_key(tmp / "keys", "manager", new_key())
        self.manager = memory_manager(make_config(tmp, {"edge-1": new_key()}, f"private_key: {key}"))

    def connect(self):
        from twisted.internet.testing import StringTransport

        self.manager.admit("192.0.2.1")
        call = self.manager.new_call()
        transport = StringTransport()
        call.makeConnection(transport)
        return call, transport

    def test_huge_pre_version_banner(self):
        """Banner lines before the version line are bounded, then cut off with a reason."""
        call, transport = self.connect()
        for _ in range(100):
            if transport.disconnecting:
                break
            call.dataReceived(b"Welcome to a very chatty device, line after line\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertIsNotNone(call.call.reason)
        self.assertLess(len(call.buf), 8192, "nothing unbounded is buffered")

    def test_disconnect_in_the_middle_of_the_handshake(self):
        """A device that hangs up during key exchange: logged, counted, nothing else."""
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        call, transport = self.connect()
        call.dataReceived(b"SSH-2.0-Device_1.0\r\n")
        call.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(call.call.outcome, "handshake-failed")
        self.assertEqual(self.manager.counts["handshake-failed"], 1)
        self.assertEqual(self.manager.admission.pending, 0)
