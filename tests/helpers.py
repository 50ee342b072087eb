"""
Shared test helpers: keys, configs, and an in-memory call home (iosim).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim

from callhome import config as config_module
from callhome.actions.chains import build_chains
from callhome import fingerprints
from callhome.call.manager import Manager
from callhome.simulator.netconf_server import Datastore
from callhome.simulator.ssh_server import DeviceSSHFactory


def new_key() -> keys.Key:
    """A fresh ed25519 private key."""
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


def write_key(directory: Path, name: str, key: keys.Key, passphrase: bytes | None = None) -> Path:
    """Write a private key (OpenSSH format) and its .pub; return the private path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(key.toString("openssh", passphrase=passphrase))
    path.chmod(0o600)
    (directory / f"{name}.pub").write_bytes(key.public().toString("openssh") + b"\n")
    return path


def make_config(tmp: Path, device_keys: dict[str, keys.Key], credentials: str, **kwargs: str) -> config_module.Config:
    """
    A config for devices known by these host keys, all with C{credentials}
    (see L{config_text}), checked as the service checks it: its chains build.
    """
    config = config_module.loads(config_text(tmp, device_keys, credentials, **kwargs))
    build_chains(config)
    return config


def config_text(
    tmp: Path,
    device_keys: dict[str, keys.Key],
    credentials: str,
    chain: str = "[{get: {}}]",
    extra: str = "",
    listen: str = "tcp:0:interface=127.0.0.1",
) -> str:
    """The YAML of L{make_config}."""
    devices = "\n".join(
        f"  - name: {name}\n    host_keys: [\"{fingerprints.of_key(key)}\"]"
        for name, key in device_keys.items()
    )
    text = f"""
listen: ["{listen}"]
results_dir: {tmp / "results"}
state_dir: {tmp / "state"}
store: {{database: {tmp / "callhome.sqlite"}}}
api: {{listen: "tcp:0:interface=127.0.0.1"}}
defaults:
  username: admin
  {credentials}
  chain: main
devices:
{devices}
chains:
  main: {chain}
{extra}
"""
    return text


class InMemoryCall:
    """
    One call home wired in memory: the manager's transport and a device's.

    @ivar device: the device's SSH server transport; C{seen} lists the
        message numbers it received.
    """

    def __init__(self, manager: Manager, device_factory: DeviceSSHFactory) -> None:
        self.manager = manager
        self.call = manager.new_call()
        self.admitted = manager.admit("192.168.1.1")
        self.device = device_factory.buildProtocol(None)
        self.device.seen = []
        original = self.device.dispatchMessage

        def recording(number: int, payload: bytes) -> Any:
            self.device.seen.append(number)
            return original(number, payload)

        self.device.dispatchMessage = recording
        self.pump = iosim.connect(
            self.call, iosim.makeFakeServer(self.call),
            self.device, iosim.makeFakeClient(self.device),
            greet=False, clock=manager.clock,
        )

    def run(self, rounds: int = 50) -> None:
        """Pump until both sides are quiet."""
        for _ in range(rounds):
            if not self.pump.flush():
                break


def make_keys(test: Any) -> None:
    """
    Give a test its scratch directory (C{tmp}), the manager's key on disk
    (C{manager_key}, C{key_path}) and a device host key (C{device_key}).
    """
    test.tmp = Path(test.mktemp())
    test.manager_key = new_key()
    test.key_path = write_key(test.tmp / "keys", "manager", test.manager_key)
    test.device_key = new_key()


def device_factory(host_key: keys.Key, authorized: list[keys.Key] | None = None, password: str | None = None, datastore: Datastore | None = None, **kwargs: Any) -> DeviceSSHFactory:
    """A simulated device's SSH server factory (its own datastore unless given)."""
    factory = DeviceSSHFactory(
        host_key, datastore if datastore is not None else Datastore.from_file(), "admin",
        [k.public() for k in (authorized or [])], password, **kwargs,
    )
    # conch delays a failed password by 1 s on the global reactor, which an
    # in-memory test never runs.
    factory.services = dict(factory.services)
    factory.services[b"ssh-userauth"] = type(
        "InstantUserAuth", (factory.services[b"ssh-userauth"],), {"_ebPassword": lambda self, failure: failure}
    )
    factory.doStart()
    return factory


def memory_manager(config: config_module.Config) -> Manager:
    """A manager on a MemoryReactorClock."""
    return Manager(config, MemoryReactorClock())
