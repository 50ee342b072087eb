"""
Throwaway certificates for the TLS tests: CAs, intermediates, device and
manager certificates, expired ones, long chains, written as PEM files.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from callhome import fingerprints

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


@dataclass
class Issued:
    """A certificate and its key; C{pem} and C{key_pem} as PEM, C{chain} the issuers' PEM after it."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: bytes = b""

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    @property
    def fingerprint(self) -> str:
        return fingerprints.of_certificate(self.cert.public_bytes(serialization.Encoding.DER))

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write C{name}.pem (the leaf, then its chain) and C{name}.key (mode 600)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(self.pem + self.chain)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path


def issue(
    name: str, issuer: Issued | None = None, ca: bool = False, names: tuple[str, ...] = (),
    not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
    padding: int = 0,
) -> Issued:
    """
    A certificate for C{name}: self-signed without C{issuer}; C{names} go in
    the SAN (IP addresses as such); C{padding} bytes of junk extension make
    a huge one.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        entries: list[x509.GeneralName] = []
        for n in names:
            try:
                entries.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                entries.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    if padding:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x04" + b"x" * padding), critical=False)
    signer = issuer.key if issuer else key
    cert = builder.sign(signer, hashes.SHA256())
    chain = (issuer.pem + issuer.chain) if issuer and issuer.chain is not None and not _self_signed(issuer) else b""
    return Issued(cert, key, chain)


def _self_signed(issued: Issued) -> bool:
    return issued.cert.issuer == issued.cert.subject
