"""
The OpenSSL side of a TLS call home: one client context per config, and a
connection per call that checks nothing itself but records everything.

The device's certificate is never judged inside OpenSSL's verify callback:
the callback accepts, notes each complaint of the chain check
(L{callhome.tls.certificates.ChainError}) and lets the handshake finish,
so the call can end with a specific reason (expired, unknown CA, not
pinned...) instead of a bare "handshake failed".  The decision is taken
once the handshake proved the device holds its key
(L{callhome.tls.call.TlsCall.handshakeCompleted}); nothing NETCONF is sent
before.

Which certificate we present is chosen in that callback too, at depth 0:
the device's (or its group's) C{tls_certificate} if it has its own, else
the defaults'.  In TLS 1.2 and 1.3 the client sends its certificate after
it has read the server's, so the choice can follow the device's identity.
"""

from __future__ import annotations

from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from callhome.config import TlsIdentity
from callhome.tls.certificates import ChainError



class VerifyListener(Protocol):
    """What the verify callback tells a call (L{callhome.tls.call.TlsCall}), named here so this module does not import it."""

    def chain_complaint(self, complaint: ChainError) -> None:
        """OpenSSL's chain check complained."""

    def leaf_seen(self, certificate: crypto.X509, connection: SSL.Connection) -> None:
        """The device's own certificate, mid-handshake."""

#: TLS 1.2 cipher suites: ECDHE with AEAD only (TLS 1.3's are all modern).
CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
)

#: certificates in a device's chain we look at, at most: a chain of 100
#: must not cost 100 signature checks.
MAX_CHAIN_DEPTH = 8

#: Complaints kept per call (a hostile chain can make OpenSSL repeat itself).
MAX_COMPLAINTS = 16


class _LoadedIdentity:
    """A L{TlsIdentity} as pyOpenSSL objects, parsed once."""

    def __init__(self, identity: TlsIdentity) -> None:
        chain = x509.load_pem_x509_certificates(identity.certificate_pem)
        self.identity = identity
        self.leaf = chain[0]
        self.intermediates = chain[1:]
        key = serialization.load_pem_private_key(identity.private_key_pem, None)
        # The config reader loaded it already: one of the kinds TLS can use.
        if not isinstance(key, (dsa.DSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey, rsa.RSAPrivateKey)):
            raise ValueError(f"{identity.certificate_path}: a {type(key).__name__} cannot sign a TLS handshake")
        self.key = key


@implementer(IOpenSSLClientConnectionCreator)
class CallTlsOptions:
    """
    Builds the TLS client connection of each TLS call.

    @ivar trusted_ca: the C{tls_trusted_ca} bundle's path, if any.
    """

    def __init__(self, default: TlsIdentity | None, trusted_ca: str | None = None) -> None:
        self.trusted_ca = trusted_ca
        self._identities: dict[int, _LoadedIdentity] = {}
        self.default = self._loaded(default) if default is not None else None
        self.context = self._context()

    def _loaded(self, identity: TlsIdentity) -> _LoadedIdentity:
        loaded = self._identities.get(id(identity))
        if loaded is None or loaded.identity is not identity:
            loaded = self._identities[id(identity)] = _LoadedIdentity(identity)
        return loaded

    def _context(self) -> SSL.Context:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_cipher_list(CIPHERS.encode("ascii"))
        # No renegotiation, no compression, no session tickets to keep.
        context.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET)
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)  # ~34 KiB less per held session
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        context.set_verify(SSL.VERIFY_PEER, _verify)
        context.set_verify_depth(MAX_CHAIN_DEPTH)
        if self.trusted_ca is not None:
            context.load_verify_locations(self.trusted_ca)
            # An operator may trust an intermediate, not only a root.
            store = context.get_cert_store()
            assert store is not None  # a context always has one
            store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        if self.default is not None:
            context.use_certificate(self.default.leaf)
            for intermediate in self.default.intermediates:
                context.add_extra_chain_cert(intermediate)
            context.use_privatekey(self.default.key)
        return context

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """A new connection for one call (Twisted's hook)."""
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection

    def present(self, connection: SSL.Connection, identity: TlsIdentity | None) -> None:
        """Present C{identity} on C{connection} instead of the defaults' (None: keep those)."""
        if identity is None or (self.default is not None and identity is self.default.identity):
            return
        loaded = self._loaded(identity)
        # Only the leaf: pyOpenSSL has no per-connection chain.  A device- or
        # group-level certificate with intermediates sends the leaf alone
        # (docs/DESIGN.md).
        connection.use_certificate(loaded.leaf)
        connection.use_privatekey(loaded.key)


def _call_of(connection: SSL.Connection) -> VerifyListener | None:
    tls_protocol = connection.get_app_data()
    call = getattr(tls_protocol, "wrappedProtocol", None)
    return call if hasattr(call, "chain_complaint") else None


def _verify(connection: SSL.Connection, certificate: crypto.X509, code: int, depth: int, ok: int) -> bool:
    """
    OpenSSL's verify callback: note, never refuse (see the module's
    docstring); at depth 0, let the call choose what we present.
    """
    call = _call_of(connection)
    if call is None:
        return False  # not one of our calls: refuse rather than guess
    if not ok:
        call.chain_complaint(ChainError(depth, code, _error_text(code)))
    if depth == 0:
        call.leaf_seen(certificate, connection)
    return True


def _error_text(code: int) -> str:
    """OpenSSL's own words for an X509_V_ERR code."""
    from OpenSSL._util import ffi, lib  # X509_verify_cert_error_string has no public wrapper

    text: bytes = ffi.string(lib.X509_verify_cert_error_string(code))
    return text.decode("ascii", "replace")

