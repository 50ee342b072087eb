"""
AES-GCM for conch (``aes128-gcm@openssh.com``, ``aes256-gcm@openssh.com``,
RFC 5647 as OpenSSH implements it), and a cheaper HMAC for the rest.

conch encrypts a packet with AES-CTR and then authenticates it with a
separate HMAC built through Python's ``hmac`` class: two passes and a
handful of Python calls per packet.  AES-GCM does both in one call into
``cryptography`` (OpenSSL).  OpenSSH, libssh (netopeer2, libnetconf2) and
asyncssh all offer it, so most devices negotiate it; CTR+HMAC stays for
the rest, with its MAC computed by ``hmac.digest`` (one C call).

The packet format (RFC 5647 section 7): the 4-byte packet length is sent in
clear and authenticated as associated data; padding length, payload and
padding (a multiple of 16 bytes, at least 4 of padding) are encrypted; the
16-byte tag follows.  The nonce is the 12-byte IV the key exchange derived:
4 fixed bytes and a 64-bit big-endian counter, incremented per packet.  No
MAC is negotiated for an AEAD cipher (the one conch picked is ignored).

L{AeadTransportMixin} goes before conch's client or server transport in
the bases; it is used by the manager and by the device simulator.
"""

from __future__ import annotations

import hmac
import os
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.conch.ssh import transport

#: AEAD cipher name -> key size in bytes, best first.
GCM_KEY_SIZES = {
    b"aes128-gcm@openssh.com": 16,
    b"aes256-gcm@openssh.com": 32,
}
CIPHERS = tuple(GCM_KEY_SIZES)

#: What an AEAD cipher reports as its MAC (OpenSSH says "<implicit>").
IMPLICIT_MAC = b"implicit"

_BLOCK = 16
_TAG = 16
_COUNTER_MASK = (1 << 64) - 1
#: The largest packet conch accepts; the same limit here.
MAX_PACKET = 1048576


class GcmDirection:
    """
    One direction's AES-GCM key and invocation counter.

    The C{AESGCM} object is made for each packet, not kept: it holds two
    OpenSSL contexts, 2.6 KiB, which a held session would keep for each
    direction between keepalives; making one takes 0.7 us.
    """

    __slots__ = ("_key", "_fixed", "_counter")

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._key = key
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:12], "big")

    def _nonce(self) -> bytes:
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & _COUNTER_MASK
        return nonce

    def seal(self, length: bytes, plain: bytes) -> bytes:
        """Encrypt C{plain}, authenticating C{length} too: ciphertext and tag."""
        return AESGCM(self._key).encrypt(self._nonce(), plain, length)

    def open(self, length: bytes, sealed: bytes) -> bytes:
        """Check and decrypt a packet's ciphertext and tag; raise C{InvalidTag} if forged."""
        return AESGCM(self._key).decrypt(self._nonce(), sealed, length)


class PacketCiphers(transport.SSHCiphers):
    """
    conch's cipher state, with AES-GCM in either direction and a one-call
    HMAC for CTR/CBC.

    @ivar out_gcm: the outgoing AES-GCM state, or None for conch's cipher.
    @ivar in_gcm: the incoming one.
    """

    out_gcm: GcmDirection | None = None
    in_gcm: GcmDirection | None = None

    def __init__(self, outCip: bytes, inCip: bytes, outMac: bytes, inMac: bytes) -> None:
        super().__init__(
            outCip, inCip,
            IMPLICIT_MAC if outCip in GCM_KEY_SIZES else outMac,
            IMPLICIT_MAC if inCip in GCM_KEY_SIZES else inMac,
        )

    def setKeys(self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes, outInteg: bytes, inInteg: bytes) -> None:
        """Set up each direction: AES-GCM from the key and IV, or conch's cipher and MAC."""
        if self.outCipType in GCM_KEY_SIZES:
            self.out_gcm = GcmDirection(outKey[: GCM_KEY_SIZES[self.outCipType]], outIV)
            self.encBlockSize = _BLOCK
        else:
            cipher = self._getCipher(self.outCipType, outIV, outKey)
            self.encryptor = cipher.encryptor()
            self.encBlockSize = cipher.algorithm.block_size // 8
            self.outMAC = self._getMAC(self.outMACType, outInteg)  # type: ignore[assignment]
        if self.inCipType in GCM_KEY_SIZES:
            self.in_gcm = GcmDirection(inKey[: GCM_KEY_SIZES[self.inCipType]], inIV)
            self.decBlockSize = _BLOCK
            self.verifyDigestSize = 0  # the tag is read with the packet
        else:
            cipher = self._getCipher(self.inCipType, inIV, inKey)
            self.decryptor = cipher.decryptor()
            self.decBlockSize = cipher.algorithm.block_size // 8
            self.inMAC = self._getMAC(self.inMACType, inInteg)  # type: ignore[assignment]
            if self.inMAC:
                self.verifyDigestSize = self.inMAC[3]

    def makeMAC(self, seqid: int, data: bytes) -> bytes:
        """The outgoing packet's HMAC, in one C call (conch builds an C{hmac.HMAC})."""
        if not self.outMAC[0]:
            return b""
        return hmac.digest(self.outMAC.key, struct.pack(">L", seqid) + data, self.outMAC[0])

    def verify(self, seqid: int, data: bytes, mac: bytes) -> bool:
        """Check an incoming packet's HMAC, in one C call."""
        if not self.inMAC[0]:
            return mac == b""
        expected = hmac.digest(self.inMAC.key, struct.pack(">L", seqid) + data, self.inMAC[0])
        return hmac.compare_digest(mac, expected)


