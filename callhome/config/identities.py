"""
A device's identities in the config: SSH host keys, TLS certificate
fingerprints and ``tls_names``, each normalised and owned by one device
only (a key listed for two devices would make either the other).
"""

from __future__ import annotations

from typing import Callable

from callhome import fingerprints
from callhome.config.model import ConfigError, tls_name_key
from callhome.config.node import Node


class Identities:
    """
    Reads the identities of the config's devices, remembering which device
    owns each so a second owner is refused with both names.
    """

    def __init__(self) -> None:
        #: normalised identity -> the device that lists it.
        self.owners: dict[str, str] = {}

    def _claim(self, entry_path: str, key: str, what: str, device: str) -> None:
        owner = self.owners.get(key)
        if owner is not None and owner != device:
            raise ConfigError(entry_path, f"{what} is already listed for device {owner!r}")
        self.owners[key] = device

    def _fingerprints(self, node: Node | None, device: str, normalise: Callable[[str], str], kind: str, empty: str) -> frozenset[str]:
        found: set[str] = set()
        if node is None:
            return frozenset()
        for entry in node.items():
            try:
                fp = normalise(entry.text())
            except fingerprints.FingerprintError as e:
                raise entry.error(str(e)) from None
            self._claim(entry.path, fp, f"{kind} {fp}", device)
            found.add(fp)
        if not found:
            raise node.error(empty)
        return frozenset(found)

    def host_keys(self, node: Node | None, device: str) -> frozenset[str]:
        """``host_keys``: SHA256 fingerprints or OpenSSH public-key lines."""
        return self._fingerprints(node, device, fingerprints.from_entry, "host key", "must list at least one host key")

    def certificates(self, node: Node | None, device: str) -> frozenset[str]:
        """``certificates``: SHA-256 certificate fingerprints, in openssl's form."""
        return self._fingerprints(node, device, fingerprints.normalise_certificate, "certificate",
                                  "must list at least one certificate fingerprint")

    def tls_names(self, node: Node | None, device: str, have_ca: bool) -> tuple[str, ...]:
        """``tls_names``: names a CA-issued certificate carries (only with ``tls_trusted_ca``)."""
        if node is None:
            return ()
        if not have_ca:
            raise node.error("needs tls_trusted_ca: names identify a device only in a certificate a trusted CA issued")
        names = tuple(entry.text() for entry in node.items())
        if not names:
            raise node.error("must list at least one name")
        for index, name in enumerate(names):
            self._claim(node.child_path(index), tls_name_key(name), f"name {name!r}", device)
        return names
