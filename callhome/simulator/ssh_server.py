"""
The simulated device's SSH server: conch, run on a socket the device opened.

On a call home the device connects out but is still the SSH *server*, so
the factory here is used with a client endpoint: ``endpoint.connect(factory)``
builds an ``SSHServerTransport`` on the outgoing socket.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.conch.avatar import ConchUser
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.ssh import factory, keys, session, transport
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from callhome import fingerprints
from callhome.logs import conch_logger
from callhome.ssh.aead import CIPHERS as AEAD_CIPHERS
from callhome.ssh.aead import AeadTransportMixin
from callhome.simulator.netconf_server import Datastore, NetconfServerProtocol



def load_or_create_host_key(path: str | Path, key_type: str = "ed25519") -> keys.Key:
    """
    Load the device's host key, creating it (mode 0600) if the file is absent.

    @param key_type: ``ed25519``, ``ecdsa`` or ``rsa``, for a new key.
    """
    path = Path(path)
    if path.exists():
        return keys.Key.fromFile(str(path))
    if key_type == "ed25519":
        private: Any = ed25519.Ed25519PrivateKey.generate()
    elif key_type == "ecdsa":
        private = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"unknown key type {key_type!r}")
    key = keys.Key(private)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.toString("openssh"))
    Path(f"{path}.pub").write_bytes(key.public().toString("openssh") + b"\n")
    return key


class NetconfUser(ConchUser):
    """An authenticated manager: may open a session with subsystem netconf."""

    def __init__(self, datastore: Datastore, offer_base_1_1: bool, netconf_protocol: type[NetconfServerProtocol] = NetconfServerProtocol) -> None:
        super().__init__()
        self.datastore = datastore
        self.offer_base_1_1 = offer_base_1_1
        self.netconf_protocol = netconf_protocol
        self.channelLookup[b"session"] = session.SSHSession

    def lookupSubsystem(self, subsystem: bytes, data: bytes) -> NetconfServerProtocol | None:
        """Serve ``netconf``; refuse every other subsystem."""
        if subsystem == b"netconf":
            return self.netconf_protocol(self.datastore, self.offer_base_1_1)
        return None

    def global_keepalive_openssh_com(self, data: bytes) -> int:
        """Answer a manager's keepalive."""
        return 1


@implementer(IRealm)
class NetconfRealm:
    """Gives every authenticated user a L{NetconfUser}."""

    def __init__(self, datastore: Datastore, offer_base_1_1: bool, netconf_protocol: type[NetconfServerProtocol]) -> None:
        self.datastore = datastore
        self.offer_base_1_1 = offer_base_1_1
        self.netconf_protocol = netconf_protocol

    def requestAvatar(self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any) -> tuple[Any, NetconfUser, Any]:
        """A L{NetconfUser} for whoever logged in."""
        user = NetconfUser(self.datastore, self.offer_base_1_1, self.netconf_protocol)
        return interfaces[0], user, lambda: None


class DeviceTransport(AeadTransportMixin, transport.SSHServerTransport):
    """The device's SSH server transport; C{done} fires (with None) when the call ends."""

    # Like OpenSSH and libssh, AES-GCM first (callhome.ssh.aead).
    supportedCiphers = list(AEAD_CIPHERS) + transport.SSHServerTransport.supportedCiphers

    # conch's packet-level chatter, dropped before it is built (as the manager does).
    _log = conch_logger("callhome.simulator.conch")

    def connectionMade(self) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()
        self.authenticated = False
        super().connectionMade()

    def setService(self, service: Any) -> None:
        if service.name == b"ssh-connection":
            self.authenticated = True
        super().setService(service)

    def connectionLost(self, reason: Failure | None = None) -> None:
        try:
            super().connectionLost(reason)
        finally:
            if not self.done.called:
                self.done.callback(None)


class DeviceSSHFactory(factory.SSHFactory):
    """
    The SSH server of one simulated device.

    @param host_key: the device's identity.
    @param authorized_keys: public keys the manager may log in with.
    @param password: the password accepted for C{username}, if any.
    @param netconf_protocol: the NETCONF server class (tests plug in
        misbehaving ones).
    """

    protocol = DeviceTransport

    def __init__(
        self,
        host_key: keys.Key,
        datastore: Datastore,
        username: str = "admin",
        authorized_keys: list[keys.Key] | None = None,
        password: str | None = None,
        offer_base_1_1: bool = True,
        netconf_protocol: type[NetconfServerProtocol] = NetconfServerProtocol,
    ) -> None:
        self.host_key = host_key
        self.datastore = datastore
        type_name = host_key.sshType()
        self.publicKeys = {type_name: host_key.public()}
        self.privateKeys = {type_name: host_key}
        checkers: list[Any] = []
        if authorized_keys:
            checkers.append(SSHPublicKeyChecker(InMemorySSHKeyDB({username.encode(): list(authorized_keys)})))
        if password is not None:
            checkers.append(InMemoryUsernamePasswordDatabaseDontUse(**{username: password.encode()}))
        self.portal = Portal(NetconfRealm(datastore, offer_base_1_1, netconf_protocol), checkers)
        # No group-exchange moduli: the curve25519/ECDH exchanges need none.
        self.primes: dict[int, list[tuple[int, int]]] = {}

    @property
    def fingerprint(self) -> str:
        """The host key's SHA-256 fingerprint, as ``ssh-keygen -lf`` prints it."""
        return fingerprints.of_key(self.host_key)
