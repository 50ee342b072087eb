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
from tests.helpers import InMemoryCall, device_factory, make_config, memory_manager, new_key, write_key


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


class NoHello(NetconfServerProtocol):
    """Opens the subsystem and never says hello."""

    def connectionMade(self) -> None:
        pass


class HostileDeviceTests(SynchronousTestCase):
    """A misbehaving device loses its session, not our data or our service."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.manager_key = new_key()
        self.key_path = write_key(self.tmp / "keys", "manager", self.manager_key)
        self.device_key = new_key()
        self.config = make_config(
            self.tmp, {"edge-1": self.device_key}, f"private_key: {self.key_path}",
            chain="[{get-config: {source: running}}, {get: {}}]",
            extra="netconf: {rpc_timeout: 5, hello_timeout: 5}",
        )

    def call(self, protocol) -> InMemoryCall:
        manager = memory_manager(self.config)
        call = InMemoryCall(manager, device_factory(self.device_key, [self.manager_key], netconf_protocol=protocol))
        call.run()
        return call

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
