"""
``callhome-device``: a simulated NETCONF device that calls home.

Plays the part of ConfD's ``netconf_ssh_call_home 127.0.0.1 4334``: it opens
TCP to the manager, runs an SSH server on that socket with its own host key
and serves the ``netconf`` subsystem.  ``--count``, ``--interval`` and
``--concurrency`` make it call repeatedly and many at once; ``--devices N``
makes it N devices with N host keys (for load and integration tests).
``--tls`` calls home over TLS instead (RFC 8071 §4, default port 4335):
the device presents ``--certificate``/``--key`` (a self-signed one is made
if absent) and accepts a manager certificate its ``--trusted-ca`` issued
or one of ``--manager-fingerprint``.
``--notify-every SECONDS`` makes every device raise a heartbeat event that
often, delivered to its subscribed sessions (the soak's notification load).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
from pathlib import Path
from typing import Any, Sequence, cast

from twisted.conch.ssh import keys
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint

from lxml import etree

from callhome import fingerprints
from callhome.reactor import IServiceReactor
from callhome.simulator.constants import SIMULATOR_NS
from callhome.simulator.netconf_server import DEFAULT_DATASTORE, Datastore
from callhome.simulator.ssh_server import DeviceSSHFactory, load_or_create_host_key


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="callhome-device", description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--manager", default="127.0.0.1:4334", help="HOST:PORT of the manager (default %(default)s)")
    p.add_argument("--host-key", default="var/device/host_ed25519", help="host key file; generated if absent (default %(default)s)")
    p.add_argument("--host-key-type", default="ed25519", choices=["ed25519", "ecdsa", "rsa"], help="type of a generated host key")
    p.add_argument("--devices", type=int, default=1, help="be N devices: host keys DIR/device-NNNN_<type> beside --host-key (default 1: just --host-key)")
    p.add_argument("--print-devices", action="store_true", help="print a YAML devices: list for the host keys and exit")
    p.add_argument("--username", default="admin", help="the user the manager logs in as (default %(default)s)")
    p.add_argument("--authorized-key", action="append", default=[], help="public key file (OpenSSH) the manager may use; repeatable")
    p.add_argument("--password", help="password the manager may use")
    p.add_argument("--password-env", help="environment variable holding that password")
    p.add_argument("--datastore", default=str(DEFAULT_DATASTORE), help="XML file whose root's children are the data (default: a small sample)")
    p.add_argument("--base-1-0-only", action="store_true", help="offer only base:1.0 framing")
    p.add_argument("--count", type=int, default=1, help="calls to make in all, 0 for no end (default %(default)s)")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between one worker's calls (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=1, help="calls in progress at once (default %(default)s)")
    p.add_argument("--retries", type=int, default=5, help="retry a call the manager closed before SSH started (admission), up to N times (default %(default)s)")
    p.add_argument("--retry-delay", type=float, default=1.0, help="longest random wait before a retry, seconds (default %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, help="give up on one call after this many seconds (default %(default)s)")
    p.add_argument("--source-address", help="local address to call from (e.g. 127.0.0.2)")
    p.add_argument("--notify-every", type=float, default=0.0, metavar="SECONDS",
                   help="raise a heartbeat notification this often on every device, to its subscribed sessions (default: never)")
    p.add_argument("--supervision-mode", choices=("ok", "error", "silent", "past"), default="ok",
                   help="how supervision-watchdog-reset (o-ran-supervision) is answered: ok, an rpc-error, never, "
                        "or with next-update-at in the past (default ok)")
    p.add_argument("--tls", action="store_true", help="call home over TLS (NETCONF over TLS, RFC 7589) instead of SSH")
    p.add_argument("--certificate", default="var/device/device.pem",
                   help="TLS: the device's certificate (PEM, chain after the leaf); self-signed and generated with its "
                        ".key if absent; with --devices N: DIR/device-NNNN.pem beside it (default %(default)s)")
    p.add_argument("--key", help="TLS: the device's private key (default: the certificate's path with .key)")
    p.add_argument("--trusted-ca", help="TLS: PEM bundle of CAs whose manager certificates the device accepts")
    p.add_argument("--manager-fingerprint", action="append", default=[],
                   help="TLS: SHA-256 fingerprint of a manager certificate the device accepts (its cert-to-name entry); repeatable")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    args = p.parse_args(argv)
    if args.password_env:
        if args.password_env not in os.environ:
            p.error(f"--password-env: environment variable {args.password_env} is not set")
        args.password = os.environ[args.password_env]
    if args.tls:
        if not args.trusted_ca and not args.manager_fingerprint and not args.print_devices:
            p.error("--tls: give --trusted-ca or --manager-fingerprint: which manager certificates may call?")
    elif not args.authorized_key and args.password is None and not args.print_devices:
        p.error("give --authorized-key or --password: how may the manager log in?")
    for option in ("count", "concurrency", "devices"):
        if getattr(args, option) < (0 if option == "count" else 1):
            p.error(f"--{option} is out of range")
    return args


def host_key_paths(args: argparse.Namespace) -> list[Path]:
    """The host key file of each simulated device."""
    base = Path(args.host_key)
    if args.devices == 1:
        return [base]
    return [base.parent / f"device-{i:04d}_{args.host_key_type}" for i in range(args.devices)]


def devices_yaml(paths: list[Path], loaded: list[keys.Key], prefix: str = "sim") -> str:
    """A ``devices:`` list for the manager's config naming these host keys."""
    lines = ["devices:"]
    for index, key in enumerate(loaded):
        lines.append(f"  - name: {prefix}-{index:04d}")
        lines.append(f'    host_keys: ["{fingerprints.of_key(key)}"]')
    return "\n".join(lines) + "\n"


