"""
A running service on loopback, its API through a real HTTP client
(twisted.web's Agent), and simulated devices in their own processes.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task, utils
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from callhome import config as config_module
from callhome import fingerprints
from callhome.service import CallHomeService
from callhome.simulator.ssh_server import load_or_create_host_key
from tests.helpers import new_key, write_key

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpReply:
    """An HTTP response, read whole."""

    def __init__(self, code: int, headers: Headers, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


async def http(method: str, url: str, body: bytes | None = None, content_type: str | None = None, token: str | None = None) -> HttpReply:
    """One request through twisted.web's Agent."""
    from twisted.web.client import FileBodyProducer
    from io import BytesIO

    headers = Headers()
    if content_type:
        headers.addRawHeader("Content-Type", content_type)
    if token:
        headers.addRawHeader("Authorization", f"Bearer {token}")
    producer = FileBodyProducer(BytesIO(body)) if body is not None else None
    response = await Agent(reactor).request(method.encode(), url.encode(), headers, producer)
    with warnings.catch_warnings():
        # Twisted's own response transport lacks abortConnection; not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        body = readBody(response)
    return HttpReply(response.code, response.headers, await body)


class Device(ProcessProtocol):
    """A callhome-device process; C{ended} fires with its exit code."""

    def __init__(self) -> None:
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


def start_device(*args: str) -> Device:
    """Start callhome-device (this checkout's) in its own process."""
    device = Device()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    reactor.spawnProcess(device, sys.executable, [sys.executable, "-m", "callhome.simulator.cli", *args], env=env)
    return device


def run_cli(*args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """Run the callhome command (this checkout's) in its own process."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("CALLHOME_API", None)
    return utils.getProcessOutputAndValue(sys.executable, ["-m", "callhome.tools.cli", *args], env=env, reactor=reactor)


async def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll C{predicate} every 20 ms until it holds."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


class RunningService(TestCase):
    """Runs the service from a config file on loopback for a test."""

    timeout = 120

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir(parents=True)
        self.manager_key = write_key(self.tmp / "keys", "manager", new_key())
        self.manager_pub = f"{self.manager_key}.pub"
        self.config_path = self.tmp / "config.yaml"
        self.devices: list[Device] = []
        # Registered before the service's stop, so it runs after it: the
        # service closes every session, then the device processes end.
        self.addCleanup(self._devices_ended)

    def device_key(self, name: str) -> tuple[Path, str]:
        """A simulated device's host key file and fingerprint."""
        path = self.tmp / "devices" / name
        return path, fingerprints.of_key(load_or_create_host_key(path))

    def write_config(self, devices: str, chains: str = "{main: [{get: {}}]}", extra: str = "", listen: str | None = None) -> None:
        listen = listen or f'["tcp:{self.port}:interface=127.0.0.1"]'
        self.config_path.write_text(f"""
listen: {listen}
results_dir: {self.tmp / 'results'}
state_dir: {self.tmp / 'state'}
store: {{database: {self.tmp / 'callhome.sqlite'}{self.store_extra}}}
api: {{listen: "tcp:{self.api_port}:interface=127.0.0.1"{self.api_extra}}}
defaults: {{username: admin, private_key: {self.manager_key}, chain: main}}
devices: {devices}
chains: {chains}
{extra}
""")

    api_extra = ""
    #: more store keys (", payloads: database")
    store_extra = ""

    def start(self, devices: str, chains: str = "{main: [{get: {}}]}", extra: str = "") -> CallHomeService:
        self.port = free_port()
        self.api_port = free_port()
        self.write_config(devices, chains, extra)
        self.service = CallHomeService(config_module.load(self.config_path), reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        address = self.service.api_address()
        self.api = f"http://127.0.0.1:{address.port}"
        return self.service

    def call(self, key_path: Path, *extra: str, port: int | None = None) -> Device:
        """A simulated device calling the service once."""
        device = start_device(
            "--manager", f"127.0.0.1:{port or self.port}", "--host-key", str(key_path),
            "--authorized-key", self.manager_pub, "--quiet", "--retries", "0", *extra,
        )
        self.devices.append(device)
        return device

    async def _devices_ended(self) -> None:
        for device in self.devices:
            if not device.ended.called:
                timer = reactor.callLater(10, device.transport.signalProcess, "KILL")
                await device.ended
                if timer.active():
                    timer.cancel()

    async def get(self, path: str, **kw: Any) -> HttpReply:
        return await http("GET", self.api + path, **kw)

    async def post(self, path: str, body: bytes | None = b"", **kw: Any) -> HttpReply:
        return await http("POST", self.api + path, body, **kw)

    async def session_of(self, name: str) -> None:
        """Wait until the device has a NETCONF session whose chain has run."""
        manager = self.service.manager
        await wait_for(
            lambda: name in manager.sessions and manager.sessions[name].session is not None
            and manager.sessions[name].call.steps,
            what=f"a session of {name}",
        )
