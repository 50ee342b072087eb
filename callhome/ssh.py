"""
The SSH client side of a call home, on a socket the device opened to us.

RFC 8071 reverses only the TCP direction: on the accepted socket we are the
SSH client.  The layers, each one class:

* :class:`CallHomeTransport`: conch's client transport.  Its host-key check
  *is* the device identification (C5-C7): an unknown key ends the call before
  any credential is sent; a known one selects the device, and only then are
  that device's credentials used.
* :class:`CallHomeUserAuth`: a small, bounded userauth client.  It sends the
  signed public-key request at once (RFC 4252 §7, no ``none`` probe and no
  "is this key acceptable?" round trip), signs RSA with rsa-sha2-256/512,
  tries only the methods the device's credentials allow, each once, and
  answers keyboard-interactive a bounded number of rounds.
* :class:`CallHomeConnection` and :class:`NetconfChannel`: one session
  channel with the ``netconf`` subsystem, carrying a
  :class:`~callhome.netconf.session.NetconfSession`.

What happens after the NETCONF hello is not this module's business: the
transport hands the session to its :class:`CallHandler` (the manager).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Protocol

from twisted.conch.ssh import channel, common, connection, keys, service, transport, userauth
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from callhome import algorithms as algorithms_module
from callhome import fingerprints
from callhome.call.record import CallRecord, CallState, Outcome
from callhome.keepalive import Keepalive
from callhome.logs import LevelLogger, conch_logger
from callhome.netconf.session import NetconfSession

if TYPE_CHECKING:  # pragma: no cover
    from callhome.config import Credentials, Device, NetconfSettings


def _quiet_logger() -> LevelLogger:
    return conch_logger("callhome.ssh.conch")


class CallHandler(Protocol):
    """What a transport needs from the manager."""

    clock: IReactorTime

    def lookup(self, fingerprint: str) -> "Device | None":
        """The device this host key belongs to, if any (no side effects)."""

    def may_prove_unknown(self) -> bool:
        """Whether an unknown key goes on to prove itself (quarantine, accept)."""

    def refuse_unknown(self, call: "CallHomeTransport", fingerprint: str, key_type: str) -> None:
        """Record and log the refusal of an unknown key (reject policy)."""

    def identify(self, call: "CallHomeTransport", fingerprint: str, key_type: str, device: "Device | None") -> "Device | None":
        """
        The key is proved: apply the policies and return the device to log
        in to, or None to refuse the call (the handler records why in
        C{call.call}).
        """

    def authenticated(self, call: "CallHomeTransport") -> None:
        """The call logged in."""

    def netconf_settings(self, device: "Device") -> "NetconfSettings":
        """Return the NETCONF settings for this device's session."""

    def session_ready(self, call: "CallHomeTransport", session: NetconfSession) -> None:
        """Start the device's work on an established NETCONF session."""

    def call_ended(self, call: "CallHomeTransport") -> None:
        """Record a finished call (one log line, status)."""


