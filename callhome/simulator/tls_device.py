"""
The simulated device's TLS call home (RFC 8071 §4): it opens TCP to the
manager, then is the TLS *server* on that socket, asks for the manager's
client certificate and checks it against its trusted CA (or a pinned
fingerprint, its cert-to-name table), and serves NETCONF over TLS
(RFC 7589) from its datastore.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from callhome import fingerprints
from callhome.simulator.netconf_server import Datastore, NetconfServerProtocol
from callhome.tls.call import DrainedTLSProtocol


def load_or_create_certificate(path: Path, name: str = "callhome-device") -> tuple[bytes, bytes]:
    """
    A device's certificate and key (PEM): C{path} (``.pem``) and its
    ``.key`` beside it, created self-signed (EC P-256, ten years) if absent.
    """
    key_path = path.with_suffix(".key")
    if path.exists() and key_path.exists():
        return path.read_bytes(), key_path.read_bytes()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(cert_pem)
    return cert_pem, key_pem


def certificate_fingerprint(pem: bytes) -> str:
    """The SHA-256 fingerprint (``AB:CD:...``) of the first certificate in C{pem}."""
    cert = x509.load_pem_x509_certificate(pem)
    return fingerprints.of_certificate(cert.public_bytes(serialization.Encoding.DER))


class TlsDeviceProtocol(DrainedTLSProtocol):
    """
    One TLS call of the device.  C{done} fires when the call ends; the
    surface matches the SSH device's for the caller (C{gotVersion}: the
    handshake completed; C{authenticated}: the manager's hello arrived).
    """

    def __init__(self, factory: TLSMemoryBIOFactory, wrapped: NetconfServerProtocol) -> None:
        super().__init__(factory, wrapped)
        self.done: defer.Deferred[None] = defer.Deferred()
        self.failure: str | None = None
        self._session = wrapped  # Twisted drops wrappedProtocol when the connection ends

    @property
    def gotVersion(self) -> bool:
        """The TLS handshake completed (the manager took the call)."""
        return bool(self._handshakeDone)

    @property
    def authenticated(self) -> bool:
        """The manager's NETCONF hello arrived: it accepted the device."""
        return bool(self._session._hello_done)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """The call is over (with the TLS error, if any, in C{failure})."""
        if reason is not None and reason.check(SSL.Error):
            self.failure = str(reason.value)
        super().connectionLost(reason)
        if not self.done.called:
            self.done.callback(None)


@implementer(IOpenSSLServerConnectionCreator)
class _ServerConnections:
    """The device's side of each TLS connection, from its one context."""

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """Twisted's hook: a connection for one call."""
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        return connection


class TlsDeviceFactory(TLSMemoryBIOFactory):
    """
    Calls home over TLS as one device: its certificate, the CA (or the
    fingerprints) it trusts for the manager's certificate, its datastore.
    """

    noisy = False

    def __init__(
        self, certificate_pem: bytes, key_pem: bytes, datastore: Datastore,
        trusted_ca_pem: bytes | None = None, manager_fingerprints: frozenset[str] = frozenset(),
        offer_base_1_1: bool = True, username: str = "admin",
    ) -> None:
        self.datastore = datastore
        self.offer_base_1_1 = offer_base_1_1
        self.username = username
        self.certificate_pem = certificate_pem
        self.fingerprint = certificate_fingerprint(certificate_pem)
        self.manager_fingerprints = manager_fingerprints
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        chain = x509.load_pem_x509_certificates(certificate_pem)
        context.use_certificate(chain[0])
        for extra in chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(serialization.load_pem_private_key(key_pem, None))  # type: ignore[arg-type]
        store = context.get_cert_store()
        assert store is not None
        for ca in x509.load_pem_x509_certificates(trusted_ca_pem) if trusted_ca_pem else []:
            store.add_cert(crypto.X509.from_cryptography(ca))
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        super().__init__(_ServerConnections(context), False, Factory.forProtocol(Protocol))

    def _verify(self, connection: SSL.Connection, cert: crypto.X509, code: int, depth: int, ok: int) -> bool:
        """The manager's certificate: issued by a trusted CA, or pinned (the device's cert-to-name table)."""
        if depth == 0 and self.manager_fingerprints:
            der = cert.to_cryptography().public_bytes(serialization.Encoding.DER)
            if fingerprints.of_certificate(der) in self.manager_fingerprints:
                return True
        return bool(ok)

    def buildProtocol(self, addr: Any) -> TlsDeviceProtocol:
        """One call: a NETCONF server session inside TLS."""
        session = NetconfServerProtocol(self.datastore, self.offer_base_1_1)
        session.username = self.username
        return TlsDeviceProtocol(self, session)

    def doStart(self) -> None:
        """No factory bookkeeping is needed."""

    def doStop(self) -> None:
        """No factory bookkeeping is needed."""
