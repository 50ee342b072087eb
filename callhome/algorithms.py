"""
The SSH algorithms we offer: modern ones always, legacy ones only on opt-in.

Key exchange happens before the device is identified (its host key *is* its
identity), so a legacy algorithm that any device or group opts into is
offered to every call, after all modern ones; once the device is known, a
call that negotiated a legacy algorithm the device did not opt into is
dropped (see L{callhome.ssh.transport.CallHomeTransport.connectionSecure}).
"""

from __future__ import annotations

from typing import Iterable

from twisted.conch.ssh.transport import SSHTransportBase

from callhome.ssh import aead

# Best first.  The host-key order is fixed so the same device always presents
# the same key type; every key the config lists for it still matches.
KEX = (
    b"curve25519-sha256",
    b"curve25519-sha256@libssh.org",
    b"mlkem768x25519-sha256",
    b"ecdh-sha2-nistp256",
    b"ecdh-sha2-nistp384",
    b"ecdh-sha2-nistp521",
    b"diffie-hellman-group-exchange-sha256",
)
HOST_KEYS = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)
# AES-GCM first: one C call per packet for encryption and integrity
# (callhome.ssh.aead); CTR+HMAC for devices without it.
CIPHERS = aead.CIPHERS + (b"aes128-ctr", b"aes256-ctr", b"aes192-ctr")
MACS = (b"hmac-sha2-256", b"hmac-sha2-512")

#: Legacy algorithms a device or group may opt into by name, per kind.
LEGACY = {
    "kex": (b"diffie-hellman-group14-sha1", b"diffie-hellman-group-exchange-sha1"),
    "host_key": (b"ssh-rsa", b"ssh-dss"),
    "cipher": (b"aes128-cbc", b"aes192-cbc", b"aes256-cbc", b"3des-cbc"),
    "mac": (b"hmac-sha1", b"hmac-md5"),
}
LEGACY_NAMES = frozenset(name.decode() for names in LEGACY.values() for name in names)


def _supported(wanted: Iterable[bytes], available: list[bytes]) -> list[bytes]:
    return [name for name in wanted if name in available]


def offer(legacy: Iterable[str] = ()) -> dict[str, list[bytes]]:
    """
    The lists to offer, by conch attribute name: modern first, then the
    legacy algorithms named (those conch supports).
    """
    extra = {name.encode() for name in legacy}

    def kind(modern: tuple[bytes, ...], key: str, available: list[bytes]) -> list[bytes]:
        chosen = list(modern) + [n for n in LEGACY[key] if n in extra]
        return _supported(chosen, available)

    base = SSHTransportBase
    return {
        "supportedKeyExchanges": kind(KEX, "kex", base.supportedKeyExchanges),
        "supportedPublicKeys": kind(HOST_KEYS, "host_key", base.supportedPublicKeys),
        "supportedCiphers": kind(CIPHERS, "cipher", list(aead.CIPHERS) + base.supportedCiphers),
        "supportedMACs": kind(MACS, "mac", base.supportedMACs),
        "supportedCompressions": [b"none"],
    }


def legacy_in_use(negotiated: Iterable[bytes]) -> set[str]:
    """The legacy algorithm names among those a call negotiated."""
    return {name.decode() for name in negotiated if name.decode() in LEGACY_NAMES}
