"""
One TLS call home (RFC 8071 §4, RFC 7589): on the socket the device
opened we are the TLS client; once the handshake proved the device holds
its certificate's key, the certificate identifies it (pinned fingerprint,
or a trusted CA and ``tls_names``); then NETCONF runs directly over TLS.

The call reports to the same manager as an SSH call (identify, session
ready, call ended) and ends the same way (L{callhome.call.record}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import TimeoutMixin
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from callhome.call.record import CallRecord, CallState, Outcome
from callhome.logs import LevelLogger
from callhome.netconf.session import NetconfSession
from callhome.tls.certificates import CERT_HAS_EXPIRED, CERT_NOT_YET_VALID, ChainError, PeerCertificate, from_pyopenssl
from callhome.tls.context import MAX_COMPLAINTS, CallTlsOptions
from callhome.tls.probe import Probe

if TYPE_CHECKING:  # pragma: no cover
    from callhome.call.manager import Manager
    from callhome.config import Device


class DrainedTLSProtocol(TLSMemoryBIOProtocol):
    """
    Twisted's TLS, writing out everything OpenSSL produced at once.

    Twisted reads at most 32 KiB from the send BIO per flush; a handshake
    flight larger than that (a long certificate chain) then waits for the
    peer, which waits for the rest: both stall until a timeout.
    """

    def _flushSendBIO(self) -> None:
        while True:
            try:
                data = self._tlsConnection.bio_read(2**15)
            except SSL.WantReadError:
                return  # the send BIO is empty
            assert self.transport is not None  # OpenSSL produced bytes: we are connected
            self.transport.write(data)


class CallTLSProtocol(DrainedTLSProtocol):
    """
    Twisted's TLS on one call, which also notices what no TLS server sends
    first: an SSH banner (an SSH device dialling the TLS port).
    """

    wrappedProtocol: "TlsCall"

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the device, before decryption."""
        call = self.wrappedProtocol
        call.bytes_received += len(data)
        call.resetTimeout()
        if call.first_bytes is None:
            call.first_bytes = data[:8]
        super().dataReceived(data)