class AeadTransportMixin:
    """
    Sends and reads AES-GCM packets for a conch transport; CTR+HMAC packets
    go through conch's own code, with L{PacketCiphers}' HMAC.

    Mixed in before C{SSHClientTransport} or C{SSHServerTransport}.
    """

    # What the mixin uses of conch's transport (for the type checker).
    transport: Any
    buf: bytes
    currentEncryptions: Any
    nextEncryptions: Any
    outgoingCompression: Any
    incomingCompression: Any
    outgoingPacketSequence: int
    incomingPacketSequence: int
    _keyExchangeState: str
    _KEY_EXCHANGE_NONE: str
    _blockedByKeyExchange: Any

    def _keySetup(self, sharedSecret: bytes, exchangeHash: bytes) -> None:
        """Swap conch's negotiated cipher state for ours before the keys go in."""
        negotiated = self.nextEncryptions
        self.nextEncryptions = PacketCiphers(
            negotiated.outCipType, negotiated.inCipType, negotiated.outMACType, negotiated.inMACType
        )
        super()._keySetup(sharedSecret, exchangeHash)  # type: ignore[misc]

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        """Send one packet: AES-GCM here, anything else through conch."""
        sealer = self.currentEncryptions.out_gcm if isinstance(self.currentEncryptions, PacketCiphers) else None
        if sealer is None:
            super().sendPacket(messageType, payload)  # type: ignore[misc]
            return
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE and not self._allowedKeyExchangeMessageType(messageType):  # type: ignore[attr-defined]
            self._blockedByKeyExchange.append((messageType, payload))
            return
        payload = bytes((messageType,)) + payload
        if self.outgoingCompression:
            payload = self.outgoingCompression.compress(payload) + self.outgoingCompression.flush(2)
        padding = _BLOCK - (1 + len(payload)) % _BLOCK
        if padding < 4:
            padding += _BLOCK
        length = struct.pack(">L", 1 + len(payload) + padding)
        sealed = sealer.seal(length, bytes((padding,)) + payload + os.urandom(padding))
        self.transport.write(length + sealed)
        self.outgoingPacketSequence += 1

    def getPacket(self) -> bytes | None:
        """The next whole packet's payload from the buffer, or None: AES-GCM here, else conch."""
        opener = self.currentEncryptions.in_gcm if isinstance(self.currentEncryptions, PacketCiphers) else None
        if opener is None:
            return super().getPacket()  # type: ignore[misc]
        buf = self.buf
        if len(buf) < 4:
            return None
        length = int.from_bytes(buf[:4], "big")
        if length > MAX_PACKET or length < _BLOCK or length % _BLOCK:
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad packet length %d" % length)  # type: ignore[attr-defined]
            return None
        end = 4 + length + _TAG
        if len(buf) < end:
            return None
        try:
            plain = opener.open(buf[:4], buf[4:end])
        except InvalidTag:
            self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, b"bad MAC")  # type: ignore[attr-defined]
            return None
        self.buf = buf[end:]
        padding = plain[0]
        if padding < 4 or padding >= length:
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad padding length %d" % padding)  # type: ignore[attr-defined]
            return None
        payload = plain[1 : length - padding]
        if self.incomingCompression:
            try:
                payload = self.incomingCompression.decompress(payload)
            except Exception:
                self.sendDisconnect(transport.DISCONNECT_COMPRESSION_ERROR, b"compression error")  # type: ignore[attr-defined]
                return None
        self.incomingPacketSequence += 1
        return payload
