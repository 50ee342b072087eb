"""
``callhome listen``: wait for one call home, run one operation, print the reply.

The one-shot tool, like ``netconf-console --listen --get``, done right: the
device's host key is checked (``--host-key``, repeatable) before any
credential is sent; accepting an unknown key takes an explicit
``--accept-any-host-key``, and then its fingerprint is printed.  The reply
XML goes to stdout exactly as received; everything else goes to stderr.
Exit status: 0 on success, 1 when the call failed (reason on stderr), 2 on
bad arguments or when no device called in time.

``--tls`` waits for a TLS call home instead (port 4335): we present
``--certificate``/``--key``, and the device is known by ``--pin`` (its
certificate's SHA-256 fingerprint, repeatable) or by ``--ca`` and
``--name`` (a certificate that CA issued, carrying that name).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from lxml import etree
from twisted.conch.ssh import keys
from twisted.internet import defer
from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner, textFileLogObserver

from callhome import fingerprints
from callhome.actions import ActionContext
from callhome.actions.builtin import Sleep
from callhome.actions.chains import Step
from callhome.config import Config, Credentials, Device, NetconfSettings, Profile, SSHSettings
from callhome.netconf import operations as ops
from callhome.netconf import xml
from callhome.reactor import IServiceReactor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``callhome listen``."""
    parser.add_argument("--port", type=int, help="port to wait on (default 4334, 4335 with --tls)")
    parser.add_argument("--interface", default="0.0.0.0", help="address to wait on (default %(default)s)")
    parser.add_argument("--username", default="admin", help="SSH user (default %(default)s)")
    parser.add_argument("--private-key", help="private key file to log in with")
    parser.add_argument("--passphrase-env", help="environment variable holding the key's passphrase")
    parser.add_argument("--password-env", help="environment variable holding the password")
    parser.add_argument("--password", help="password (visible to other users in ps: prefer --password-env)")
    identity = parser.add_mutually_exclusive_group()
    identity.add_argument("--host-key", action="append", metavar="FINGERPRINT", help="the device's SHA256 host-key fingerprint (repeatable)")
    identity.add_argument("--accept-any-host-key", action="store_true", help="accept whatever host key calls, and print its fingerprint")
    tls = parser.add_argument_group("TLS call home (RFC 8071 section 4)")
    tls.add_argument("--tls", action="store_true", help="wait for a TLS call home (NETCONF over TLS) instead of SSH")
    tls.add_argument("--certificate", help="our certificate (PEM chain) to present")
    tls.add_argument("--key", help="its private key (PEM); --passphrase-env if encrypted")
    tls.add_argument("--pin", action="append", metavar="FINGERPRINT", help="the device certificate's SHA-256 fingerprint (repeatable)")
    tls.add_argument("--ca", help="a CA bundle: a certificate it issued, carrying --name, identifies the device")
    tls.add_argument("--name", action="append", help="with --ca: a name (SAN DNS or IP, or CN) the certificate must carry (repeatable)")
    operation = parser.add_mutually_exclusive_group(required=True)
    operation.add_argument("--get", action="store_true", help="run <get>")
    operation.add_argument("--get-config", nargs="?", const="running", metavar="SOURCE", help="run <get-config> on SOURCE (default running)")
    operation.add_argument("--rpc", metavar="FILE", help="run the operation in FILE (XML)")
    parser.add_argument("--subtree", help="subtree filter (XML) for --get/--get-config")
    parser.add_argument("--xpath", help="XPath filter for --get/--get-config")
    parser.add_argument("--base-1-0-only", action="store_true", help="offer only base:1.0 framing")
    parser.add_argument("--sleep", type=float, default=0.0, metavar="SECONDS", help="pause after the hello (devices such as netconfd lose an rpc sent at once)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the call and the reply (default %(default)s)")


class ListenError(Exception):
    """Bad arguments: the message says which."""


@dataclass
class PrintReply:
    """The one step: send the operation, keep the reply as received."""

    operation: etree._Element
    name: str = "listen"
    reply: bytes | None = None

    def __call__(self, context: ActionContext) -> defer.Deferred[str]:
        d = context.session.rpc(self.operation)

        def keep(reply: Any) -> str:
            self.reply = reply.raw
            return "ok"

        return d.addCallback(keep)


