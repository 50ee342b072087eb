"""
A device's certificate as the manager judges it: who it says it is
(fingerprint, subject, names), whether it is in date, and what OpenSSL's
chain check said about it, each in words an operator can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from callhome import fingerprints
from callhome.config.model import tls_name_key

#: OpenSSL's X509_V_ERR_* codes we name ourselves (the rest: OpenSSL's text).
CERT_NOT_YET_VALID = 9
CERT_HAS_EXPIRED = 10
DEPTH_ZERO_SELF_SIGNED_CERT = 18
SELF_SIGNED_CERT_IN_CHAIN = 19
UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
CERT_CHAIN_TOO_LONG = 22

_WORDS = {
    DEPTH_ZERO_SELF_SIGNED_CERT: "self-signed, and not issued by tls_trusted_ca",
    SELF_SIGNED_CERT_IN_CHAIN: "issued by a CA not in tls_trusted_ca (self-signed root in the chain)",
    UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "issued by a CA not in tls_trusted_ca (unknown CA)",
    UNABLE_TO_VERIFY_LEAF_SIGNATURE: "issued by a CA not in tls_trusted_ca (unknown CA)",
    CERT_CHAIN_TOO_LONG: "its chain is too long",
}


@dataclass(frozen=True)
class ChainError:
    """One complaint of OpenSSL's chain check: at which depth (0: the device's own), which code, its text."""

    depth: int
    code: int
    text: str

    def describe(self) -> str:
        """The complaint in an operator's words."""
        words = _WORDS.get(self.code, self.text)
        where = "" if self.depth == 0 else f" (certificate {self.depth} of the chain)"
        return f"{words}{where}"


def _text(value: Any, limit: int = 200) -> str:
    """Device-controlled text for logs and state: printable and short."""
    return "".join(c if c.isprintable() else "?" for c in str(value))[:limit]


class PeerCertificate:
    """
    The certificate a device presented, parsed once after the handshake;
    what only a refusal or the quarantine needs (subject, issuer, names) is
    read when first asked for (a served call never asks for most of it).

    @ivar fingerprint: SHA-256, ``AB:CD:...`` (the device's identity when pinned).
    """

    def __init__(self, cert: x509.Certificate, fingerprint: str | None = None) -> None:
        self.cert = cert
        self.fingerprint = fingerprint or fingerprints.of_certificate(cert.public_bytes(serialization.Encoding.DER))
        self.not_before: datetime = cert.not_valid_before_utc
        self.not_after: datetime = cert.not_valid_after_utc

    @classmethod
    def from_der(cls, der: bytes) -> "PeerCertificate":
        """Parse a DER certificate (raises ValueError if it is not one)."""
        return cls(x509.load_der_x509_certificate(der), fingerprints.of_certificate(der))

    @cached_property
    def subject(self) -> str:
        """The subject, RFC 4514 (printable, short)."""
        return _text(self.cert.subject.rfc4514_string())

    @cached_property
    def issuer(self) -> str:
        """The issuer, RFC 4514 (printable, short)."""
        return _text(self.cert.issuer.rfc4514_string())

    @cached_property
    def key_type(self) -> str:
        """The key type, as the call's record shows it."""
        return key_type(self.cert)

    @cached_property
    def names(self) -> tuple[str, ...]:
        """SAN DNS names and IP addresses, then the subject's CNs."""
        names: list[str] = []
        try:
            san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names += [_text(n) for n in san.get_values_for_type(x509.DNSName)]
            names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
        except (x509.ExtensionNotFound, ValueError):
            pass
        names += [_text(a.value) for a in self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        return tuple(names[:64])

    def validity_problem(self, now: float) -> str | None:
        """Why the certificate is not in date at C{now} (seconds since the epoch), if it is not."""
        when = datetime.fromtimestamp(now, timezone.utc)
        if when < self.not_before:
            return f"not yet valid (valid from {self.not_before.isoformat()})"
        if when > self.not_after:
            return f"expired on {self.not_after.isoformat()}"
        return None

    def carries(self, wanted: tuple[str, ...]) -> bool:
        """Whether it carries one of C{wanted} (DNS names case-insensitively, IP addresses by value)."""
        have = set(self.name_keys())
        return any(tls_name_key(w) in have for w in wanted)

    def name_keys(self) -> list[str]:
        """Its names as the registry indexes C{tls_names} (L{callhome.config.model.tls_name_key})."""
        return [tls_name_key(n) for n in self.names]

    def summary(self) -> dict[str, Any]:
        """What the quarantine and the events show of it."""
        return {
            "subject": self.subject, "issuer": self.issuer, "names": list(self.names),
            "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat(),
        }


def key_type(cert: x509.Certificate) -> str:
    """The certificate's key type, as the call's record shows it (``x509 ec-p256``...)."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"x509 rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"x509 ec-{key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "x509 ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "x509 ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return "x509 dsa"
    return "x509"


def from_pyopenssl(cert: Any) -> PeerCertificate:
    """A L{PeerCertificate} from a pyOpenSSL X509 (what OpenSSL's verify callback gives)."""
    fingerprint = cert.digest("sha256").decode("ascii").upper()
    return PeerCertificate(cert.to_cryptography(), fingerprint)