class CallHomeTransport(transport.SSHClientTransport):
    """
    conch's SSH client transport on a socket the device opened.

    @ivar handler: the manager this call reports to.
    @ivar call: the record of this call.
    """

    _log = _quiet_logger()
    log = LevelLogger(namespace="callhome.ssh")

    def __init__(
        self,
        handler: CallHandler,
        handshake_timeout: float,
        idle_timeout: float | None = None,
        offer: dict[str, list[bytes]] | None = None,
    ) -> None:
        self.handler = handler
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        for name, algorithms in (offer or algorithms_module.offer()).items():
            setattr(self, name, algorithms)
        self.call: CallRecord | None = None
        self.session: NetconfSession | None = None
        self._handshake_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self.keepalive: Keepalive | None = None
        self._candidate: "Device | None" = None
        self.bytes_received = 0

    def connectionMade(self) -> None:
        """Start the call: version, KEXINIT, and the handshake deadline."""
        peer = self.transport.getPeer()
        host = getattr(peer, "host", str(peer))
        port = getattr(peer, "port", None)
        self.call = CallRecord(
            peer=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            started=self.handler.clock.seconds(),
            source=host,
        )
        self._handshake_timer = self.handler.clock.callLater(
            self.handshake_timeout, self._handshake_timed_out
        )
        super().connectionMade()

    def fail(self, reason: str, code: int = transport.DISCONNECT_BY_APPLICATION, outcome: Outcome | None = None) -> None:
        """End the call now with C{outcome} (if given) and C{reason} (never with a secret in it)."""
        assert self.call is not None
        if outcome is not None:
            self.call.end(outcome, reason)
        self.call.note(reason)
        self.sendDisconnect(code, reason.encode("utf-8", "replace")[:200])

    def hang_up(self) -> None:
        """
        End the call once its NETCONF session is over.

        The channel close we sent is not waited for: a stalled or hostile
        device that never acknowledges it must not keep the connection.
        Unlike L{fail}, this leaves the recorded reason to the session.
        """
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return
        self.sendPacket(
            transport.MSG_DISCONNECT,
            struct.pack(">L", transport.DISCONNECT_BY_APPLICATION)
            + common.NS(b"NETCONF session closed") + common.NS(b""),
        )
        self.transport.loseConnection()

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        """Record why conch (or we) disconnect, then do it."""
        if self.call is not None:
            self.call.note(desc.decode("utf-8", "replace"))
        super().sendDisconnect(reason, desc)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """The device sent SSH_MSG_DISCONNECT: remember what it said."""
        if self.call is not None:
            text = description.decode("utf-8", "replace")[:200]
            self.call.note(f"device disconnected (code {reasonCode}): {text}")

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        """
        Look the device up by its host key (RFC 8071 C5), without acting on it.

        Nothing is decided here but a plain refusal: the key is not proved
        yet (conch checks its signature of the exchange hash afterwards), so
        a copy of a public key must not replace a session, fill the
        quarantine or touch the registry.  Those happen in
        L{connectionSecure}.  An unknown key under ``unknown_devices:
        reject`` is refused now; nothing more is sent.
        """
        assert self.call is not None
        fp = fingerprints.of_blob(hostKey)
        try:
            raw_type = common.getNS(hostKey)[0]
        except Exception:  # a malformed blob: struct.error, IndexError...
            self.call.note("malformed host key")
            return defer.fail(UnknownHostKey(fp))
        # Device-controlled text going to logs and state: short, printable.
        key_type = "".join(c if c.isprintable() else "?" for c in raw_type[:64].decode("ascii", "replace"))
        self.call.fingerprint, self.call.key_type = fp, key_type
        self._candidate = self.handler.lookup(fp)
        if self._candidate is None and not self.handler.may_prove_unknown():
            self.handler.refuse_unknown(self, fp, key_type)
            return defer.fail(UnknownHostKey(fp))
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        """
        The device proved its host key: apply the policies (unknown devices,
        duplicate sessions), check the algorithms it negotiated are allowed
        for it, then, and only then, authenticate.
        """
        assert self.call is not None and self.call.fingerprint is not None
        # conch calls this after every NEWKEYS: a rekey the device starts
        # later must not run the policies or userauth again.
        if self.call.state is not CallState.SECURING:
            return
        # The KEXINIT payloads only feed the exchange hash; a rekey sets them
        # afresh.  Dropping them saves ~2 KiB per held session.
        self.__dict__.pop("ourKexInitPayload", None)
        self.__dict__.pop("otherKexInitPayload", None)
        device = self.handler.identify(self, self.call.fingerprint, self.call.key_type or "", self._candidate)
        if device is None:
            self.fail(self.call.reason or "refused")
            return
        self.call.device = device
        negotiated = [self.kexAlg, self.keyAlg]
        ciphers = self.currentEncryptions
        negotiated += [ciphers.outCipType, ciphers.inCipType, ciphers.outMACType, ciphers.inMACType]
        refused = algorithms_module.legacy_in_use(negotiated) - device.legacy_algorithms
        if refused:
            self.fail(
                f"device {device.name} negotiated legacy algorithm(s) {', '.join(sorted(refused))} "
                f"it has not opted into (legacy_algorithms)",
                outcome=Outcome.NOT_ALLOWED,
            )
            return
        self.call.advance(CallState.AUTHENTICATING)
        connection_service = CallHomeConnection(self)
        self.requestService(CallHomeUserAuth(device.credentials, connection_service))

    def authenticated(self) -> None:
        """Called by the connection service once userauth succeeded."""
        assert self.call is not None
        self.call.advance(CallState.CHANNELLING)
        self.call.authenticated = True
        self.handler.authenticated(self)

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the device: the session is not idle."""
        self.bytes_received += len(data)
        if self._idle_timer is not None:
            self._idle_timer.reset(self.idle_timeout)
        super().dataReceived(data)

    def start_keepalive(self, interval: float, max_missed: int) -> None:
        """Persistent mode: send keepalives; drop the call when they go unanswered."""
        if not isinstance(self.service, CallHomeConnection):
            return

        def dead(reason: str) -> None:
            self.fail(reason, outcome=Outcome.KEEPALIVE_TIMEOUT)

        self.keepalive = Keepalive(self.service, self.handler.clock, interval, max_missed, dead)
        self.keepalive.start()

    def stop_keepalive(self) -> None:
        """Stop sending keepalives."""
        if self.keepalive is not None:
            self.keepalive.stop()

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        self.fail(
            f"nothing received from the device for {self.idle_timeout:g}s (admission.idle_timeout)",
            outcome=Outcome.IDLE_TIMEOUT,
        )

    def netconf_started(self, session: NetconfSession) -> None:
        """The device's NETCONF hello arrived: hand the session over."""
        assert self.call is not None
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self.session = session
        self.call.advance(CallState.RUNNING)
        if self.idle_timeout:
            self._idle_timer = self.handler.clock.callLater(self.idle_timeout, self._idle_timed_out)
        self.handler.session_ready(self, session)

    def _handshake_timed_out(self) -> None:
        assert self.call is not None
        self._handshake_timer = None
        self.fail(
            f"no NETCONF session within {self.handshake_timeout:g}s "
            f"(stuck while {self.call.state})",
            outcome=Outcome.TIMEOUT,
        )

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Stop timers, report the call, and let conch stop its service."""
        for timer in (self._handshake_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._handshake_timer = self._idle_timer = None
        super().connectionLost(reason)
        if self.call is not None:
            if self.session is not None:
                self.call.note(self.session.close_reason)
            self.handler.call_ended(self)


class UnknownHostKey(Exception):
    """The device's host key is not in the registry."""


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
    _log = _quiet_logger()

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

    def serviceStarted(self) -> None:
        """Try the first method without probing."""
        self._next_attempt(allowed=None)

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> None:
        """Authenticated: start the connection service."""
        self.transport.setService(self.instance)

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> None:
        """That attempt failed: move to the next one the device allows."""
        try:
            methods, rest = common.getNS(packet)
        except Exception:  # struct.error on a truncated packet
            self.transport.fail("malformed authentication failure message", transport.DISCONNECT_PROTOCOL_ERROR)
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
            self.transport.fail(
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
        self.transport.fail(
            f"authentication failed: tried {tried}; device allows {offered}",
            transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
        )

    def _request(self, method: bytes, extra: bytes) -> None:
        self.transport.sendPacket(
            userauth.MSG_USERAUTH_REQUEST,
            common.NS(self.user) + common.NS(self.instance.name) + common.NS(method) + extra,
        )

    def _try_publickey(self, key: keys.Key | None) -> None:
        assert key is not None
        algorithm = self._signature_algorithm(key)
        blob = key.public().blob()
        signed = (
            common.NS(self.transport.sessionID)
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
        accepted = self.transport.peerExtensions.get(b"server-sig-algs")
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
            self.transport.fail(
                f"authentication failed: keyboard-interactive asked more than "
                f"{self.MAX_INTERACTIVE_ROUNDS} rounds of questions",
                transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
            )
            return
        try:
            _name, _instruction, _lang, data = common.getNS(packet, 3)
            (count,) = struct.unpack("!L", data[:4])
        except (struct.error, IndexError, ValueError):
            self.transport.fail("malformed keyboard-interactive request", transport.DISCONNECT_PROTOCOL_ERROR)
            return
        if count > 16:
            self.transport.fail("keyboard-interactive request with too many prompts", transport.DISCONNECT_PROTOCOL_ERROR)
            return
        answer = common.NS((self.credentials.password or "").encode("utf-8"))
        self.transport.sendPacket(
            userauth.MSG_USERAUTH_INFO_RESPONSE, struct.pack("!L", count) + answer * count
        )


class CallHomeConnection(connection.SSHConnection):
    """The SSH connection service: opens the one NETCONF channel."""

    _log = _quiet_logger()

    def __init__(self, call_transport: CallHomeTransport) -> None:
        super().__init__()
        self.call_transport = call_transport

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> int:
        """Answer the device's keepalives (keepalive@openssh.com and kin) with success."""
        return 1 if requestType.startswith(b"keepalive@") else 0

    def serviceStopped(self) -> None:
        """The call ended: no more keepalives."""
        self.call_transport.stop_keepalive()
        super().serviceStopped()

    def serviceStarted(self) -> None:
        """Authenticated: open the session channel for NETCONF."""
        super().serviceStarted()
        self.call_transport.authenticated()
        record = self.call_transport.call
        assert record is not None and record.device is not None
        device = record.device
        settings = self.call_transport.handler.netconf_settings(device)
        self.openChannel(NetconfChannel(self.call_transport, settings, conn=self))


class NetconfChannel(channel.SSHChannel):
    """
    A session channel running the ``netconf`` subsystem (RFC 6242 §3).

    The channel is the NetconfSession's transport: C{write} and
    C{loseConnection} are the channel's own.
    """

    name = b"session"
    _log = _quiet_logger()

    #: A larger window than conch's default lets big replies stream without
    #: waiting for a window adjust every 128 KiB.
    WINDOW = 2 * 1024 * 1024

    def __init__(self, call_transport: CallHomeTransport, settings: "NetconfSettings", **kwargs: object) -> None:
        super().__init__(localWindow=self.WINDOW, localMaxPacket=32768, **kwargs)  # type: ignore[arg-type]
        self.call_transport = call_transport
        self.settings = settings
        self.session: NetconfSession | None = None
        # A device may send its hello before it answers the subsystem
        # request (conch's own server does); keep those bytes for the session.
        self._early: list[bytes] = []

    def channelOpen(self, specificData: bytes) -> None:
        """Ask for the netconf subsystem."""
        d = self.conn.sendRequest(self, b"subsystem", common.NS(b"netconf"), wantReply=True)
        d.addCallbacks(self._subsystem_started, self._subsystem_refused)

    def openFailed(self, reason: Failure) -> None:
        """The device would not open a session channel."""
        self.call_transport.fail(f"device refused the session channel: {reason.value}")

    def _subsystem_started(self, _: object) -> None:
        assert self.call_transport.call is not None
        self.call_transport.call.advance(CallState.HELLO)
        device = self.call_transport.call.device
        self.session = NetconfSession(
            self.call_transport.handler.clock,
            offer_base_1_1=self.settings.offer_base_1_1,
            hello_timeout=self.settings.hello_timeout,
            rpc_timeout=self.settings.rpc_timeout,
            max_message_size=self.settings.max_message_size,
            label=device.name if device else self.call_transport.call.peer,
        )
        self.session.hello_received.addCallbacks(
            lambda hello: self.call_transport.netconf_started(self.session),  # type: ignore[arg-type]
            lambda failure: None,  # the session's close reason says why
        )
        self.session.makeConnection(self)
        early, self._early = b"".join(self._early), []
        if early:
            self.session.dataReceived(early)

    def _subsystem_refused(self, failure: Failure) -> None:
        self.call_transport.fail("device refused the netconf subsystem")

    def dataReceived(self, data: bytes) -> None:
        """NETCONF bytes from the device."""
        if self.session is not None:
            self.session.dataReceived(data)
        elif sum(map(len, self._early)) + len(data) <= self.settings.max_message_size:
            self._early.append(data)
        else:
            self.call_transport.fail("device sent too much before the netconf subsystem started")

    def extReceived(self, dataType: int, data: bytes) -> None:
        """stderr of the subsystem: not NETCONF; ignored."""

    def eofReceived(self) -> None:
        """The device will send nothing more: close the channel."""
        self.loseConnection()

    def loseConnection(self) -> None:
        """The session is over: close the channel and hang up the call."""
        super().loseConnection()
        self.call_transport.hang_up()

    def closed(self) -> None:
        """The channel is gone: end the session, then the whole call."""
        if self.session is not None:
            session, self.session = self.session, None
            session.connectionLost(Failure(ConnectionDone("channel closed")))
            if self.call_transport.call is not None:
                self.call_transport.call.note(session.close_reason)
        self.call_transport.hang_up()