@implementer(IHandshakeListener)
class TlsCall(TimeoutMixin, Protocol):
    """
    The call: its record, its timers, the device's identity, and the
    NETCONF session over TLS.

    @ivar call: the record of this call.
    @ivar session: the NETCONF session once the device is identified.
    @ivar keepalive: the NETCONF probe of a held (persistent) session.
    """

    log = LevelLogger(namespace="callhome.tls")
    transport: Any

    def __init__(self, manager: "Manager", options: CallTlsOptions, handshake_timeout: float, idle_timeout: float | None) -> None:
        self.manager = manager
        self.options = options
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.call: CallRecord | None = None
        self.session: NetconfSession | None = None
        self.keepalive: Probe | None = None
        self.bytes_received = 0
        self.first_bytes: bytes | None = None
        self.complaints: list[ChainError] = []
        self.peer_certificate: PeerCertificate | None = None
        self._candidate: "Device | None" = None
        self._handshake_timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None

    # --- the connection --------------------------------------------------------------

    def connectionMade(self) -> None:
        """TCP is up and our ClientHello is on its way: start the call's clock."""
        peer = self.transport.getPeer()
        host = getattr(peer, "host", str(peer))
        port = getattr(peer, "port", None)
        self.call = CallRecord(
            peer=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            started=self.manager.clock.seconds(),
            source=host,
            transport="tls",
        )
        self._handshake_timer = self.manager.clock.callLater(self.handshake_timeout, self._handshake_timed_out)
        if self.idle_timeout:
            self.setTimeout(self.idle_timeout)

    @property
    def callLater(self) -> Any:  # TimeoutMixin's hook, a method there
        """TimeoutMixin's clock: the manager's, not the global reactor."""
        return self.manager.clock.callLater

    def timeoutConnection(self) -> None:
        """TimeoutMixin: nothing came from the device for admission.idle_timeout."""
        self.fail(f"nothing received from the device for {self.idle_timeout:g}s (admission.idle_timeout)", Outcome.IDLE_TIMEOUT)

    def _handshake_timed_out(self) -> None:
        assert self.call is not None
        self._handshake_timer = None
        stage = "TLS handshake" if self.call.state is CallState.SECURING else str(self.call.state)
        self.fail(f"no NETCONF session within {self.handshake_timeout:g}s (stuck in {stage})", Outcome.TIMEOUT)

    def fail(self, reason: str, outcome: Outcome | None = None) -> None:
        """End the call now, with C{outcome} if given, and C{reason}."""
        assert self.call is not None
        if outcome is not None:
            self.call.end(outcome, reason)
        self.call.note(reason)
        self.hang_up()

    def hang_up(self) -> None:
        """Close the connection: TLS close_notify, then TCP (aborted if the device stalls)."""
        transport = self.transport
        if transport is None:
            return
        # Already closing (the NETCONF session closed it, or an earlier
        # hang-up): still arm the abort, or a device that answers
        # close-session but never sends close_notify holds the call for ever.
        if not getattr(transport, "disconnecting", False):
            transport.loseConnection()
        # A device that never reads our close_notify must not hold the socket.
        if self._abort_timer is None:
            self._abort_timer = self.manager.clock.callLater(5, _abort_if_open, transport)

    # --- OpenSSL's callbacks (L{callhome.tls.context}) --------------------------------

    def chain_complaint(self, complaint: ChainError) -> None:
        """OpenSSL's chain check complained (noted; judged after the handshake)."""
        if len(self.complaints) < MAX_COMPLAINTS:
            self.complaints.append(complaint)

    def leaf_seen(self, certificate: crypto.X509, connection: SSL.Connection) -> None:
        """The device's own certificate, mid-handshake: choose what we present to it."""
        if self.peer_certificate is not None:
            return  # OpenSSL asks again at depth 0 after a complaint: judged once
        try:
            self.peer_certificate = from_pyopenssl(certificate)
        except ValueError:
            return
        candidate = self._lookup(self.peer_certificate)
        self._candidate = candidate
        identity = candidate.tls if candidate is not None else None
        self.options.present(connection, identity)

    def _lookup(self, cert: PeerCertificate) -> "Device | None":
        """The device this certificate names: by pinned fingerprint, else by tls_names (CA-issued)."""
        device = self.manager.lookup(cert.fingerprint)
        if device is not None:
            return device
        if self.options.trusted_ca is None:
            return None
        return self.manager.lookup_tls_name(cert)

    # --- after the handshake -----------------------------------------------------------

    def handshakeCompleted(self) -> None:
        """The device proved its key: judge its certificate, then start NETCONF (or refuse)."""
        record = self.call
        assert record is not None
        cert = self.peer_certificate
        if cert is None:
            self.fail("the device sent no usable certificate", Outcome.HANDSHAKE_FAILED)
            return
        record.fingerprint, record.key_type = cert.fingerprint, cert.key_type
        refusal = self._judge(cert)
        if refusal is not None:
            outcome, reason = refusal
            self.fail(reason, outcome)
            self.manager.log.warn("refused TLS call from {peer}: {reason}; nothing sent", peer=record.peer, reason=reason)
            return
        device = self.manager.identify(self, cert.fingerprint, cert.key_type, self._candidate, certificate=cert)
        if device is None:
            self.fail(record.reason or "refused")
            return
        if device.tls is None and self.options.default is None:
            self.fail(f"device {device.name} has no TLS identity (tls_certificate, tls_private_key)", Outcome.NOT_ALLOWED)
            return
        record.device = device
        record.authenticated = True
        record.advance(CallState.HELLO)
        self.manager.authenticated(self)
        self._start_netconf(device)

    def _judge(self, cert: PeerCertificate) -> tuple[Outcome, str] | None:
        """Why this certificate does not identify a device we may talk to, if it does not."""
        dated = cert.validity_problem(self.manager.clock.seconds())
        if dated is not None:
            return Outcome.CERTIFICATE_REFUSED, f"certificate not trusted: {dated}"
        candidate = self._candidate
        pinned = candidate is not None and cert.fingerprint in candidate.certificates
        if pinned:
            assert candidate is not None
            if candidate.tls_names and not cert.carries(candidate.tls_names):
                return Outcome.CERTIFICATE_REFUSED, (
                    f"name mismatch: the certificate of {candidate.name} carries none of its tls_names "
                    f"({', '.join(candidate.tls_names)}); it names {', '.join(cert.names) or 'nothing'}")
            return None
        complaints = [c for c in self.complaints if c.code not in (CERT_HAS_EXPIRED, CERT_NOT_YET_VALID)]
        if self.options.trusted_ca is not None:
            if complaints:
                return Outcome.CERTIFICATE_REFUSED, f"certificate not trusted: {complaints[0].describe()}"
            return None if candidate is not None else self._unknown_policy(cert)
        return self._unknown_policy(cert)

    def _unknown_policy(self, cert: PeerCertificate) -> tuple[Outcome, str] | None:
        """An unknown certificate: refused now under reject; quarantine and accept are the manager's."""
        if self.manager.may_prove_unknown():
            return None
        self_signed = cert.subject == cert.issuer
        return Outcome.UNKNOWN_CERTIFICATE, (
            f"unknown certificate {cert.fingerprint}"
            + (" (self-signed, not pinned)" if self_signed else " (not pinned in any device's certificates)"))

    def _start_netconf(self, device: "Device") -> None:
        settings = self.manager.netconf_settings(device)
        session = self.session = NetconfSession(
            self.manager.clock,
            offer_base_1_1=settings.offer_base_1_1,
            hello_timeout=settings.hello_timeout,
            rpc_timeout=settings.rpc_timeout,
            max_message_size=settings.max_message_size,
            label=device.name,
        )
        session.hello_received.addCallbacks(lambda hello: self._netconf_started(session), lambda failure: None)
        # The session's own close (after close-session, or on a protocol
        # error) goes through hang_up, which bounds how long TLS may linger.
        session.on_disconnect = self.hang_up
        session.makeConnection(self.transport)

    def _netconf_started(self, session: NetconfSession) -> None:
        assert self.call is not None
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self.call.advance(CallState.RUNNING)
        self.manager.session_ready(self, session)

    def dataReceived(self, data: bytes) -> None:
        """NETCONF bytes (decrypted): only once the device is identified."""
        if self.session is not None:
            self.session.dataReceived(data)
        elif self.call is not None and self.call.reason is None:
            self.fail("the device sent data before we spoke", Outcome.SESSION_FAILED)

    # --- keepalives --------------------------------------------------------------------

    def start_keepalive(self, interval: float, max_missed: int) -> None:
        """Persistent mode: TCP keepalives and a NETCONF probe every C{interval} (RFC 8071 §7, see docs/DESIGN.md)."""
        if self.session is None:
            return
        socket_transport = getattr(self.transport, "transport", None)
        if socket_transport is not None and hasattr(socket_transport, "setTcpKeepAlive"):
            socket_transport.setTcpKeepAlive(True)

        def dead(reason: str) -> None:
            self.fail(reason, Outcome.KEEPALIVE_TIMEOUT)

        self.keepalive = Probe(self.session, self.manager.clock, interval, max_missed, dead)
        self.keepalive.start()

    def stop_keepalive(self) -> None:
        """Stop probing."""
        if self.keepalive is not None:
            self.keepalive.stop()

    # --- the end -------------------------------------------------------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop the timers, end the session, name what went wrong, report the call."""
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self.setTimeout(None)
        self.stop_keepalive()
        record = self.call
        if record is None:
            return
        # What the TLS layer says first: a device's alert explains the
        # "connection closed" the session would otherwise report.
        why = describe_loss(reason, self.first_bytes, record.state)
        if why is not None:
            outcome, text = why
            record.end(outcome, text)
        if self.session is not None:
            self.session.connectionLost(reason)
            record.note(self.session.close_reason)
        self.manager.call_ended(self)


