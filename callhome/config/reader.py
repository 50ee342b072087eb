"""
The config file reader: YAML in, L{callhome.config.model} dataclasses out.

Everything is checked when the file loads, so a running service never meets
a bad value: unknown keys, wrong types, missing files and environment
variables, bad fingerprints, malformed filters.  Every error names its key
path (``devices[0].host_keys[1]``) and what is wrong, in one
:class:`ConfigError`.

Chain steps are read as data (L{StepSpec}); their actions are built by
:mod:`callhome.actions.chains` (which also imports plugins), so this
module imports no plugin code.  Credentials are parsed here, once, and kept
as conch ``Key`` objects.  Relative paths are taken from the working
directory of the process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml
# _parseServer is private; Twisted has no public way to check an endpoint
# string without building (and, for some kinds, binding) the endpoint.
from twisted.internet.endpoints import _parseServer

from callhome.algorithms import LEGACY_NAMES
from callhome.config.identities import Identities
from callhome.config.node import Node, kind
from callhome.config.secrets import TLS_IDENTITY_KEYS, SecretReader
from callhome.config.service import ServiceSections
from callhome.config.model import (
    DEFAULT_STEP_TIMEOUT,
    DEVICE_NAME,
    MAX_WORKERS,
    AdmissionSettings,
    Config,
    ConfigError,
    Device,
    NetconfSettings,
    Profile,
    Credentials,
    Schedule,
    SSHSettings,
    StepSpec,
    TlsSettings,
)

_CREDENTIAL_KEYS = (
    "username", "private_key", "private_key_passphrase", "private_key_passphrase_env",
    "private_key_passphrase_file", "password", "password_env", "password_file",
)
_PROFILE_KEYS = _CREDENTIAL_KEYS + TLS_IDENTITY_KEYS + ("chain", "legacy_algorithms", "mode", "on_notification", "idle_timeout",
                                                                  "expect_call_every", "expect_grace", "schedules")
_TOP_KEYS = (
    "listen", "listen_tls", "tls_trusted_ca", "tls", "results_dir", "state_dir", "defaults", "groups", "devices", "chains",
    "netconf", "ssh", "admission", "unknown_devices", "duplicate_sessions",
    "plugin_paths", "step_timeout", "store", "api", "shutdown_grace", "log",
    "workers", "cluster", "alerts",
)


def parse_step(value: Any, path: str, step_timeout: float = DEFAULT_STEP_TIMEOUT) -> StepSpec:
    """
    One chain step from its YAML/JSON form, e.g. C{{"get-config": {"source": "running"}}}
    (the API's JSON form of an RPC), as data: build it with
    L{callhome.actions.chains.build_step}.

    @raises ConfigError: naming C{path} and what is wrong.
    """
    reader = _Reader({})
    reader.step_timeout = step_timeout
    return reader.step(Node(value, path))


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
    return reader.config(Node(document, ""), source)


class _Reader(ServiceSections):
    """Turns the YAML document into a L{Config}, key path by key path."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.warnings: list[str] = []
        self.step_timeout = DEFAULT_STEP_TIMEOUT
        self.secrets = SecretReader(environ, self.warn)

    def config(self, root: Node, source: str) -> Config:
        if root.value is None:
            raise ConfigError("", f"{source} is empty")
        top = root.mapping(_TOP_KEYS)
        if "listen" not in top and "listen_tls" not in top:
            raise ConfigError("listen", "missing: list at least one endpoint, e.g. tcp:4334 (or listen_tls: tcp:4335)")
        listen = tuple(self.endpoint(n) for n in top["listen"].items()) if "listen" in top else ()
        listen_tls = tuple(self.endpoint(n) for n in top["listen_tls"].items()) if "listen_tls" in top else ()
        if not listen and not listen_tls:
            raise ConfigError("listen", "must list at least one endpoint, e.g. tcp:4334 (or listen_tls: tcp:4335)")
        clash = set(listen) & set(listen_tls)
        if clash:
            raise ConfigError("listen_tls", f"{sorted(clash)[0]} is in listen too: one port serves one transport")
        results_dir = Path(top["results_dir"].text()) if "results_dir" in top else Path("var/results")
        state_dir = Path(top["state_dir"].text()) if "state_dir" in top else Path("var/state")
        plugin_paths = self.plugin_paths(top["plugin_paths"]) if "plugin_paths" in top else ()
        self.step_timeout = top["step_timeout"].number() if "step_timeout" in top else DEFAULT_STEP_TIMEOUT
        chains = self.chains(top.get("chains", Node({}, "chains")))
        defaults_node = top.get("defaults", Node({}, "defaults"))
        defaults = defaults_node.mapping(_PROFILE_KEYS)
        groups_node = top.get("groups", Node({}, "groups"))
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
        ssh_settings = self.ssh(top.get("ssh", Node({}, "ssh")))
        tls_settings = self.tls(top, ssh_settings, defaults)
        devices = tuple(self.devices(top.get("devices", Node([], "devices")), defaults, group_fields, chains,
                                     tls_settings.trusted_ca_path is not None))
        if listen_tls and not any(d.tls is not None for d in devices) and (default_profile is None or default_profile.tls is None):
            self.warn("listen_tls", "no device, group or defaults set tls_certificate and tls_private_key: every TLS call will be refused")
        store = self.store(top.get("store", Node({}, "store")))
        if store.url is not None and "workers" in top and self.workers(top["workers"]) > 1:
            raise top["workers"].error("with a PostgreSQL store.database, run more instances (a cluster) instead of workers")
        return Config(
            listen=listen,
            results_dir=results_dir,
            devices=devices,
            chains=chains,
            netconf=self.netconf(top.get("netconf", Node({}, "netconf"))),
            ssh=ssh_settings,
            listen_tls=listen_tls,
            tls=tls_settings,
            source=source,
            groups=groups,
            default_profile=default_profile,
            unknown_devices=unknown,
            duplicate_sessions=self.choice(top, "duplicate_sessions", ("replace", "reject"), "replace"),
            admission=self.admission(top.get("admission", Node({}, "admission"))),
            state_dir=state_dir,
            store=store,
            api=self.api(top.get("api", Node({}, "api"))),
            shutdown_grace=top["shutdown_grace"].number() if "shutdown_grace" in top else 30.0,
            log_format=self.log_format(top.get("log", Node({}, "log"))),
            log_level=self.log_level(top.get("log", Node({}, "log"))),
            workers=self.workers(top["workers"]) if "workers" in top else 1,
            cluster=self.cluster(top.get("cluster", Node({}, "cluster"))),
            alerts=self.alerts(top.get("alerts", Node(None, "alerts"))),
            plugin_paths=plugin_paths,
            warnings=tuple(self.warnings),
        )

    def tls(self, top: dict[str, Node], ssh: SSHSettings, defaults: dict[str, Node]) -> TlsSettings:
        """``tls_trusted_ca`` and the ``tls:`` section (probe defaults follow ssh keepalives)."""
        trusted = None
        if "tls_trusted_ca" in top and top["tls_trusted_ca"].value is not None:
            node = top["tls_trusted_ca"]
            trusted = node.text()
            try:
                with open(trusted, "rb") as f:
                    bundle = f.read()
            except OSError as e:
                raise node.error(f"cannot read {trusted}: {e.strerror}") from None
            from cryptography import x509

            try:
                x509.load_pem_x509_certificates(bundle)
            except ValueError:
                raise node.error(f"{trusted} holds no PEM certificate") from None
        fields = top.get("tls", Node({}, "tls")).mapping(("probe_interval", "probe_max_missed"))
        return TlsSettings(
            trusted_ca_path=trusted,
            probe_interval=fields["probe_interval"].number() if "probe_interval" in fields else ssh.keepalive_interval,
            probe_max_missed=fields["probe_max_missed"].integer(1) if "probe_max_missed" in fields else ssh.keepalive_max_missed,
            default_identity=self.secrets.tls_identity([defaults], "defaults"),
        )

    def workers(self, node: Node) -> int:
        """Processes serving calls: at least 1, at most MAX_WORKERS."""
        count = node.integer(1)
        if count > MAX_WORKERS:
            raise node.error(f"must be at most {MAX_WORKERS} (one per core is the useful maximum)")
        return count

    def plugin_paths(self, node: Node) -> tuple[Path, ...]:
        """Directories holding callhome/actions/ plugin modules (searched when the chains are built)."""
        paths = []
        for entry in node.items():
            path = Path(entry.text())
            if not path.is_dir():
                raise entry.error(f"{path} is not a directory")
            paths.append(path)
        return tuple(paths)

    def warn(self, path: str, problem: str) -> None:
        """Note something the operator should fix; it does not stop start-up."""
        text = f"{path}: {problem}"
        if text not in self.warnings:
            self.warnings.append(text)

    @staticmethod
    def choice(top: dict[str, Node], key: str, allowed: tuple[str, ...], default: str) -> str:
        if key not in top:
            return default
        value = top[key].text()
        if value not in allowed:
            raise top[key].error(f"must be one of {', '.join(allowed)}")
        return value

    def admission(self, node: Node) -> AdmissionSettings:
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

    def groups(self, node: Node) -> dict[str, dict[str, Node]]:
        if node.value is None:
            return {}
        if not isinstance(node.value, Mapping):
            raise node.error(f"must map group names to settings, got {kind(node.value)}")
        return {str(name): Node(value, node.child_path(str(name))).mapping(_PROFILE_KEYS) for name, value in node.value.items()}

    def profile(
        self, layers: list[dict[str, Node]], where: str, chains: Mapping[str, Any], required: bool = True,
        ssh: bool = True, tls: bool = False,
    ) -> Profile | None:
        """
        Resolve credentials, chain and legacy algorithms from C{layers}
        (device, group, defaults: the first that sets a key wins).

        @param required: if False, return None when something is missing
            instead of failing (groups and defaults may be partial).
        @param ssh: the device calls over SSH (host_keys): SSH credentials are needed.
        @param tls: the device calls over TLS: a TLS identity is needed.
        """
        def first(key: str) -> Node | None:
            return next((layer[key] for layer in layers if key in layer), None)

        def missing(problem: str) -> None:
            if required:
                raise ConfigError(where, problem)

        username_node = first("username")
        chain_node = first("chain")
        legacy_node = first("legacy_algorithms")
        legacy = self.legacy(legacy_node) if legacy_node is not None else frozenset()
        credentials = self.secrets.credentials(layers, where, username_node)
        tls_identity = self.secrets.tls_identity(layers, where)
        if tls and tls_identity is None:
            missing("no TLS identity: set tls_certificate and tls_private_key (here, in its group or in defaults)")
        if credentials is None and (ssh or tls_identity is None):
            missing("no credentials: set private_key or a password (here, in its group or in defaults)")
        if username_node is None and (ssh or tls_identity is None):
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
            assert mode_node is not None  # the default is valid
            raise mode_node.error("must be periodic or persistent")
        notification_node = first("on_notification")
        on_notification = None
        if notification_node is not None:
            on_notification = notification_node.text()
            if on_notification not in chains:
                raise notification_node.error(f"no chain named {on_notification!r}")
        idle_node = first("idle_timeout")
        idle = idle_node.number() if idle_node is not None else None
        expect_every, expect_grace = self.expectation(first("expect_call_every"), first("expect_grace"))
        schedules_node = first("schedules")
        schedules = self.schedules(schedules_node, chains) if schedules_node is not None else ()
        if chain_node is None or (tls and tls_identity is None):
            return None
        if credentials is None or username_node is None:
            if tls_identity is None or (ssh and required):
                return None
            # TLS only: the device maps our certificate to a user; no SSH login.
            credentials = Credentials(username=username_node.text() if username_node is not None else "")
        return Profile(credentials, chain_node.text(), legacy, mode, on_notification, idle, tls_identity, expect_every, expect_grace,
                       schedules)

    @staticmethod
    def schedules(node: Node, chains: Mapping[str, Any]) -> tuple[Schedule, ...]:
        """``schedules: [{every: SECONDS, chain: NAME}, ...]``."""
        found = []
        for entry in node.items():
            fields = entry.mapping(("every", "chain"))
            if "every" not in fields or "chain" not in fields:
                raise entry.error("a schedule needs every (seconds) and chain")
            every = fields["every"].number()
            if every < 1:
                raise fields["every"].error("must be at least 1 second")
            chain = fields["chain"].text()
            if chain not in chains:
                raise fields["chain"].error(f"no chain named {chain!r} (chains: {', '.join(sorted(chains)) or 'none defined'})")
            found.append(Schedule(every, chain))
        return tuple(found)

    @staticmethod
    def expectation(every_node: Node | None, grace_node: Node | None) -> tuple[float | None, float | None]:
        """``expect_call_every`` (seconds, > 0) and ``expect_grace`` (seconds, >= 0)."""
        every = every_node.number() if every_node is not None and every_node.value is not None else None
        if every is not None and every <= 0:
            assert every_node is not None
            raise every_node.error("must be a number of seconds above 0")
        grace = grace_node.number(float("-inf")) if grace_node is not None and grace_node.value is not None else None
        if grace is not None and grace < 0:
            assert grace_node is not None
            raise grace_node.error("must be a number of seconds, 0 or more")
        return every, grace

    def legacy(self, node: Node) -> frozenset[str]:
        names = set()
        for entry in node.items():
            name = entry.text()
            if name not in LEGACY_NAMES:
                raise entry.error(f"not a legacy algorithm we can enable (one of {', '.join(sorted(LEGACY_NAMES))})")
            names.add(name)
        if names:
            self.warn(node.path, f"legacy algorithms enabled: {', '.join(sorted(names))}")
        return frozenset(names)

    def endpoint(self, node: Node) -> str:
        text = node.text()
        try:
            _parseServer(text, None)
        except Exception as e:  # the parser raises several kinds on bad input
            raise node.error(f"not a Twisted server endpoint string ({e}); e.g. tcp:4334") from None
        return text

    def netconf(self, node: Node) -> NetconfSettings:
        keys_ = node.mapping(("offer_base_1_1", "hello_timeout", "rpc_timeout", "max_message_size"))
        d = NetconfSettings()
        return NetconfSettings(
            offer_base_1_1=keys_["offer_base_1_1"].flag() if "offer_base_1_1" in keys_ else d.offer_base_1_1,
            hello_timeout=keys_["hello_timeout"].number() if "hello_timeout" in keys_ else d.hello_timeout,
            rpc_timeout=keys_["rpc_timeout"].number() if "rpc_timeout" in keys_ else d.rpc_timeout,
            max_message_size=keys_["max_message_size"].integer(1024) if "max_message_size" in keys_ else d.max_message_size,
        )

    def ssh(self, node: Node) -> SSHSettings:
        keys_ = node.mapping(("handshake_timeout", "keepalive_interval", "keepalive_max_missed"))
        d = SSHSettings()
        return SSHSettings(
            handshake_timeout=keys_["handshake_timeout"].number() if "handshake_timeout" in keys_ else d.handshake_timeout,
            keepalive_interval=keys_["keepalive_interval"].number() if "keepalive_interval" in keys_ else d.keepalive_interval,
            keepalive_max_missed=keys_["keepalive_max_missed"].integer() if "keepalive_max_missed" in keys_ else d.keepalive_max_missed,
        )

    def chains(self, node: Node) -> dict[str, tuple[StepSpec, ...]]:
        if node.value is None:
            return {}
        if not isinstance(node.value, Mapping):
            raise node.error(f"must map chain names to lists of steps, got {kind(node.value)}")
        chains = {}
        for name in node.value:
            chain_node = Node(node.value[name], node.child_path(str(name)))
            steps = tuple(self.step(n) for n in chain_node.items())
            if not steps:
                raise chain_node.error("a chain needs at least one step")
            chains[str(name)] = steps
        return chains

    def step(self, node: Node) -> StepSpec:
        if not isinstance(node.value, Mapping):
            raise node.error("a step is a mapping like {get: {}}")
        options = {k: v for k, v in node.value.items() if k in ("timeout", "on_error")}
        actions = [k for k in node.value if k not in options]
        if len(actions) != 1:
            raise node.error(f"a step names exactly one action, got {len(actions)}: {actions}")
        name = actions[0]
        params_node = Node(node.value[name], node.child_path(name))
        params = params_node.value if params_node.value is not None else {}
        if not isinstance(params, Mapping):
            raise params_node.error(f"the parameters must be a mapping, got {kind(params)}")
        timeout: float | None = self.step_timeout
        if "timeout" in options:
            timeout = Node(options["timeout"], node.child_path("timeout")).number()
        on_error = options.get("on_error", "stop")
        if on_error not in ("stop", "continue", "disconnect"):
            raise ConfigError(node.child_path("on_error"), "must be stop, continue or disconnect")
        return StepSpec(name=name, params=dict(params), timeout=timeout, on_error=on_error, path=params_node.path)

    def devices(
        self, node: Node, defaults: dict[str, Node], groups: dict[str, dict[str, Node]], chains: Mapping[str, Any],
        have_ca: bool = False,
    ) -> Iterator[Device]:
        names: dict[str, str] = {}
        identities = Identities()
        allowed = ("name", "host_keys", "certificates", "tls_names", "group") + _PROFILE_KEYS
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
            if not any(k in fields for k in ("host_keys", "certificates", "tls_names")):
                raise device_node.error(
                    "missing host_keys: the device is known only by its SSH host key "
                    "(or, calling over TLS, by its certificates or tls_names)"
                )
            host_keys = identities.host_keys(fields.get("host_keys"), name)
            certificates = identities.certificates(fields.get("certificates"), name)
            tls_names = identities.tls_names(fields.get("tls_names"), name, have_ca)
            group = None
            layers = [fields]
            if "group" in fields:
                group = fields["group"].text()
                if group not in groups:
                    known = ", ".join(sorted(groups)) or "none defined"
                    raise fields["group"].error(f"no group named {group!r} (groups: {known})")
                layers.append(groups[group])
            layers.append(defaults)
            profile = self.profile(layers, device_node.path, chains, ssh=bool(host_keys),
                                   tls=bool(certificates or tls_names))
            assert profile is not None
            yield Device.from_profile(name, host_keys, profile, group, certificates, tls_names)