def operation_from(args: argparse.Namespace) -> etree._Element:
    """The operation the arguments ask for."""
    if args.rpc:
        try:
            return ops.element(Path(args.rpc).read_text(encoding="utf-8"))
        except OSError as e:
            raise ListenError(f"--rpc {args.rpc}: {e.strerror}") from None
        except (etree.XMLSyntaxError, ValueError) as e:
            raise ListenError(f"--rpc {args.rpc}: not one XML element ({e})") from None
    try:
        flt = ops.filter_element(args.subtree, args.xpath, None)
    except (etree.XMLSyntaxError, ValueError) as e:
        raise ListenError(f"bad filter: {e}") from None
    op = ops.simple("get-config", source=args.get_config) if args.get_config else etree.Element(xml.qname("get"), nsmap={None: xml.NETCONF_NS})
    if flt is not None:
        op.append(flt)
    return op


def credentials_from(args: argparse.Namespace) -> Credentials:
    """The login the arguments give."""
    private_keys: tuple[keys.Key, ...] = ()
    if args.private_key:
        passphrase = os.environ.get(args.passphrase_env, "") if args.passphrase_env else None
        try:
            private_keys = (keys.Key.fromFile(args.private_key, passphrase=passphrase.encode() if passphrase else None),)
        except (OSError, keys.BadKeyError, keys.EncryptedKeyError) as e:
            raise ListenError(f"--private-key {args.private_key}: {e}") from None
    password = args.password
    if args.password_env:
        if args.password_env not in os.environ:
            raise ListenError(f"--password-env: environment variable {args.password_env} is not set")
        password = os.environ[args.password_env]
    if not private_keys and password is None:
        raise ListenError("give --private-key or --password-env: how do we log in?")
    return Credentials(args.username, private_keys, password)


def build_chain(args: argparse.Namespace, step: PrintReply) -> dict[str, tuple[Step, ...]]:
    """The one chain, built: an optional pause, then the operation."""
    steps = [Step(name="listen", action=step, timeout=args.timeout)]
    if args.sleep > 0:
        steps.insert(0, Step(name="sleep", action=Sleep(args.sleep)))
    return {"listen": tuple(steps)}


def build_tls_config(args: argparse.Namespace, state_dir: Path) -> Config:
    """A one-device TLS config from the arguments (its chain is L{build_chain}'s)."""
    from callhome.config import ConfigError, TlsSettings
    from callhome.config.node import Node
    from callhome.config.secrets import SecretReader

    if not args.certificate or not args.key:
        raise ListenError("--tls: give --certificate and --key: what we present to the device")
    if not args.pin and not args.ca:
        raise ListenError("--tls: give --pin FINGERPRINT or --ca FILE with --name: how is the device known?")
    if args.ca and not args.name and not args.pin:
        raise ListenError("--ca: give --name too: the name the device's certificate must carry")
    fields = {"tls_certificate": Node(args.certificate, "--certificate"), "tls_private_key": Node(args.key, "--key")}
    if args.passphrase_env:
        fields["tls_private_key_passphrase_env"] = Node(args.passphrase_env, "--passphrase-env")
    try:
        identity = SecretReader(os.environ, lambda path, problem: None).tls_identity([fields], "--tls")
        pins = frozenset(fingerprints.normalise_certificate(p) for p in args.pin or [])
    except (ConfigError, fingerprints.FingerprintError) as e:
        raise ListenError(str(e)) from None
    profile = Profile(Credentials(args.username), "listen", tls=identity)
    device = Device.from_profile("device", frozenset(), profile, certificates=pins, tls_names=tuple(args.name or ()))
    port = args.port or 4335
    return Config(
        listen=(),
        listen_tls=(f"tcp:{port}:interface={args.interface}",),
        results_dir=state_dir / "results",
        devices=(device,),
        chains={},
        netconf=NetconfSettings(offer_base_1_1=not args.base_1_0_only, hello_timeout=args.timeout, rpc_timeout=args.timeout),
        ssh=SSHSettings(handshake_timeout=args.timeout),
        default_profile=profile,
        state_dir=state_dir,
        tls=TlsSettings(trusted_ca_path=args.ca, default_identity=identity),
    )


