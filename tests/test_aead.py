"""
AES-GCM packets (callhome.ssh.aead), between two transports in memory.

The interop tests are against OpenSSH in test_netconfd.py
(``test_aes128_gcm_offered_first`` and the ones after it); here: byte-exact
framing, forged and replayed packets, odd chunking, key-exchange queuing,
and that our one-call HMAC gives conch's bytes.
"""

from __future__ import annotations

import os
import random

from twisted.conch.ssh import transport
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from callhome.ssh import aead

GCM128 = b"aes128-gcm@openssh.com"
GCM256 = b"aes256-gcm@openssh.com"


class Side(aead.AeadTransportMixin, transport.SSHTransportBase):
    """One end of an established SSH transport: records what it reads and why it hung up."""

    def __init__(self) -> None:
        self.received: list[tuple[int, bytes]] = []
        self.disconnects: list[tuple[int, bytes]] = []
        self.gotVersion = True
        self.buf = b""
        self.makeConnection(StringTransport())

    def connectionMade(self) -> None:
        """No version line or KEXINIT: the keys are set by the test."""

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.received.append((messageNum, payload))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self.disconnects.append((reason, desc))
        self.transport.loseConnection()

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data


def pair(a_out: bytes = GCM128, b_out: bytes = GCM128, mac: bytes = b"hmac-sha2-256") -> tuple[Side, Side]:
    """Two sides keyed for each other: a's outgoing keys are b's incoming ones."""
    a, b = Side(), Side()
    keys = {name: os.urandom(64) for name in ("iv_ab", "key_ab", "iv_ba", "key_ba", "mac_ab", "mac_ba")}
    a.currentEncryptions = aead.PacketCiphers(a_out, b_out, mac, mac)
    a.currentEncryptions.setKeys(keys["iv_ab"], keys["key_ab"], keys["iv_ba"], keys["key_ba"], keys["mac_ab"], keys["mac_ba"])
    b.currentEncryptions = aead.PacketCiphers(b_out, a_out, mac, mac)
    b.currentEncryptions.setKeys(keys["iv_ba"], keys["key_ba"], keys["iv_ab"], keys["key_ab"], keys["mac_ba"], keys["mac_ab"])
    return a, b


