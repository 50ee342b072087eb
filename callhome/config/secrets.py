"""
Secrets and credentials in the config: passwords and passphrases given
inline, by environment variable (``_env``) or file (``_file``), and private
keys parsed once (an RSA key costs ~100 ms to load) and kept as conch
``Key`` objects.  No secret appears in an error message.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

from twisted.conch.ssh import keys

from callhome import fingerprints
from callhome.config.model import Credentials, TlsIdentity
from callhome.config.node import Node

#: the keys of a TLS identity at defaults, group or device level.
TLS_IDENTITY_KEYS = (
    "tls_certificate", "tls_private_key", "tls_private_key_passphrase",
    "tls_private_key_passphrase_env", "tls_private_key_passphrase_file",
)


class SecretReader:
    """
    Reads the secrets of one config file.

    @ivar warn: called with a key path and a problem the operator should fix.
    """

    def __init__(self, environ: Mapping[str, str], warn: Callable[[str, str], None]) -> None:
        self.environ = environ
        self.warn = warn
        # Parse each key file once even when many devices share it.
        self._keys: dict[tuple[str, str | None], keys.Key] = {}
        self._tls: dict[tuple[str, str, str | None], TlsIdentity] = {}

    def credentials(self, layers: list[dict[str, Node]], where: str, username_node: Node | None) -> Credentials | None:
        """The credentials C{layers} give, or None if they give none."""
        def pick(*group: str) -> dict[str, Node]:
            # A layer that sets any key of a group overrides the whole group
            # below it, so password_env on a device replaces password_file in
            # defaults rather than clashing with it.
            for layer in layers:
                chosen = {k: layer[k] for k in group if k in layer}
                if chosen:
                    return chosen
            return {}

        password = self.secret(pick("password", "password_env", "password_file"), "password")
        private_keys: tuple[keys.Key, ...] = ()
        key_fields = pick("private_key", "private_key_passphrase", "private_key_passphrase_env", "private_key_passphrase_file")
        if key_fields.get("private_key") is not None and key_fields["private_key"].value is not None:
            passphrase = self.secret(key_fields, "private_key_passphrase")
            private_keys = (self.private_key(key_fields["private_key"], passphrase),)
        if not private_keys and password is None:
            return None
        username = username_node.text() if username_node is not None else ""
        return Credentials(username=username, private_keys=private_keys, password=password)

    def secret(self, fields: dict[str, Node], base: str) -> str | None:
        """Read a secret given inline (C{base}), by C{base_env} or C{base_file}."""
        given = [k for k in (base, f"{base}_env", f"{base}_file") if k in fields]
        if len(given) > 1:
            raise fields[given[1]].error(f"give only one of {', '.join(given)}")
        if not given:
            return None
        node = fields[given[0]]
        if given[0] == base:
            self.warn(node.path, "secret written in the config file; prefer {0}_env or {0}_file".format(base))
            return node.text()
        if given[0].endswith("_env"):
            variable = node.text()
            if variable not in self.environ:
                raise node.error(f"environment variable {variable} is not set")
            return self.environ[variable]
        path = node.text()
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().rstrip("\r\n")
        except OSError as e:
            raise node.error(f"cannot read {path}: {e.strerror}") from None
        if not value:
            raise node.error(f"{path} is empty")
        self.check_private_file(node, path)
        return value

    def check_private_file(self, node: Node, path: str) -> None:
        """Warn about a secret file that other users can read."""
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return
        if mode & 0o077:
            self.warn(node.path, f"{path} is readable by other users (mode {mode & 0o777:o}); chmod 600 it")

    def private_key(self, node: Node, passphrase: str | None) -> keys.Key:
        path = node.text()
        cache_key = (os.path.abspath(path), passphrase)
        if cache_key in self._keys:
            return self._keys[cache_key]
        try:
            key = keys.Key.fromFile(path, passphrase=passphrase.encode("utf-8") if passphrase else None)
        except FileNotFoundError:
            raise node.error(f"no such file: {path}") from None
        except OSError as e:
            raise node.error(f"cannot read {path}: {e.strerror}") from None
        except keys.EncryptedKeyError:
            raise node.error(f"{path} is encrypted: set private_key_passphrase(_env/_file)") from None
        except (keys.BadKeyError, ValueError) as e:
            # No detail: a wrong passphrase and a corrupt file look alike, and
            # the message must never echo key material.
            hint = " or the passphrase is wrong" if passphrase else ""
            raise node.error(f"{path} is not a usable private key{hint} ({type(e).__name__})") from None
        if key.isPublic():
            raise node.error(f"{path} holds a public key; give the private key file")
        self.check_private_file(node, path)
        self._keys[cache_key] = key
        return key

    def tls_identity(self, layers: list[dict[str, Node]], where: str) -> TlsIdentity | None:
        """
        The certificate chain and key the manager presents on TLS calls,
        from the first layer that sets any of them (device, group, defaults).

        @raises ConfigError: a file is missing or unreadable, the key is
            encrypted without a passphrase, or key and certificate differ.
        """
        fields: dict[str, Node] = {}
        for layer in layers:
            fields = {k: layer[k] for k in TLS_IDENTITY_KEYS if k in layer}
            if fields:
                break
        if not fields:
            return None
        if "tls_certificate" not in fields or "tls_private_key" not in fields:
            present = next(iter(fields.values()))
            missing = "tls_private_key" if "tls_certificate" in fields else "tls_certificate"
            raise present.error(f"set {missing} too: a TLS identity is a certificate and its private key")
        passphrase = self.secret(fields, "tls_private_key_passphrase")
        cert_node, key_node = fields["tls_certificate"], fields["tls_private_key"]
        cache_key = (os.path.abspath(cert_node.text()), os.path.abspath(key_node.text()), passphrase)
        if cache_key not in self._tls:
            self._tls[cache_key] = self._read_tls_identity(cert_node, key_node, passphrase)
        return self._tls[cache_key]

    def _read_tls_identity(self, cert_node: Node, key_node: Node, passphrase: str | None) -> TlsIdentity:
        from cryptography import x509
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization

        cert_path, key_path = cert_node.text(), key_node.text()
        chain_pem = self._read(cert_node, cert_path)
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError:
            raise cert_node.error(f"{cert_path} holds no PEM certificate") from None
        key_pem = self._read(key_node, key_path)
        try:
            key = serialization.load_pem_private_key(key_pem, passphrase.encode("utf-8") if passphrase else None)
        except TypeError:
            # cryptography: "Password was not given but private key is encrypted" (or the reverse).
            if passphrase:
                raise key_node.error(f"{key_path} is not encrypted: remove tls_private_key_passphrase") from None
            raise key_node.error(f"{key_path} is encrypted: set tls_private_key_passphrase(_env/_file)") from None
        except (ValueError, UnsupportedAlgorithm) as e:
            hint = " or the passphrase is wrong" if passphrase else ""
            raise key_node.error(f"{key_path} is not a usable PEM private key{hint} ({type(e).__name__})") from None
        from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

        if not isinstance(key, (dsa.DSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey, rsa.RSAPrivateKey)):
            raise key_node.error(f"{key_path} holds a {type(key).__name__}, which cannot sign a TLS handshake")
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        encoding = serialization.Encoding.PEM
        if key.public_key().public_bytes(encoding, public) != chain[0].public_key().public_bytes(encoding, public):
            raise key_node.error(f"{key_path} is not the private key of the certificate in {cert_path}")
        self.check_private_file(key_node, key_path)
        clear = key.private_bytes(encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return TlsIdentity(
            certificate_path=cert_path,
            certificate_pem=b"".join(c.public_bytes(encoding) for c in chain),
            private_key_pem=clear,
            fingerprint=fingerprints.of_certificate(chain[0].public_bytes(serialization.Encoding.DER)),
        )

    @staticmethod
    def _read(node: Node, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise node.error(f"no such file: {path}") from None
        except OSError as e:
            raise node.error(f"cannot read {path}: {e.strerror}") from None