def heartbeat(sequence: int) -> etree._Element:
    """The simulator's periodic event: ``<heartbeat><sequence>N</sequence></heartbeat>``."""
    event = etree.Element(f"{{{SIMULATOR_NS}}}heartbeat", nsmap={None: SIMULATOR_NS})
    etree.SubElement(event, f"{{{SIMULATOR_NS}}}sequence").text = str(sequence)
    return event


def start_heartbeats(reactor: IServiceReactor, datastores: Sequence[Datastore], every: float) -> list[task.LoopingCall]:
    """
    Raise a heartbeat on each datastore every C{every} seconds, the devices
    spread evenly over the interval so the manager sees a steady stream,
    not a burst each period.
    """
    loops = []
    for index, datastore in enumerate(datastores):
        counter = iter(range(1, 2**63))
        loop = task.LoopingCall(lambda d=datastore, c=counter: d.notify(heartbeat(next(c))))
        loop.clock = reactor
        delay = every * index / len(datastores)
        if delay:
            reactor.callLater(delay, loop.start, every, now=False)
        else:
            loop.start(every, now=False)
        loops.append(loop)
    return loops


class Caller:
    """Makes the calls and counts how they went."""

    def __init__(self, reactor: IServiceReactor, args: argparse.Namespace, factories: Sequence[Any]) -> None:
        self.reactor = reactor
        self.args = args
        self.factories = factories
        host, _, port = args.manager.rpartition(":")
        self.host, self.port = host.strip("[]") or "127.0.0.1", int(port)
        self.ok = 0
        self.failed = 0
        self.started = 0
        self.retried = 0

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(text, flush=True)

    def _next_factory(self) -> Any:
        factory = self.factories[self.started % len(self.factories)]
        self.started += 1
        return factory

    @defer.inlineCallbacks
    def call_once(self) -> Any:
        """One call home, retried (like a real device) if the manager refused it at once."""
        factory = self._next_factory()
        for attempt in range(self.args.retries + 1):
            refused = yield self._attempt(factory)
            if not refused:
                return
            if attempt < self.args.retries:
                self.retried += 1
                yield task.deferLater(self.reactor, random.uniform(0.1, 1.0) * self.args.retry_delay, lambda: None)
        self.failed += 1
        self.say(f"call {self.started} ({factory.fingerprint}): refused {self.args.retries + 1} times")

    @defer.inlineCallbacks
    def _attempt(self, factory: Any) -> Any:
        """One connection; True if the manager closed it before SSH began."""
        bind = (self.args.source_address, 0) if self.args.source_address else None
        endpoint = HostnameEndpoint(self.reactor, self.host, self.port, timeout=10, bindAddress=bind)
        try:
            protocol = yield endpoint.connect(factory)
        except Exception as e:
            # Refused or reset: a real device tries again later.
            self.say(f"call to {self.args.manager} failed: {e}")
            return True
        done = protocol.done
        done.addTimeout(self.args.timeout, self.reactor, onTimeoutCancel=lambda *_: protocol.transport.abortConnection())
        try:
            yield done
        except defer.TimeoutError:
            pass
        if not protocol.gotVersion:
            return True
        if protocol.authenticated:
            self.ok += 1
            self.say(f"call {self.started} ({factory.fingerprint}): served")
        else:
            self.failed += 1
            self.say(f"call {self.started} ({factory.fingerprint}): manager did not log in")
        return False

    @defer.inlineCallbacks
    def worker(self, quota: int | None) -> Any:
        made = 0
        while quota is None or made < quota:
            yield self.call_once()
            made += 1
            if self.args.interval and (quota is None or made < quota):
                yield task.deferLater(self.reactor, self.args.interval, lambda: None)

    def run(self) -> defer.Deferred[Any]:
        """Run the workers; fires when every call is made."""
        count, concurrency = self.args.count, self.args.concurrency
        if count == 0:
            quotas: list[int | None] = [None] * concurrency
        else:
            concurrency = min(concurrency, count)
            quotas = [count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)]
        return defer.DeferredList([self.worker(q) for q in quotas])


