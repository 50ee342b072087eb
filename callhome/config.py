"""
The configuration file: YAML in, typed frozen dataclasses out.

Everything is checked when the file loads, so a running service never meets
a bad value: unknown keys, wrong types, missing files and environment
variables, bad fingerprints, malformed filters.  Every error names its key
path (``devices[0].host_keys[1]``) and what is wrong, in one
:class:`ConfigError`.

Credentials are parsed here, once (loading an RSA key costs ~100 ms), and
kept as conch ``Key`` objects.  Relative paths are taken from the working
directory of the process.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml
from twisted.conch.ssh import keys

from callhome import fingerprints
from callhome.actions import Action, ActionConfigError, build_action
from callhome.algorithms import LEGACY_NAMES


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


# --- the typed result -----------------------------------------------------------


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
class Step:
    """One step of a chain: a built action and how to run it."""

    name: str
    action: Action
    timeout: float | None = None
    on_error: str = "stop"


@dataclass(frozen=True)
class Profile:
    """What a device inherits from a group or from defaults, resolved."""

    credentials: Credentials
    chain: str
    legacy_algorithms: frozenset[str] = frozenset()
    mode: str = "periodic"
    on_notification: str | None = None
    idle_timeout: float | None = None


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

    @classmethod
    def from_profile(cls, name: str, host_keys: frozenset[str], profile: Profile, group: str | None = None) -> "Device":
        """A device that takes everything from a group's or the defaults' profile."""
        return cls(
            name, host_keys, profile.credentials, profile.chain, group, profile.legacy_algorithms,
            profile.mode, profile.on_notification, profile.idle_timeout,
        )


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
    chains: Mapping[str, tuple[Step, ...]]
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
    #: things an operator should fix, each with its key path (logged at start).
    warnings: tuple[str, ...] = ()

    def device_by_fingerprint(self) -> dict[str, Device]:
        """Index the devices by every host-key fingerprint they list."""
        return {fp: device for device in self.devices for fp in device.host_keys}


# --- reading ---------------------------------------------------------------------

#: seconds a step may take unless it sets its own timeout (a hung plugin
#: fails its step instead of holding the session for ever).
DEFAULT_STEP_TIMEOUT = 300.0

#: the most worker processes a config may ask for.
MAX_WORKERS = 64

DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CREDENTIAL_KEYS = (
    "username", "private_key", "private_key_passphrase", "private_key_passphrase_env",
    "private_key_passphrase_file", "password", "password_env", "password_file",
)
_PROFILE_KEYS = _CREDENTIAL_KEYS + ("chain", "legacy_algorithms", "mode", "on_notification", "idle_timeout")
_TOP_KEYS = (
    "listen", "results_dir", "state_dir", "defaults", "groups", "devices", "chains",
    "netconf", "ssh", "admission", "unknown_devices", "duplicate_sessions",
    "plugin_paths", "step_timeout", "store", "api", "shutdown_grace", "log",
    "workers",
)


class _Node:
    """A value of the YAML document with the key path that led to it."""

    def __init__(self, value: Any, path: str) -> None:
        self.value = value
        self.path = path

    def error(self, problem: str) -> ConfigError:
        return ConfigError(self.path, problem)

    def child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def mapping(self, allowed: tuple[str, ...]) -> dict[str, "_Node"]:
        """Check this is a mapping with only C{allowed} keys; return its children."""
        if self.value is None:
            return {}
        if not isinstance(self.value, Mapping):
            raise self.error(f"must be a mapping, got {_kind(self.value)}")
        children = {}
        for key, value in self.value.items():
            if not isinstance(key, str):
                raise self.error(f"key {key!r} must be text")
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(self.child_path(key), f"unknown key{suggestion}")
            children[key] = _Node(value, self.child_path(key))
        return children

    def items(self) -> Iterator["_Node"]:
        """Check this is a list; yield its entries."""
        if self.value is None:
            return
        if not isinstance(self.value, list):
            raise self.error(f"must be a list, got {_kind(self.value)}")
        for index, value in enumerate(self.value):
            yield _Node(value, self.child_path(index))

    def text(self) -> str:
        if not isinstance(self.value, str) or not self.value.strip():
            raise self.error(f"must be non-empty text, got {_kind(self.value)}")
        return self.value

    def number(self, minimum: float = 0.0) -> float:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise self.error(f"must be a number, got {_kind(self.value)}")
        if self.value <= minimum:
            raise self.error(f"must be greater than {minimum:g}")
        return float(self.value)

    def integer(self, minimum: int = 1) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self.error(f"must be a whole number, got {_kind(self.value)}")
        if self.value < minimum:
            raise self.error(f"must be at least {minimum}")
        return self.value

    def flag(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error(f"must be true or false, got {_kind(self.value)}")
        return self.value


def parse_step(value: Any, path: str, step_timeout: float = DEFAULT_STEP_TIMEOUT) -> Step:
    """
    One chain step from its YAML/JSON form, e.g. C{{"get-config": {"source": "running"}}}
    (the API's JSON form of an RPC).

    @raises ConfigError: naming C{path} and what is wrong.
    """
    reader = _Reader({})
    reader.step_timeout = step_timeout
    return reader.step(_Node(value, path))


def is_loopback_endpoint(description: str) -> bool:
    """Whether a server endpoint string listens on loopback (or a UNIX socket) only."""
    import ipaddress

    from twisted.internet.endpoints import _parseServer

    kind, args, kwargs = _parseServer(description, None)
    if str(kind).lower() == "unix":
        return True
    interface = kwargs.get("interface", "")
    if not interface:
        return False  # all addresses
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return interface == "localhost"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """
    Read and check a configuration file.

    @raises ConfigError: naming the key path and the problem.
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("", f"cannot read config file {os.fspath(path)}: {e.strerror}") from None
    return loads(text, source=os.fspath(path), environ=environ)


def loads(text: str | bytes, source: str = "<string>", environ: Mapping[str, str] | None = None) -> Config:
    """Check a configuration given as YAML text."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"{source} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    reader = _Reader(os.environ if environ is None else environ)
    return reader.config(_Node(document, ""), source)


class _Reader:
    """Turns the YAML document into a L{Config}, key path by key path."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.warnings: list[str] = []
        self.step_timeout = DEFAULT_STEP_TIMEOUT
        # Parse each key file once even when many devices share it.
        self._keys: dict[tuple[str, str | None], keys.Key] = {}

    def config(self, root: _Node, source: str) -> Config:
        if root.value is None:
            raise ConfigError("", f"{source} is empty")
        top = root.mapping(_TOP_KEYS)
        if "listen" not in top:
            raise ConfigError("listen", "missing: list at least one endpoint, e.g. tcp:4334")
        listen = tuple(self.endpoint(n) for n in top["listen"].items())
        if not listen:
            raise ConfigError("listen", "must list at least one endpoint, e.g. tcp:4334")
        results_dir = Path(top["results_dir"].text()) if "results_dir" in top else Path("var/results")
        state_dir = Path(top["state_dir"].text()) if "state_dir" in top else Path("var/state")
        if "plugin_paths" in top:
            self.plugin_paths(top["plugin_paths"])
        self.step_timeout = top["step_timeout"].number() if "step_timeout" in top else DEFAULT_STEP_TIMEOUT
        chains = self.chains(top.get("chains", _Node({}, "chains")))
        defaults_node = top.get("defaults", _Node({}, "defaults"))
        defaults = defaults_node.mapping(_PROFILE_KEYS)
        groups_node = top.get("groups", _Node({}, "groups"))
        group_fields = self.groups(groups_node)
        groups = {
            name: self.profile([fields, defaults], groups_node.child_path(name), chains, required=False)
            for name, fields in group_fields.items()
        }
        default_profile = self.profile([defaults], "defaults", chains, required=False)
        unknown = self.choice(top, "unknown_devices", ("reject", "quarantine", "accept"), "reject")
        if unknown == "accept":
            if default_profile is None:
                raise ConfigError("unknown_devices", "accept needs complete defaults (username, credentials, chain)")
            self.warn("unknown_devices", "accept: any device that calls is logged in with the default credentials (lab use only)")
        devices = tuple(self.devices(top.get("devices", _Node([], "devices")), defaults, group_fields, chains))
        return Config(
            listen=listen,
            results_dir=results_dir,
            devices=devices,
            chains=chains,
            netconf=self.netconf(top.get("netconf", _Node({}, "netconf"))),
            ssh=self.ssh(top.get("ssh", _Node({}, "ssh"))),
            source=source,
            groups=groups,
            default_profile=default_profile,
            unknown_devices=unknown,
            duplicate_sessions=self.choice(top, "duplicate_sessions", ("replace", "reject"), "replace"),
            admission=self.admission(top.get("admission", _Node({}, "admission"))),
            state_dir=state_dir,
            store=self.store(top.get("store", _Node({}, "store"))),
            api=self.api(top.get("api", _Node({}, "api"))),
            shutdown_grace=top["shutdown_grace"].number() if "shutdown_grace" in top else 30.0,
            log_format=self.log_format(top.get("log", _Node({}, "log"))),
            log_level=self.log_level(top.get("log", _Node({}, "log"))),
            workers=self.workers(top["workers"]) if "workers" in top else 1,
            warnings=tuple(self.warnings),
        )

    def workers(self, node: _Node) -> int:
        """Processes serving calls: at least 1, at most MAX_WORKERS."""
        count = node.integer(1)
        if count > MAX_WORKERS:
            raise node.error(f"must be at most {MAX_WORKERS} (one per core is the useful maximum)")
        return count

    def plugin_paths(self, node: _Node) -> None:
        """Directories holding callhome/actions/ plugin modules."""
        from callhome.actions.plugins import add_plugin_paths

        paths = []
        for entry in node.items():
            path = Path(entry.text())
            if not path.is_dir():
                raise entry.error(f"{path} is not a directory")
            paths.append(path)
        add_plugin_paths(paths)

    def warn(self, path: str, problem: str) -> None:
        """Note something the operator should fix; it does not stop start-up."""
        text = f"{path}: {problem}"
        if text not in self.warnings:
            self.warnings.append(text)

    def check_private_file(self, node: _Node, path: str) -> None:
        """Warn about a secret file that other users can read."""
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return
        if mode & 0o077:
            self.warn(node.path, f"{path} is readable by other users (mode {mode & 0o777:o}); chmod 600 it")

    @staticmethod
    def choice(top: dict[str, _Node], key: str, allowed: tuple[str, ...], default: str) -> str:
        if key not in top:
            return default
        value = top[key].text()
        if value not in allowed:
            raise top[key].error(f"must be one of {', '.join(allowed)}")
        return value

    def admission(self, node: _Node) -> AdmissionSettings:
        fields = node.mapping(("max_pending", "max_pending_per_source", "failed_auth_limit", "failed_auth_window", "block_seconds", "idle_timeout"))
        d = AdmissionSettings()
        return AdmissionSettings(
            max_pending=fields["max_pending"].integer() if "max_pending" in fields else d.max_pending,
            max_pending_per_source=fields["max_pending_per_source"].integer() if "max_pending_per_source" in fields else d.max_pending_per_source,
            failed_auth_limit=fields["failed_auth_limit"].integer() if "failed_auth_limit" in fields else d.failed_auth_limit,
            failed_auth_window=fields["failed_auth_window"].number() if "failed_auth_window" in fields else d.failed_auth_window,
            block_seconds=fields["block_seconds"].number() if "block_seconds" in fields else d.block_seconds,
            idle_timeout=fields["idle_timeout"].number() if "idle_timeout" in fields else d.idle_timeout,
        )

    def groups(self, node: _Node) -> dict[str, dict[str, _Node]]:
        if node.value is None:
            return {}
        if not isinstance(node.value, Mapping):
            raise node.error(f"must map group names to settings, got {_kind(node.value)}")
        return {str(name): _Node(value, node.child_path(str(name))).mapping(_PROFILE_KEYS) for name, value in node.value.items()}

    def profile(self, layers: list[dict[str, _Node]], where: str, chains: Mapping[str, Any], required: bool = True) -> Profile | None:
        """
        Resolve credentials, chain and legacy algorithms from C{layers}
        (device, group, defaults: the first that sets a key wins).

        @param required: if False, return None when something is missing
            instead of failing (groups and defaults may be partial).
        """
        def first(key: str) -> _Node | None:
            return next((layer[key] for layer in layers if key in layer), None)

        def missing(problem: str) -> None:
            if required:
                raise ConfigError(where, problem)

        username_node = first("username")
        chain_node = first("chain")
        legacy_node = first("legacy_algorithms")
        legacy = self.legacy(legacy_node) if legacy_node is not None else frozenset()
        credentials = self.credentials(layers, where, username_node)
        if credentials is None:
            missing("no credentials: set private_key or a password (here, in its group or in defaults)")
        if username_node is None:
            missing("no username: set username here, in its group or in defaults")
        if chain_node is None:
            missing("no chain: set chain here, in its group or in defaults")
        if chain_node is not None:
            chain = chain_node.text()
            if chain not in chains:
                known = ", ".join(sorted(chains)) or "none defined"
                raise chain_node.error(f"no chain named {chain!r} (chains: {known})")
        mode_node = first("mode")
        mode = mode_node.text() if mode_node is not None else "periodic"
        if mode not in ("periodic", "persistent"):
            raise mode_node.error("must be periodic or persistent")  # type: ignore[union-attr]
        notification_node = first("on_notification")
        on_notification = None
        if notification_node is not None:
            on_notification = notification_node.text()
            if on_notification not in chains:
                raise notification_node.error(f"no chain named {on_notification!r}")
        idle_node = first("idle_timeout")
        idle = idle_node.number() if idle_node is not None else None
        if credentials is None or username_node is None or chain_node is None:
            return None
        return Profile(credentials, chain_node.text(), legacy, mode, on_notification, idle)

    def legacy(self, node: _Node) -> frozenset[str]:
        names = set()
        for entry in node.items():
            name = entry.text()
            if name not in LEGACY_NAMES:
                raise entry.error(f"not a legacy algorithm we can enable (one of {', '.join(sorted(LEGACY_NAMES))})")
            names.add(name)
        if names:
            self.warn(node.path, f"legacy algorithms enabled: {', '.join(sorted(names))}")
        return frozenset(names)

    def endpoint(self, node: _Node) -> str:
        from twisted.internet.endpoints import _parseServer

        text = node.text()
        try:
            _parseServer(text, None)
        except Exception as e:  # the parser raises several kinds on bad input
            raise node.error(f"not a Twisted server endpoint string ({e}); e.g. tcp:4334") from None
        return text

    def store(self, node: _Node) -> StoreSettings:
        fields = node.mapping(("database", "retention"))
        database = Path(fields["database"].text()) if "database" in fields else StoreSettings.database
        days = per_device = None
        if "retention" in fields and fields["retention"].value is not None:
            retention = fields["retention"].mapping(("days", "per_device"))
            if "days" in retention:
                days = retention["days"].number()
            if "per_device" in retention:
                per_device = retention["per_device"].integer()
        return StoreSettings(database=database, retention_days=days, retention_per_device=per_device)

    def api(self, node: _Node) -> ApiSettings:
        fields = node.mapping(("listen", "token", "token_env", "token_file"))
        listen: str | None = DEFAULT_API_LISTEN
        if "listen" in fields:
            listen = None if fields["listen"].value in (None, False, "none", "off") else self.endpoint(fields["listen"])
        token = self.secret(fields, "token")
        if token is not None and not token.strip():
            given = next(k for k in ("token", "token_env", "token_file") if k in fields)
            raise fields[given].error("the API token is empty")
        if listen is not None and token is None and not is_loopback_endpoint(listen):
            raise ConfigError(
                "api.listen",
                f"{listen} is reachable from other hosts: set api.token_file or api.token_env "
                "(a bearer token), or bind to 127.0.0.1",
            )
        return ApiSettings(listen=listen, token=token)

    def log_level(self, node: _Node) -> str:
        fields = node.mapping(("format", "level"))
        if "level" not in fields:
            return "info"
        value = fields["level"].text()
        if value not in ("debug", "info", "warn", "error"):
            raise fields["level"].error("must be debug, info, warn or error")
        return value

    def log_format(self, node: _Node) -> str:
        fields = node.mapping(("format", "level"))
        if "format" not in fields:
            return "text"
        value = fields["format"].text()
        if value not in ("text", "json"):
            raise fields["format"].error("must be text or json")
        return value

    def netconf(self, node: _Node) -> NetconfSettings:
        keys_ = node.mapping(("offer_base_1_1", "hello_timeout", "rpc_timeout", "max_message_size"))
        d = NetconfSettings()
        return NetconfSettings(
            offer_base_1_1=keys_["offer_base_1_1"].flag() if "offer_base_1_1" in keys_ else d.offer_base_1_1,
            hello_timeout=keys_["hello_timeout"].number() if "hello_timeout" in keys_ else d.hello_timeout,
            rpc_timeout=keys_["rpc_timeout"].number() if "rpc_timeout" in keys_ else d.rpc_timeout,
            max_message_size=keys_["max_message_size"].integer(1024) if "max_message_size" in keys_ else d.max_message_size,
        )

    def ssh(self, node: _Node) -> SSHSettings:
        keys_ = node.mapping(("handshake_timeout", "keepalive_interval", "keepalive_max_missed"))
        d = SSHSettings()
        return SSHSettings(
            handshake_timeout=keys_["handshake_timeout"].number() if "handshake_timeout" in keys_ else d.handshake_timeout,
            keepalive_interval=keys_["keepalive_interval"].number() if "keepalive_interval" in keys_ else d.keepalive_interval,
            keepalive_max_missed=keys_["keepalive_max_missed"].integer() if "keepalive_max_missed" in keys_ else d.keepalive_max_missed,
        )

    def chains(self, node: _Node) -> dict[str, tuple[Step, ...]]:
        if node.value is None:
            return {}
        if not isinstance(node.value, Mapping):
            raise node.error(f"must map chain names to lists of steps, got {_kind(node.value)}")
        chains = {}
        for name in node.value:
            chain_node = _Node(node.value[name], node.child_path(str(name)))
            steps = tuple(self.step(n) for n in chain_node.items())
            if not steps:
                raise chain_node.error("a chain needs at least one step")
            chains[str(name)] = steps
        return chains

    def step(self, node: _Node) -> Step:
        if not isinstance(node.value, Mapping):
            raise node.error("a step is a mapping like {get: {}}")
        options = {k: v for k, v in node.value.items() if k in ("timeout", "on_error")}
        actions = [k for k in node.value if k not in options]
        if len(actions) != 1:
            raise node.error(f"a step names exactly one action, got {len(actions)}: {actions}")
        name = actions[0]
        params_node = _Node(node.value[name], node.child_path(name))
        params = params_node.value if params_node.value is not None else {}
        if not isinstance(params, Mapping):
            raise params_node.error(f"the parameters must be a mapping, got {_kind(params)}")
        try:
            action = build_action(name, dict(params))
        except ActionConfigError as e:
            path = params_node.child_path(e.key) if e.key else params_node.path
            raise ConfigError(path, str(e)) from None
        timeout: float | None = self.step_timeout
        if "timeout" in options:
            timeout = _Node(options["timeout"], node.child_path("timeout")).number()
        on_error = options.get("on_error", "stop")
        if on_error not in ("stop", "continue"):
            raise ConfigError(node.child_path("on_error"), "must be stop or continue")
        return Step(name=name, action=action, timeout=timeout, on_error=on_error)

    def devices(self, node: _Node, defaults: dict[str, _Node], groups: dict[str, dict[str, _Node]], chains: Mapping[str, Any]) -> Iterator[Device]:
        names: dict[str, str] = {}
        owners: dict[str, str] = {}
        allowed = ("name", "host_keys", "group") + _PROFILE_KEYS
        for device_node in node.items():
            fields = device_node.mapping(allowed)
            if "name" not in fields:
                raise device_node.error("missing name")
            name = fields["name"].text()
            if not DEVICE_NAME.match(name):
                raise fields["name"].error(
                    "must be letters, digits, '.', '_' or '-' (it names the results folder)"
                )
            if name in names:
                raise fields["name"].error(f"duplicate device name, also at {names[name]}")
            names[name] = fields["name"].path
            if "host_keys" not in fields:
                raise device_node.error("missing host_keys: the device is known only by its SSH host key")
            host_keys = set()
            for entry in fields["host_keys"].items():
                try:
                    fp = fingerprints.from_entry(entry.text())
                except fingerprints.FingerprintError as e:
                    raise entry.error(str(e)) from None
                if fp in owners and owners[fp] != name:
                    raise entry.error(f"host key {fp} is already listed for device {owners[fp]!r}")
                owners[fp] = name
                host_keys.add(fp)
            if not host_keys:
                raise fields["host_keys"].error("must list at least one host key")
            group = None
            layers = [fields]
            if "group" in fields:
                group = fields["group"].text()
                if group not in groups:
                    known = ", ".join(sorted(groups)) or "none defined"
                    raise fields["group"].error(f"no group named {group!r} (groups: {known})")
                layers.append(groups[group])
            layers.append(defaults)
            profile = self.profile(layers, device_node.path, chains)
            assert profile is not None
            yield Device.from_profile(name, frozenset(host_keys), profile, group)

    def credentials(self, layers: list[dict[str, _Node]], where: str, username_node: _Node | None) -> Credentials | None:
        """The credentials C{layers} give, or None if they give none."""
        def pick(*group: str) -> dict[str, _Node]:
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

    def secret(self, fields: dict[str, _Node], base: str) -> str | None:
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

    def private_key(self, node: _Node, passphrase: str | None) -> keys.Key:
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
