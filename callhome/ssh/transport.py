"""
conch's SSH client transport on a socket the device opened: the host-key
check *is* the device identification (RFC 8071 C5-C7); the call's record,
timers and keepalives live here; what the call does is its handler's
(the manager's) business.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Protocol

from twisted.conch.ssh import common, transport
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from callhome import algorithms as algorithms_module
from callhome import fingerprints
from callhome.call.record import CallRecord, CallState, Outcome
from callhome.logs import LevelLogger, conch_logger
from callhome.netconf.session import NetconfSession
from callhome.ssh.aead import AeadTransportMixin
from callhome.ssh.connection import CallHomeConnection
from callhome.ssh.keepalive import Keepalive
from callhome.ssh.userauth import CallHomeUserAuth
from callhome.timerwheel import Job, wheel_for

if TYPE_CHECKING:  # pragma: no cover
    from callhome.config import Device, NetconfSettings


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


class CallHomeTransport(AeadTransportMixin, transport.SSHClientTransport):
    """
    conch's SSH client transport on a socket the device opened, with
    AES-GCM (L{AeadTransportMixin}).

    @ivar handler: the manager this call reports to.
    @ivar call: the record of this call.
    """

    _log = conch_logger("callhome.ssh.conch")
    log = LevelLogger(namespace="callhome.ssh")

    def __init__(
        self,
        handler: CallHandler,
        handshake_timeout: float,
        idle_timeout: float | None = None,
    ) -> None:
        self.handler = handler
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.call: CallRecord | None = None
        self.session: NetconfSession | None = None
        self._handshake_timer: IDelayedCall | None = None
        self.keepalive: Keepalive | None = None
        self._idle_watch: Job | None = None
        self._idle_mark = (0, 0.0)
        self._candidate: "Device | None" = None
        self.bytes_received = 0

    @classmethod
    def offering(cls, offer: dict[str, list[bytes]]) -> "type[CallHomeTransport]":
        """
        This class with C{offer}'s algorithm lists as class attributes
        (one subclass per distinct offer, kept).

        Per-call copies of the lists took five entries of every call's
        C{__dict__}, which then outgrew its 42-key table during the
        handshake: 752 bytes more for each held session.
        """
        key = tuple((name, tuple(algorithms)) for name, algorithms in sorted(offer.items()))
        subclass = _OFFERING.get(key)
        if subclass is None:
            subclass = _OFFERING[key] = type(cls.__name__, (cls,), {name: list(algorithms) for name, algorithms in key})
        return subclass

    def connectionMade(self) -> None:
        """Start the call: version, KEXINIT, and the handshake deadline."""
        assert self.transport is not None  # set by makeConnection
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
        # So are the ephemeral ECDH keys (OpenSSL objects).
        for name in ("ourKexInitPayload", "otherKexInitPayload", "ecPriv", "ecPub"):
            self.__dict__.pop(name, None)
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
        # The userauth service and the device's ext-info served their turn.
        self.__dict__.pop("instance", None)
        self.__dict__.pop("peerExtensions", None)
        self.handler.authenticated(self)

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the device: the session is not idle (L{_check_idle} sees the count move)."""
        self.bytes_received += len(data)
        super().dataReceived(data)

    def start_keepalive(self, interval: float, max_missed: int) -> None:
        """Persistent mode: send keepalives; drop the call when they go unanswered."""
        if not isinstance(self.service, CallHomeConnection):
            return
        on_tick = None
        if self._idle_watch is not None and interval <= self._idle_watch.interval:
            # One wheel job per held session: the idle check rides on the
            # keepalive's tick, which comes at least as often.
            self._stop_idle_watch()
            on_tick = self._check_idle
        self.keepalive = Keepalive(self.service, self.handler.clock, interval, max_missed, self._keepalives_unanswered, on_tick)
        self.keepalive.start()

    def _keepalives_unanswered(self, reason: str) -> None:
        self.fail(reason, outcome=Outcome.KEEPALIVE_TIMEOUT)

    def stop_keepalive(self) -> None:
        """Stop sending keepalives."""
        if self.keepalive is not None:
            self.keepalive.stop()

    def _watch_idle(self, timeout: float) -> None:
        """
        Drop the call when nothing comes from the device for C{timeout}
        seconds (admission.idle_timeout).

        A check on the timer wheel every tenth of the timeout, comparing
        the byte count, rather than a reactor timer reset on every read:
        no work per packet and no DelayedCall per held session.  The call
        ends between C{timeout} and 1.1 x C{timeout} (+1 s) after the
        last byte.
        """
        self._idle_mark = (self.bytes_received, self.handler.clock.seconds())
        self._idle_watch = wheel_for(self.handler.clock).every(max(1.0, timeout / 10), self._check_idle)

    def _check_idle(self) -> bool:
        """End the call if the device has been silent for idle_timeout; whether the call goes on."""
        assert self.idle_timeout is not None
        count, since = self._idle_mark
        now = self.handler.clock.seconds()
        if self.bytes_received != count:
            self._idle_mark = (self.bytes_received, now)
        elif now - since >= self.idle_timeout:
            self._stop_idle_watch()
            self.fail(
                f"nothing received from the device for {self.idle_timeout:g}s (admission.idle_timeout)",
                outcome=Outcome.IDLE_TIMEOUT,
            )
            return False
        return True

    def _stop_idle_watch(self) -> None:
        if self._idle_watch is not None:
            self._idle_watch.stop()
            self._idle_watch = None

    def netconf_started(self, session: NetconfSession) -> None:
        """The device's NETCONF hello arrived: hand the session over."""
        assert self.call is not None
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self.session = session
        self.call.advance(CallState.RUNNING)
        if self.idle_timeout:
            self._watch_idle(self.idle_timeout)
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
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self._stop_idle_watch()
        super().connectionLost(reason)
        if self.call is not None:
            if self.session is not None:
                self.call.note(self.session.close_reason)
            self.handler.call_ended(self)


for _name, _algorithms in algorithms_module.offer().items():
    setattr(CallHomeTransport, _name, _algorithms)
#: CallHomeTransport.offering's subclasses, by offer.
_OFFERING: dict[tuple[tuple[str, tuple[bytes, ...]], ...], type[CallHomeTransport]] = {}


class UnknownHostKey(Exception):
    """The device's host key is not in the registry."""
