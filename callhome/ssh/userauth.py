"""
A small, bounded SSH userauth client for one device's credentials.

It sends the signed public-key request at once (RFC 4252 §7, no ``none``
probe and no "is this key acceptable?" round trip), signs RSA with
rsa-sha2-256/512, tries only the methods the device's credentials allow,
each once, and answers keyboard-interactive a bounded number of rounds.
conch's own ``SSHUserAuthClient`` does none of these (docs/DESIGN.md).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Protocol, cast

from twisted.conch.ssh import common, keys, service, transport, userauth
from twisted.conch.ssh.service import SSHService

from callhome.logs import conch_logger

if TYPE_CHECKING:  # pragma: no cover
    from callhome.config import Credentials


class AuthSide(Protocol):
    """
    What userauth needs of the call's transport
    (L{callhome.ssh.transport.CallHomeTransport}), named here so this
    module does not import the transport that imports it.
    """

    sessionID: bytes | None
    peerExtensions: dict[bytes, bytes]

    def fail(self, reason: str, code: int = ...) -> None:
        """End the call now with C{reason}, disconnecting with C{code}."""

    def setService(self, service: SSHService) -> None:
        """Start the next service (the connection, once authenticated)."""

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        """Send one SSH packet."""


class CallHomeUserAuth(service.SSHService):
    """
    A bounded SSH userauth client for one device's credentials.

    Attempts, in order: each private key (signed request sent directly),
    then the password, then keyboard-interactive answered with the password.
    An attempt is skipped when the device says that method is not allowed;
    when none is left, the call ends with a reason naming what was tried.
    """

    name = b"ssh-userauth"
    protocolMessages = userauth.SSHUserAuthClient.protocolMessages
    _log = conch_logger("callhome.ssh.conch")

    #: keyboard-interactive rounds answered before giving up on the method.
    MAX_INTERACTIVE_ROUNDS = 3

    def __init__(self, credentials: "Credentials", instance: service.SSHService) -> None:
        self.credentials = credentials
        self.instance = instance
        self.user = credentials.username.encode("utf-8")
        self._attempts: list[tuple[str, keys.Key | None]] = [
            ("publickey", key) for key in credentials.private_keys
        ]
        if credentials.password is not None:
            self._attempts += [("password", None), ("keyboard-interactive", None)]
        self._current: tuple[str, keys.Key | None] | None = None
        self._tried: list[str] = []
        self._interactive_rounds = 0

    @property
    def _call_transport(self) -> AuthSide:
        """The call's transport: conch sets it before it starts this service."""
        assert self.transport is not None
        return cast(AuthSide, self.transport)

    def serviceStarted(self) -> None:
        """Try the first method without probing."""
        self._next_attempt(allowed=None)

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> None:
        """Authenticated: start the connection service."""
        self._call_transport.setService(self.instance)

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> None:
        """That attempt failed: move to the next one the device allows."""
        try:
            methods, rest = common.getNS(packet)
        except Exception:  # struct.error on a truncated packet
            self._call_transport.fail("malformed authentication failure message", transport.DISCONNECT_PROTOCOL_ERROR)
            return
        allowed = set(methods.decode("ascii", "replace").split(",")) if methods else set()
        self._next_attempt(allowed)

    def ssh_USERAUTH_BANNER(self, packet: bytes) -> None:
        """A login banner: nobody reads it on a call home; ignore it."""

    def ssh_USERAUTH_PK_OK(self, packet: bytes) -> None:
        """
        Message 60: INFO_REQUEST (keyboard-interactive), PASSWD_CHANGEREQ
        (password) or PK_OK (not expected: we never ask before signing).
        """
        method = self._current[0] if self._current else None
        if method == "keyboard-interactive":
            self._answer_prompts(packet)
        elif method == "password":
            self._call_transport.fail(
                "authentication failed: the device wants a new password (password expired)",
                transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
            )

    def _next_attempt(self, allowed: set[str] | None) -> None:
        while self._attempts:
            method, key = self._attempts.pop(0)
            if allowed is not None and method not in allowed:
                continue
            self._current = (method, key)
            self._tried.append(method)
            getattr(self, "_try_" + method.replace("-", "_"))(key)
            return
        offered = ",".join(sorted(allowed)) if allowed else "nothing"
        tried = ", ".join(self._tried) or "nothing (no method in common)"
        self._call_transport.fail(
            f"authentication failed: tried {tried}; device allows {offered}",
            transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
        )

    def _request(self, method: bytes, extra: bytes) -> None:
        self._call_transport.sendPacket(
            userauth.MSG_USERAUTH_REQUEST,
            common.NS(self.user) + common.NS(self.instance.name) + common.NS(method) + extra,
        )

    def _try_publickey(self, key: keys.Key | None) -> None:
        assert key is not None
        algorithm = self._signature_algorithm(key)
        blob = key.public().blob()
        session_id = self._call_transport.sessionID
        assert session_id is not None  # set by the key exchange, before any service starts
        signed = (
            common.NS(session_id)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + common.NS(self.user)
            + common.NS(self.instance.name)
            + common.NS(b"publickey")
            + b"\x01"
            + common.NS(algorithm)
            + common.NS(blob)
        )
        signature = key.sign(signed, signatureType=algorithm)
        self._request(b"publickey", b"\x01" + common.NS(algorithm) + common.NS(blob) + common.NS(signature))

    def _signature_algorithm(self, key: keys.Key) -> bytes:
        """RSA: the best rsa-sha2 the device accepts (RFC 8332/8308)."""
        if key.type() != "RSA":
            return key.sshType()
        accepted = self._call_transport.peerExtensions.get(b"server-sig-algs")
        if accepted is None:
            # No RFC 8308 advertisement: rsa-sha2-256 is what every OpenSSH
            # since 7.2 accepts, and SHA-1 is refused by 8.8 and later.
            return b"rsa-sha2-256"
        names = accepted.split(b",")
        for candidate in (b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa"):
            if candidate in names:
                return candidate
        return b"rsa-sha2-256"

    def _try_password(self, key: None) -> None:
        assert self.credentials.password is not None
        self._request(b"password", b"\x00" + common.NS(self.credentials.password.encode("utf-8")))

    def _try_keyboard_interactive(self, key: None) -> None:
        self._interactive_rounds = 0
        self._request(b"keyboard-interactive", common.NS(b"") + common.NS(b""))

    def _answer_prompts(self, packet: bytes) -> None:
        """Answer every prompt with the password, a bounded number of times."""
        self._interactive_rounds += 1
        if self._interactive_rounds > self.MAX_INTERACTIVE_ROUNDS:
            self._call_transport.fail(
                f"authentication failed: keyboard-interactive asked more than "
                f"{self.MAX_INTERACTIVE_ROUNDS} rounds of questions",
                transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
            )
            return
        try:
            _name, _instruction, _lang, data = common.getNS(packet, 3)
            (count,) = struct.unpack("!L", data[:4])
        except (struct.error, IndexError, ValueError):
            self._call_transport.fail("malformed keyboard-interactive request", transport.DISCONNECT_PROTOCOL_ERROR)
            return
        if count > 16:
            self._call_transport.fail("keyboard-interactive request with too many prompts", transport.DISCONNECT_PROTOCOL_ERROR)
            return
        answer = common.NS((self.credentials.password or "").encode("utf-8"))
        self._call_transport.sendPacket(
            userauth.MSG_USERAUTH_INFO_RESPONSE, struct.pack("!L", count) + answer * count
        )