class GcmPacketTests(unittest.TestCase):
    """AES-GCM packets as RFC 5647 frames them, between our two sides."""

    def test_payloads_of_every_size_arrive_in_order(self) -> None:
        a, b = pair()
        payloads = [os.urandom(size) for size in range(0, 300)] + [os.urandom(40000)]
        for payload in payloads:
            a.sendPacket(94, payload)
        wire = a.sent()
        b.dataReceived(wire)
        self.assertEqual(b.received, [(94, p) for p in payloads])
        self.assertEqual(b.disconnects, [])
        self.assertEqual(b.incomingPacketSequence, len(payloads))

    def test_frame_layout(self) -> None:
        """Length in clear, a multiple of 16, at least 4 bytes of padding, a 16-byte tag."""
        a, _ = pair()
        for size in range(0, 64):
            a.sendPacket(94, b"x" * size)
            frame = a.sent()
            length = int.from_bytes(frame[:4], "big")
            self.assertEqual(length % 16, 0)
            self.assertEqual(len(frame), 4 + length + 16)
            self.assertGreaterEqual(length - 1 - 1 - size, 4)  # padding-length byte, type byte

    def test_any_chunking(self) -> None:
        """Bytes in odd chunks (one at a time, then at random) give the same packets."""
        a, b = pair()
        payloads = [os.urandom(n) for n in (0, 1, 15, 16, 17, 1000, 5000)]
        for payload in payloads:
            a.sendPacket(94, payload)
        wire = a.sent()
        for byte in range(len(wire[:200])):
            b.dataReceived(wire[byte : byte + 1])
        rest = wire[200:]
        chooser = random.Random(5)
        while rest:
            cut = chooser.randint(1, 700)
            b.dataReceived(rest[:cut])
            rest = rest[cut:]
        self.assertEqual([p for _, p in b.received], payloads)

    def test_both_directions_and_both_key_sizes(self) -> None:
        a, b = pair(GCM128, GCM256)
        a.sendPacket(94, b"to b")
        b.sendPacket(94, b"to a")
        b.dataReceived(a.sent())
        a.dataReceived(b.sent())
        self.assertEqual((a.received, b.received), ([(94, b"to a")], [(94, b"to b")]))

    def test_forged_byte_is_refused(self) -> None:
        """One flipped bit anywhere after the length: a MAC error, nothing delivered."""
        for position in (4, 5, 20, -1):
            a, b = pair()
            a.sendPacket(94, b"configuration")
            frame = bytearray(a.sent())
            frame[position] ^= 0x01
            b.dataReceived(bytes(frame))
            self.assertEqual(b.received, [])
            self.assertEqual(b.disconnects, [(transport.DISCONNECT_MAC_ERROR, b"bad MAC")])

    def test_forged_length_is_refused(self) -> None:
        """The length is authenticated too: another multiple of 16 fails the tag."""
        a, b = pair()
        a.sendPacket(94, b"x" * 40)
        frame = a.sent()
        forged = (int.from_bytes(frame[:4], "big") - 16).to_bytes(4, "big") + frame[4:]
        b.dataReceived(forged)
        self.assertEqual(b.disconnects, [(transport.DISCONNECT_MAC_ERROR, b"bad MAC")])

    def test_replayed_packet_is_refused(self) -> None:
        """The counter moved on, so the same frame again does not authenticate."""
        a, b = pair()
        a.sendPacket(94, b"once")
        frame = a.sent()
        b.dataReceived(frame + frame)
        self.assertEqual(b.received, [(94, b"once")])
        self.assertEqual(b.disconnects, [(transport.DISCONNECT_MAC_ERROR, b"bad MAC")])

    def test_bad_lengths_are_refused_before_buffering(self) -> None:
        """A length over the limit or not a whole number of blocks ends the call at once."""
        for length in (aead.MAX_PACKET + 16, 17, 0):
            _, b = pair()
            b.dataReceived(length.to_bytes(4, "big"))
            self.assertEqual(b.disconnects, [(transport.DISCONNECT_PROTOCOL_ERROR, b"bad packet length %d" % length)])

    def test_counter_wraps_at_64_bits(self) -> None:
        """RFC 5647 7.1: the invocation counter is 64 bits and wraps."""
        direction = aead.GcmDirection(b"k" * 16, b"\0\0\0\1" + b"\xff" * 8)
        self.assertEqual(direction._nonce(), b"\0\0\0\1" + b"\xff" * 8)
        self.assertEqual(direction._nonce(), b"\0\0\0\1" + b"\0" * 8)

    def test_messages_wait_for_the_key_exchange(self) -> None:
        """While keys change, only key-exchange messages go out; the rest wait (as in conch)."""
        a, _ = pair()
        a._keyExchangeState = a._KEY_EXCHANGE_REQUESTED
        a._blockedByKeyExchange = []
        a.sendPacket(94, b"later")
        self.assertEqual(a.sent(), b"")
        self.assertEqual(a._blockedByKeyExchange, [(94, b"later")])

    def test_gcm_one_way_ctr_the_other(self) -> None:
        """Each direction has its own cipher: GCM out, CTR+HMAC in, and back."""
        a, b = pair(GCM128, b"aes128-ctr")
        a.sendPacket(94, b"gcm")
        b.sendPacket(94, b"ctr")
        b.dataReceived(a.sent())
        a.dataReceived(b.sent())
        self.assertEqual((a.received, b.received), ([(94, b"ctr")], [(94, b"gcm")]))
        self.assertEqual(a.currentEncryptions.outMACType, aead.IMPLICIT_MAC)
        self.assertEqual(a.currentEncryptions.inMACType, b"hmac-sha2-256")


class HmacTests(unittest.TestCase):
    """CTR and CBC keep conch's packets; only the MAC's computation changed."""

    def test_same_mac_bytes_as_conch(self) -> None:
        for mac in (b"hmac-sha2-256", b"hmac-sha2-512", b"hmac-sha1", b"hmac-md5"):
            ours = aead.PacketCiphers(b"aes128-ctr", b"aes128-ctr", mac, mac)
            theirs = transport.SSHCiphers(b"aes128-ctr", b"aes128-ctr", mac, mac)
            material = [os.urandom(64) for _ in range(5)]
            material.append(material[4])  # the same integrity key both ways: verify what makeMAC made
            ours.setKeys(*material)
            theirs.setKeys(*material)
            data = os.urandom(100)
            self.assertEqual(ours.makeMAC(7, data), theirs.makeMAC(7, data), mac)
            self.assertTrue(ours.verify(7, data, theirs.makeMAC(7, data)))
            self.assertFalse(ours.verify(8, data, theirs.makeMAC(7, data)))

    def test_ctr_packets_between_our_sides(self) -> None:
        a, b = pair(b"aes256-ctr", b"aes256-ctr", b"hmac-sha2-512")
        a.sendPacket(94, b"payload")
        b.dataReceived(a.sent())
        self.assertEqual(b.received, [(94, b"payload")])
