"""
The configuration as data: frozen dataclasses, and the one error type.

Nothing here reads a file or builds anything: :mod:`callhome.config.reader`
turns YAML into these, and :mod:`callhome.actions.chains` builds the
chains' actions from their L{StepSpec}s.  Credentials are the exception
that proves the rule: they hold parsed conch ``Key`` objects, because
parsing an RSA key costs ~100 ms and must happen once, at load.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from twisted.conch.ssh import keys


def default_instance_name() -> str:
    """The host name: one instance per machine is the common case (made unique at start if taken)."""
    return socket.gethostname().split(".")[0] or "callhome"


class ConfigError(Exception):
    """
    The configuration is unusable.

    @ivar path: the key path at fault, e.g. ``devices[0].host_keys[1]``.
    @ivar problem: what is wrong with it.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Credentials:
    """
    How we log in to one device, chosen only after its host key matched.

    @ivar private_keys: parsed private keys, tried in order.
    @ivar password: used for ``password`` and ``keyboard-interactive``.
    """

    username: str
    private_keys: tuple[keys.Key, ...] = field(default=(), repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def methods(self) -> tuple[str, ...]:
        """The SSH authentication methods these credentials allow, in order."""
        methods = []
        if self.private_keys:
            methods.append("publickey")
        if self.password is not None:
            methods += ["password", "keyboard-interactive"]
        return tuple(methods)


@dataclass(frozen=True)
class TlsIdentity:
    """
    What the manager presents on a TLS call (``tls_certificate`` and
    ``tls_private_key``): checked and read once, at load.

    @ivar certificate_pem: the chain, leaf first, as PEM.
    @ivar private_key_pem: the key, decrypted, as PEM (never logged).
    @ivar fingerprint: the leaf's SHA-256 fingerprint (``AB:CD:...``).
    """

    certificate_path: str
    certificate_pem: bytes = field(repr=False)
    private_key_pem: bytes = field(repr=False)
    fingerprint: str = ""


@dataclass(frozen=True)
class StepSpec:
    """
    One step of a chain as the config writes it: data, not yet an action.
    The actions package builds it (L{callhome.actions.chains.build_step})
    when the config loads.

    @ivar path: the key path of the step's parameters, for errors.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    on_error: str = "stop"
    path: str = ""


@dataclass(frozen=True)
class Schedule:
    """``schedules[]``: a chain run every C{every} seconds inside a persistent session."""

    every: float
    chain: str


@dataclass(frozen=True)
class Profile:
    """What a device inherits from a group or from defaults, resolved."""

    credentials: Credentials
    chain: str
    legacy_algorithms: frozenset[str] = frozenset()
    mode: str = "periodic"
    on_notification: str | None = None
    idle_timeout: float | None = None
    #: what the manager presents on TLS calls, if set here or above.
    tls: TlsIdentity | None = None
    #: ``expect_call_every``: seconds between calls the device should make.
    expect_every: float | None = None
    #: ``expect_grace``: seconds past that before it is overdue.
    expect_grace: float | None = None
    #: ``schedules``: chains run on an interval in a persistent session.
    schedules: tuple[Schedule, ...] = ()


@dataclass(frozen=True)
class Device:
    """A device we accept calls from, known by its host keys."""

    name: str
    host_keys: frozenset[str]
    credentials: Credentials
    chain: str
    group: str | None = None
    legacy_algorithms: frozenset[str] = frozenset()
    #: ``periodic`` (run the chain, close) or ``persistent`` (keep the session).
    mode: str = "periodic"
    #: the chain each notification runs, if any.
    on_notification: str | None = None
    #: persistent mode: close after this many seconds without a NETCONF message.
    idle_timeout: float | None = None
    #: TLS: the device's certificate fingerprints (``AB:CD:...``), its identity as host keys are for SSH.
    certificates: frozenset[str] = frozenset()
    #: TLS with ``tls_trusted_ca``: names (SAN DNS or IP, or CN) a CA-issued certificate must carry.
    tls_names: tuple[str, ...] = ()
    #: TLS: what the manager presents to this device.
    tls: TlsIdentity | None = None
    #: ``expect_call_every``: a device that has not called (or, persistent,
    #: held no session) for this long plus C{expect_grace} is overdue.
    expect_every: float | None = None
    expect_grace: float | None = None
    #: persistent mode: chains run every so many seconds inside the session.
    schedules: tuple[Schedule, ...] = ()

    @property
    def overdue_after(self) -> float | None:
        """Seconds without a call before the device is overdue (None: no expectation)."""
        if self.expect_every is None:
            return None
        grace = self.expect_grace if self.expect_grace is not None else DEFAULT_GRACE_SHARE * self.expect_every
        return self.expect_every + grace

    @classmethod
    def from_profile(
        cls, name: str, host_keys: frozenset[str], profile: Profile, group: str | None = None,
        certificates: frozenset[str] = frozenset(), tls_names: tuple[str, ...] = (),
    ) -> "Device":
        """A device that takes everything from a group's or the defaults' profile."""
        return cls(
            name, host_keys, profile.credentials, profile.chain, group, profile.legacy_algorithms,
            profile.mode, profile.on_notification, profile.idle_timeout,
            certificates, tls_names, profile.tls, profile.expect_every, profile.expect_grace, profile.schedules,
        )

    @property
    def identities(self) -> frozenset[str]:
        """Every key the registry finds this device by: host keys, certificates, and its tls_names (L{tls_name_key})."""
        return self.host_keys | self.certificates | frozenset(tls_name_key(n) for n in self.tls_names)


def tls_name_key(name: str) -> str:
    """
    The registry's key for a ``tls_names`` entry: IP addresses in their
    canonical form, DNS names in lower case without a final dot, behind a
    prefix no fingerprint has.
    """
    import ipaddress

    text = name.strip()
    try:
        text = str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        text = text.lower().rstrip(".")
    return "tls-name:" + text


@dataclass(frozen=True)
class NetconfSettings:
    """NETCONF session settings for every device."""

    offer_base_1_1: bool = True
    hello_timeout: float = 30.0
    rpc_timeout: float = 60.0
    max_message_size: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class SSHSettings:
    """
    SSH settings for every call.

    @ivar keepalive_interval: persistent sessions: seconds between our
        keepalive requests.
    @ivar keepalive_max_missed: unanswered keepalives allowed before the
        session is dropped.
    """

    handshake_timeout: float = 30.0
    keepalive_interval: float = 30.0
    keepalive_max_missed: int = 3


@dataclass(frozen=True)
class TlsSettings:
    """
    TLS call home (``listen_tls``), for every call.

    @ivar trusted_ca_path: ``tls_trusted_ca``: a PEM bundle; a certificate
        it issues identifies a device by ``tls_names``.  None: pinned
        fingerprints only.
    @ivar probe_interval: persistent TLS sessions: seconds between our
        NETCONF keepalive probes (TLS heartbeats are gone from OpenSSL 3).
    @ivar probe_max_missed: unanswered probes allowed before the session
        is dropped.
    """

    trusted_ca_path: str | None = None
    probe_interval: float = 30.0
    probe_max_missed: int = 3
    #: the defaults' TLS identity: what we present until a device's own is chosen.
    default_identity: TlsIdentity | None = None


@dataclass(frozen=True)
class AdmissionSettings:
    """
    What a call must get through before it costs us more (RFC 8071 §5).

    @ivar max_pending: connections not yet authenticated at once; more are
        closed at once.
    @ivar max_pending_per_source: the same, per source address, so one
        address cannot take every slot.
    @ivar failed_auth_limit: failed identifications or logins from one
        source address within C{failed_auth_window} seconds that get the
        address blocked for C{block_seconds}.
    @ivar idle_timeout: seconds without a byte from a connected device
        before its session is closed.
    """

    max_pending: int = 200
    max_pending_per_source: int = 50
    failed_auth_limit: int = 10
    failed_auth_window: float = 300.0
    block_seconds: float = 900.0
    idle_timeout: float = 600.0


@dataclass(frozen=True)
class StoreSettings:
    """
    Where results metadata, events and device state are kept.

    @ivar retention_days: results and events older than this are deleted
        (files too); None keeps them.
    @ivar retention_per_device: only the newest this many results of each
        device are kept; None keeps them all.
    """

    database: Path = Path("var/callhome.sqlite")
    retention_days: float | None = None
    retention_per_device: int | None = None
    #: fsync result files and their folder, and SQLite synchronous=FULL:
    #: survives power loss, at an fsync per result and per commit.
    durable: bool = False
    #: ``store.payloads``: ``files`` (every result a file in results_dir) or
    #: ``database`` (a result up to C{payloads_max_inline} bytes goes into
    #: the database with its row, in the same batch: no file; larger ones
    #: stay files).
    payloads: str = "files"
    payloads_max_inline: int = 1 << 20
    #: ``store.database: postgresql://user@host:port/dbname``: the cluster's
    #: shared database (then C{database} is unused).
    url: str | None = None
    #: the PostgreSQL password (``store.password_env`` / ``_file``); None:
    #: libpq's own (PGPASSWORD, .pgpass).
    password: str | None = field(default=None, repr=False)

    @property
    def location(self) -> str:
        """The database as configured (a path, or the URL)."""
        return self.url if self.url is not None else str(self.database)


#: the events a webhook may ask for (``alerts[].events``), beside any event kind.
ALERT_EVENTS = ("overdue", "overdue-ended", "quarantine", "auth-failed", "supervision-failed", "call-failed",
                "lease-expired", "enrolled")


@dataclass(frozen=True)
class AlertTarget:
    """
    A webhook (``alerts[]``): events posted as JSON to C{url}.

    @ivar events: which (L{ALERT_EVENTS}).
    @ivar token: a bearer token sent with each post, if any.
    """

    url: str
    events: frozenset[str]
    token: str | None = field(default=None, repr=False)
    timeout: float = 10.0


#: seconds a claim of a device's session lives unless its holder renews it.
DEFAULT_LEASE = 15.0


@dataclass(frozen=True)
class ClusterSettings:
    """
    This instance among the others on the same database (``cluster:``).

    @ivar instance: this instance's name (logs, events, /sessions, result
        rows, metrics labels); unique in the cluster.
    @ivar lease: seconds after which a session claim its holder stopped
        renewing (instance killed, machine gone) expires.
    @ivar advertise: the URL other instances reach this one's API at.
    """

    instance: str
    lease: float = DEFAULT_LEASE
    advertise: str | None = None
    #: the name was configured (taken: refused) rather than the host name
    #: (taken: a suffix makes it unique).
    named: bool = False


#: the API's default endpoint: loopback only, so no token is needed.
DEFAULT_API_LISTEN = "tcp:8080:interface=127.0.0.1"


@dataclass(frozen=True)
class ApiSettings:
    """
    The management API.

    @ivar listen: a Twisted server endpoint, or None for no API.
    @ivar token: the bearer token requests must carry (None: no token;
        allowed only on loopback).
    """

    listen: str | None = DEFAULT_API_LISTEN
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Config:
    """A whole, valid configuration."""

    listen: tuple[str, ...]
    results_dir: Path
    devices: tuple[Device, ...]
    chains: Mapping[str, tuple[StepSpec, ...]]
    netconf: NetconfSettings = NetconfSettings()
    ssh: SSHSettings = SSHSettings()
    source: str = "<string>"
    groups: Mapping[str, "Profile | None"] = field(default_factory=dict)
    default_profile: Profile | None = None
    unknown_devices: str = "reject"
    duplicate_sessions: str = "replace"
    admission: AdmissionSettings = AdmissionSettings()
    state_dir: Path = Path("var/state")
    store: StoreSettings = StoreSettings()
    api: ApiSettings = ApiSettings()
    #: seconds running chains get to finish when the service stops.
    shutdown_grace: float = 30.0
    #: log format when the service runs under twistd: text or json.
    log_format: str = "text"
    #: the lowest level callhome logs: debug, info, warn or error.
    log_level: str = "info"
    #: processes serving calls on the same listening sockets (1: just this one).
    workers: int = 1
    #: directories holding callhome/actions/ plugin modules (config ``plugin_paths``).
    plugin_paths: tuple[Path, ...] = ()
    #: things an operator should fix, each with its key path (logged at start).
    warnings: tuple[str, ...] = ()
    #: ``listen_tls``: endpoints for TLS call home (RFC 8071, port 4335).
    listen_tls: tuple[str, ...] = ()
    tls: TlsSettings = TlsSettings()
    #: ``alerts:``: webhooks.
    alerts: tuple[AlertTarget, ...] = ()
    #: ``cluster:``: this instance's name, lease and advertised API.
    cluster: ClusterSettings = field(default_factory=lambda: ClusterSettings(instance=default_instance_name()))

    def device_by_fingerprint(self) -> dict[str, Device]:
        """Index the devices by every host-key and certificate fingerprint they list."""
        return {fp: device for device in self.devices for fp in device.identities}


#: ``expect_grace`` unless set: this share of ``expect_call_every``.
DEFAULT_GRACE_SHARE = 0.1

#: seconds a step may take unless it sets its own timeout (a hung plugin
#: fails its step instead of holding the session for ever).
DEFAULT_STEP_TIMEOUT = 300.0

#: the most worker processes a config may ask for.
MAX_WORKERS = 64

DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