def describe_loss(reason: Failure, first_bytes: bytes | None, state: CallState) -> tuple[Outcome, str] | None:
    """
    What a lost TLS connection says about the call: an SSH banner, not TLS
    at all, a TLS alert from the device (it refused our certificate), or
    nothing worth adding (a clean close).
    """
    if state is CallState.SECURING and first_bytes is not None and first_bytes.startswith(b"SSH-"):
        return Outcome.HANDSHAKE_FAILED, "not TLS: the device sent an SSH banner (an SSH call home on the TLS port?)"
    if not reason.check(SSL.Error):
        if state is CallState.SECURING and first_bytes is None:
            return Outcome.HANDSHAKE_FAILED, "the device closed the connection before the TLS handshake"
        return None
    assert reason.value is not None
    text = _ssl_error_text(reason.value)
    if "alert" in text:
        # The device's alert: in TLS 1.3 it comes after our Finished, so it
        # may arrive with the hello; either way it refused us.
        return Outcome.AUTH_FAILED, f"the device refused our certificate (TLS alert received: {text})"
    if state is CallState.SECURING:
        return Outcome.HANDSHAKE_FAILED, f"TLS handshake failed: {text}" + (
            " (not TLS?)" if "wrong version number" in text or "packet length" in text or "unexpected" in text else "")
    return Outcome.SESSION_FAILED, f"TLS error: {text}"


def _ssl_error_text(error: BaseException) -> str:
    """OpenSSL's reason strings of an SSL.Error, e.g. ``sslv3 alert bad certificate``."""
    parts = []
    for entry in getattr(error, "args", [[]])[0] or []:
        if isinstance(entry, tuple) and len(entry) == 3:
            parts.append(str(entry[2]))
    return "; ".join(parts)[:200] or type(error).__name__


def _abort_if_open(transport: Any) -> None:
    if getattr(transport, "connected", False):
        transport.abortConnection()