def build_config(args: argparse.Namespace, state_dir: Path) -> Config:
    """A one-device config from the arguments (its chain is L{build_chain}'s)."""
    if args.tls:
        return build_tls_config(args, state_dir)
    if not args.host_key and not args.accept_any_host_key:
        raise ListenError("give --host-key FINGERPRINT or --accept-any-host-key: how is the device known?")
    credentials = credentials_from(args)
    profile = Profile(credentials, "listen")
    devices: tuple[Device, ...] = ()
    if args.host_key:
        try:
            host_keys = frozenset(fingerprints.normalise(f) for f in args.host_key)
        except fingerprints.FingerprintError as e:
            raise ListenError(f"--host-key: {e}") from None
        devices = (Device.from_profile("device", host_keys, profile),)
    return Config(
        listen=(f"tcp:{args.port or 4334}:interface={args.interface}",),
        results_dir=state_dir / "results",
        devices=devices,
        chains={},
        netconf=NetconfSettings(offer_base_1_1=not args.base_1_0_only, hello_timeout=args.timeout, rpc_timeout=args.timeout),
        ssh=SSHSettings(handshake_timeout=args.timeout),
        default_profile=profile,
        unknown_devices="accept" if args.accept_any_host_key else "reject",
        state_dir=state_dir,
    )


def run(args: argparse.Namespace, reactor: IServiceReactor | None = None) -> int:
    """Wait for the call, print the reply; return the exit status."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        # Its declared type names only some of what it provides.
        reactor = cast(IServiceReactor, global_reactor)
    from callhome.service import CallHomeService

    step = PrintReply(operation_from(args))
    state_dir = Path(tempfile.mkdtemp(prefix="callhome-listen-"))
    try:
        config = build_config(args, state_dir)
        globalLogBeginner.beginLoggingTo(
            [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.error)])],
            redirectStandardIO=False,
        )
        service = CallHomeService(config, reactor, chains=build_chain(args, step))
        port = args.port or (4335 if args.tls else 4334)
        outcome: list[Any] = []
        call_ended = service.manager.call_ended

        def ended(call: Any) -> None:
            call_ended(call)
            if call.call.fingerprint is None:
                # Never showed a host key (a port scan, garbage): not our call.
                print(f"callhome listen: ignoring a connection from {call.call.peer}: "
                      f"{call.call.reason or ('no TLS' if args.tls else 'no SSH')}", file=sys.stderr)
                return
            if not outcome:
                outcome.append(call.call)
                reactor.callLater(0, reactor.stop)

        service.manager.call_ended = ended  # type: ignore[method-assign]  # the one-shot tool stops at the first call

        def timed_out() -> None:
            if not outcome:
                outcome.append(None)
                reactor.stop()

        try:
            service.startService()
        except Exception as e:
            print(f"callhome listen: cannot listen on {args.interface}:{port}: {e}", file=sys.stderr)
            return 2
        print(f"callhome listen: waiting on {args.interface}:{port} for a{' TLS' if args.tls else 'n SSH'} call home", file=sys.stderr)
        reactor.callLater(args.timeout, timed_out)
        reactor.run()
        record = outcome[0] if outcome else None
        if record is None:
            print(f"callhome listen: no device called within {args.timeout:g}s", file=sys.stderr)
            return 2
        if record.fingerprint and (args.accept_any_host_key or args.tls):
            what = "certificate" if args.tls else "host key"
            print(f"callhome listen: device {what} {record.fingerprint} ({record.key_type}) from {record.peer}", file=sys.stderr)
        if step.reply is None:
            print(f"callhome listen: call from {record.peer} failed: {record.reason or record.outcome}", file=sys.stderr)
            return 1
        sys.stdout.buffer.write(step.reply + b"\n")
        sys.stdout.flush()
        return 0
    except ListenError as e:
        print(f"callhome listen: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
