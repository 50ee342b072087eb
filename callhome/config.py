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
class Device:
    """A device we accept calls from, known by its host keys."""

    name: str
    host_keys: frozenset[str]
    credentials: Credentials
    chain: str


@dataclass(frozen=True)
class NetconfSettings:
    """NETCONF session settings for every device."""

    offer_base_1_1: bool = True
    hello_timeout: float = 30.0
    rpc_timeout: float = 60.0
    max_message_size: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class SSHSettings:
    """SSH settings for every call."""

    handshake_timeout: float = 30.0


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

    def device_by_fingerprint(self) -> dict[str, Device]:
        """Index the devices by every host-key fingerprint they list."""
        return {fp: device for device in self.devices for fp in device.host_keys}


# --- reading ---------------------------------------------------------------------

_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CREDENTIAL_KEYS = (
    "username", "private_key", "private_key_passphrase", "private_key_passphrase_env",
    "private_key_passphrase_file", "password", "password_env", "password_file",
)
_TOP_KEYS = ("listen", "results_dir", "defaults", "devices", "chains", "netconf", "ssh")


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
        chains = self.chains(top.get("chains", _Node({}, "chains")))
        defaults = top.get("defaults", _Node({}, "defaults")).mapping(_CREDENTIAL_KEYS + ("chain",))
        devices = tuple(self.devices(top.get("devices", _Node([], "devices")), defaults, chains))
        return Config(
            listen=listen,
            results_dir=results_dir,
            devices=devices,
            chains=chains,
            netconf=self.netconf(top.get("netconf", _Node({}, "netconf"))),
            ssh=self.ssh(top.get("ssh", _Node({}, "ssh"))),
            source=source,
        )

    def endpoint(self, node: _Node) -> str:
        from twisted.internet.endpoints import _parseServer

        text = node.text()
        try:
            _parseServer(text, None)
        except Exception as e:  # the parser raises several kinds on bad input
            raise node.error(f"not a Twisted server endpoint string ({e}); e.g. tcp:4334") from None
        return text

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
        keys_ = node.mapping(("handshake_timeout",))
        d = SSHSettings()
        return SSHSettings(
            handshake_timeout=keys_["handshake_timeout"].number() if "handshake_timeout" in keys_ else d.handshake_timeout,
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
        timeout = None
        if "timeout" in options:
            timeout = _Node(options["timeout"], node.child_path("timeout")).number()
        on_error = options.get("on_error", "stop")
        if on_error not in ("stop", "continue"):
            raise ConfigError(node.child_path("on_error"), "must be stop or continue")
        return Step(name=name, action=action, timeout=timeout, on_error=on_error)

    def devices(self, node: _Node, defaults: dict[str, _Node], chains: Mapping[str, Any]) -> Iterator[Device]:
        names: dict[str, str] = {}
        owners: dict[str, str] = {}
        allowed = ("name", "host_keys", "chain") + _CREDENTIAL_KEYS
        for device_node in node.items():
            fields = device_node.mapping(allowed)
            if "name" not in fields:
                raise device_node.error("missing name")
            name = fields["name"].text()
            if not _DEVICE_NAME.match(name):
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
            chain_node = fields.get("chain") or defaults.get("chain")
            if chain_node is None:
                raise device_node.error("no chain: set chain here or in defaults")
            chain = chain_node.text()
            if chain not in chains:
                known = ", ".join(sorted(chains)) or "none defined"
                raise chain_node.error(f"no chain named {chain!r} (chains: {known})")
            yield Device(
                name=name,
                host_keys=frozenset(host_keys),
                credentials=self.credentials(device_node, fields, defaults),
                chain=chain,
            )

    def credentials(self, device_node: _Node, fields: dict[str, _Node], defaults: dict[str, _Node]) -> Credentials:
        def pick(*group: str) -> dict[str, _Node]:
            # A device that sets any key of a group overrides the whole group
            # from defaults, so password_env on a device replaces password_file
            # in defaults rather than clashing with it.
            chosen = {k: fields[k] for k in group if k in fields}
            return chosen or {k: defaults[k] for k in group if k in defaults}

        username_node = fields.get("username") or defaults.get("username")
        if username_node is None:
            raise device_node.error("no username: set username here or in defaults")
        username = username_node.text()
        password = self.secret(pick("password", "password_env", "password_file"), "password")
        private_keys: tuple[keys.Key, ...] = ()
        key_fields = pick("private_key", "private_key_passphrase", "private_key_passphrase_env", "private_key_passphrase_file")
        if key_fields.get("private_key") is not None and key_fields["private_key"].value is not None:
            passphrase = self.secret(key_fields, "private_key_passphrase")
            private_keys = (self.private_key(key_fields["private_key"], passphrase),)
        if not private_keys and password is None:
            raise device_node.error("no credentials: set private_key or a password (here or in defaults)")
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
        self._keys[cache_key] = key
        return key
