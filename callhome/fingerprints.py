"""
SSH host-key fingerprints in the one form we compare: ``SHA256:<base64>``.

OpenSSH's ``ssh-keygen -lf`` prints unpadded base64; conch keeps the ``=``
padding.  Operators paste either, with or without the ``SHA256:`` prefix,
or a whole public-key line; all of them normalise to the same string here.
"""

from __future__ import annotations

import base64
import binascii

from twisted.conch.ssh import keys


class FingerprintError(ValueError):
    """A host-key entry is neither a SHA-256 fingerprint nor a public key."""


def of_key(key: keys.Key) -> str:
    """Return the normalised SHA-256 fingerprint of a conch key."""
    return normalise(key.fingerprint(keys.FingerprintFormats.SHA256_BASE64))


def of_blob(blob: bytes) -> str:
    """Return the normalised SHA-256 fingerprint of an SSH public-key blob."""
    import hashlib

    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def normalise(text: str) -> str:
    """
    Normalise a SHA-256 fingerprint to ``SHA256:<unpadded base64>``.

    @raises FingerprintError: if it is not one.
    """
    value = text.strip()
    if value.upper().startswith("MD5:") or value.count(":") >= 15:
        raise FingerprintError(
            "MD5 fingerprints are not accepted; give the SHA256 form that "
            "'ssh-keygen -lf' prints"
        )
    if value.startswith("SHA256:"):
        value = value[len("SHA256:") :]
    value = value.rstrip("=")
    try:
        digest = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise FingerprintError(f"{text!r} is not a SHA256 fingerprint") from None
    if len(digest) != 32:
        raise FingerprintError(f"{text!r} is not a SHA256 fingerprint (wrong length)")
    return "SHA256:" + value


def from_entry(entry: str) -> str:
    """
    Turn a config ``host_keys`` entry into a normalised fingerprint.

    The entry is a fingerprint (``SHA256:...``) or an OpenSSH public-key
    line (``ssh-ed25519 AAAA... comment``).
    """
    text = entry.strip()
    if " " in text:
        try:
            key = keys.Key.fromString(text.encode("utf-8"))
        except (keys.BadKeyError, ValueError, IndexError, binascii.Error) as e:
            raise FingerprintError(f"not a valid OpenSSH public key line: {e}") from None
        if not key.isPublic():
            raise FingerprintError("expected a public key, got a private key")
        return of_key(key)
    return normalise(text)


# --- certificates ---------------------------------------------------------------------

_CERT_PREFIXES = ("sha256 fingerprint=", "sha256:", "sha256 ")


def is_certificate(text: str) -> bool:
    """Whether C{text} looks like a certificate fingerprint (hex), not an SSH one."""
    try:
        normalise_certificate(text)
    except FingerprintError:
        return False
    return True


def normalise_certificate(text: str) -> str:
    """
    Normalise a certificate's SHA-256 fingerprint to ``AB:CD:...`` (upper
    case, colons), the form ``openssl x509 -noout -fingerprint -sha256``
    prints; the ``sha256 Fingerprint=`` prefix, case and colons are optional.

    @raises FingerprintError: if it is not one.
    """
    value = text.strip()
    lowered = value.lower()
    for prefix in _CERT_PREFIXES:
        if lowered.startswith(prefix):
            value = value[len(prefix):].strip()
            break
    digits = value.replace(":", "")
    if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise FingerprintError(
            f"{text!r} is not a certificate SHA-256 fingerprint (64 hex digits, "
            "as 'openssl x509 -noout -fingerprint -sha256' prints)"
        )
    if ":" in value and value.count(":") != 31:
        raise FingerprintError(f"{text!r} is not a certificate SHA-256 fingerprint (colons between every byte or none)")
    digits = digits.upper()
    return ":".join(digits[i:i + 2] for i in range(0, 64, 2))


def of_certificate(der: bytes) -> str:
    """The normalised SHA-256 fingerprint of a DER certificate."""
    import hashlib

    digits = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digits[i:i + 2] for i in range(0, 64, 2))


def normalise_any(text: str) -> str:
    """A host-key or a certificate fingerprint, normalised (approvals take either)."""
    if is_certificate(text):
        return normalise_certificate(text)
    return normalise(text)
