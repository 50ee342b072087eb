"""
Unknown devices (``unknown_devices: quarantine`` or ``accept``): what
happens to a host key or a certificate that proved itself but names no
device.  Under ``reject`` the transport refuses it before it proves anything.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from callhome.call.record import CallRecord, Outcome
from callhome.call.registry import Registry
from callhome.config import Config, Device
from callhome.logs import LevelLogger

if TYPE_CHECKING:  # pragma: no cover
    from callhome.tls.certificates import PeerCertificate

log = LevelLogger(namespace="callhome")


def unknown_host_key(config: Config, registry: Registry, record: CallRecord, fingerprint: str, key_type: str) -> Device | None:
    """An unknown, proved host key: quarantined (None: refuse the call), or accepted as a device (lab)."""
    if config.unknown_devices == "accept":
        assert config.default_profile is not None
        name = "unknown-" + re.sub(r"[^A-Za-z0-9]", "", fingerprint[len("SHA256:"):])[:16]
        log.warn(
            "accepting unknown device {fingerprint} ({key_type}) from {peer} as {name} "
            "(unknown_devices: accept)",
            fingerprint=fingerprint, key_type=key_type, peer=record.peer, name=name,
        )
        return Device.from_profile(name, frozenset([fingerprint]), config.default_profile)
    record.end(Outcome.UNKNOWN_HOST_KEY, "unknown host key (quarantined)")
    registry.quarantine(fingerprint, key_type, record.peer)
    log.warn(
        "refused call from {peer}: unknown host key {fingerprint} ({key_type}) quarantined; no credentials sent",
        peer=record.peer, fingerprint=fingerprint, key_type=key_type,
    )
    return None


def unknown_certificate(config: Config, registry: Registry, record: CallRecord, certificate: "PeerCertificate") -> Device | None:
    """An unknown TLS certificate: quarantined with who it says it is (None), or accepted (lab)."""
    fingerprint = certificate.fingerprint
    if config.unknown_devices == "accept":
        profile = config.default_profile
        if profile is None or profile.tls is None:
            record.end(Outcome.UNKNOWN_CERTIFICATE, "unknown certificate (unknown_devices: accept, but defaults have no TLS identity)")
            return None
        name = "unknown-" + fingerprint.replace(":", "")[:16].lower()
        log.warn(
            "accepting unknown certificate {fingerprint} ({subject}) from {peer} as {name} (unknown_devices: accept)",
            fingerprint=fingerprint, subject=certificate.subject, peer=record.peer, name=name,
        )
        return Device.from_profile(name, frozenset(), profile, certificates=frozenset([fingerprint]))
    record.end(Outcome.UNKNOWN_CERTIFICATE, f"unknown certificate (quarantined; subject {certificate.subject})")
    registry.quarantine(fingerprint, certificate.key_type, record.peer, certificate=certificate.summary())
    log.warn(
        "refused TLS call from {peer}: unknown certificate {fingerprint} ({subject}, issued by {issuer}) "
        "quarantined; nothing sent",
        peer=record.peer, fingerprint=fingerprint, subject=certificate.subject, issuer=certificate.issuer,
    )
    return None