def certificate_paths(args: argparse.Namespace) -> list[Path]:
    """The certificate file of each simulated TLS device."""
    base = Path(args.certificate)
    if args.devices == 1:
        return [base]
    return [base.parent / f"device-{i:04d}.pem" for i in range(args.devices)]


def tls_factories(args: argparse.Namespace, template: Datastore) -> list[Any]:
    """The TLS devices: one certificate (made if absent) and datastore each."""
    from callhome import fingerprints
    from callhome.simulator.tls_device import TlsDeviceFactory, load_or_create_certificate

    trusted = Path(args.trusted_ca).read_bytes() if args.trusted_ca else None
    pinned = frozenset(fingerprints.normalise_certificate(f) for f in args.manager_fingerprint)
    factories = []
    for index, path in enumerate(certificate_paths(args)):
        cert_pem, key_pem = load_or_create_certificate(path, f"device-{index:04d}")
        if args.key and args.devices == 1:
            key_pem = Path(args.key).read_bytes()
        factories.append(TlsDeviceFactory(
            cert_pem, key_pem, Datastore(copy.deepcopy(template.elements), modules=template.modules),
            trusted, pinned, not args.base_1_0_only, args.username,
        ))
    return factories


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``callhome-device``."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.tls:
        return _main_tls(args)
    paths = host_key_paths(args)
    host_keys = [load_or_create_host_key(p, args.host_key_type) for p in paths]
    if args.print_devices:
        sys.stdout.write(devices_yaml(paths, host_keys))
        return 0
    authorized = []
    for path in args.authorized_key:
        try:
            authorized.append(keys.Key.fromFile(path))
        except (OSError, keys.BadKeyError) as e:
            print(f"callhome-device: --authorized-key {path}: {e}", file=sys.stderr)
            return 2
    # One datastore per simulated device, as with real devices: its sessions,
    # locks and /netconf-state are its own.  The file is parsed once.
    template = Datastore.from_file(args.datastore)
    factories = [
        DeviceSSHFactory(key, Datastore(copy.deepcopy(template.elements), modules=template.modules), args.username,
                         [a.public() for a in authorized], args.password, not args.base_1_0_only)
        for key in host_keys
    ]
    for f in factories:
        f.doStart()
        f.datastore.supervision_mode = args.supervision_mode
    if len(factories) == 1:
        print(f"device host key {factories[0].fingerprint} ({paths[0]})", flush=True)
    else:
        print(f"{len(factories)} devices, host keys in {paths[0].parent}", flush=True)
    return _run(args, factories)


def _main_tls(args: argparse.Namespace) -> int:
    """``--tls``: the same calls, over TLS."""
    template = Datastore.from_file(args.datastore)
    factories = tls_factories(args, template)
    if args.print_devices:
        for index, f in enumerate(factories):
            name = "sim-tls" if len(factories) == 1 else f"sim-tls-{index:04d}"
            print(f'  - {{name: {name}, certificates: ["{f.fingerprint}"]}}')
        return 0
    if len(factories) == 1:
        print(f"device certificate {factories[0].fingerprint} ({args.certificate})", flush=True)
    else:
        print(f"{len(factories)} TLS devices, certificates in {Path(args.certificate).parent}", flush=True)
    return _run(args, factories)


def _run(args: argparse.Namespace, factories: list[Any]) -> int:
    """Make the calls with C{factories} (SSH or TLS devices) and report."""
    from twisted.internet import reactor

    # The global reactor's declared type names only some of what it provides.
    caller = Caller(cast(IServiceReactor, reactor), args, factories)
    result: list[int] = []

    def finish(_: object) -> None:
        print(f"callhome-device: {caller.ok} calls served, {caller.failed} failed, {caller.retried} retries", flush=True)
        result.append(0 if caller.failed == 0 else 1)
        if reactor.running:
            reactor.stop()

    if args.notify_every > 0:
        start_heartbeats(cast(IServiceReactor, reactor), [f.datastore for f in factories], args.notify_every)
    reactor.callWhenRunning(lambda: caller.run().addBoth(finish))
    reactor.run()
    return result[0] if result else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
