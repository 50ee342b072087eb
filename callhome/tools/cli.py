"""
``callhome``: the operator's command line, a client of the management API.

    callhome [-c etc/config.yaml] [--api URL] [--json] devices [NAME] [--overdue]
    callhome schemas [DEVICE]
    callhome ... sessions
    callhome ... events [--since ID|TIME] [--device D] [--kind K] [--limit N] [--follow]
    callhome ... results [--device D] [--action A] [--limit N]
    callhome ... result ID                      (the payload, to standard output)
    callhome ... export DIR [--device D] [--action A] [--limit N]   (payloads as files under DIR)
    callhome ... pending                        (alias: quarantine)
    callhome ... approve FINGERPRINT NAME [--group G] [--offline]
    callhome ... rpc DEVICE FILE                (FILE: XML operation, or JSON action; - for stdin)
    callhome ... disconnect DEVICE
    callhome ... reload
    callhome listen ...                         (one-shot, no service needed)

The API's address and token come from the service's config file (``api:``)
unless ``--api`` / ``--token-file`` (or ``CALLHOME_API`` /
``CALLHOME_API_TOKEN``) say otherwise.  Tables for people; ``--json`` for
scripts.  Exit status: 0 done, 1 the service refused or failed, 2 bad
arguments or no service to talk to.

``approve --offline`` writes ``enrolled.json`` in ``state_dir`` instead, for
a service that is not running (it applies it at start).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote, urlencode

import yaml

from callhome.config import DEFAULT_API_LISTEN

#: seconds to wait for the API (an RPC may take netconf.rpc_timeout).
REQUEST_TIMEOUT = 120.0


class CliError(Exception):
    """Something to tell the operator; C{status} is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _when(text: str | float | None) -> str:
    if text is None:
        return "-"
    if isinstance(text, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(text)) + "Z"
    return text.replace("T", " ")[:19] + "Z"


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def endpoint_url(description: str) -> str:
    """The URL of a server endpoint string, as seen from this host."""
    parts = description.replace("\\:", "\0").split(":")
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        raise CliError(f"cannot reach an API on {description!r} from here: give --api URL", 2)
    port, interface = None, ""
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq and port is None:
            port = key
        elif key == "port":
            port = value
        elif key == "interface":
            interface = value.replace("\0", ":")
    if interface in ("", "0.0.0.0"):
        interface = "127.0.0.1"
    elif interface == "::":
        interface = "::1"
    host = f"[{interface}]" if ":" in interface else interface
    return f"{'https' if kind == 'ssl' else 'http'}://{host}:{port}"


def api_settings(config_path: str) -> tuple[str, str | None]:
    """The API URL and token from a config file (read loosely: only ``api:``)."""
    try:
        with open(config_path, encoding="utf-8") as f:
            document = yaml.safe_load(f) or {}
    except FileNotFoundError:
        return endpoint_url(DEFAULT_API_LISTEN), None
    except (OSError, yaml.YAMLError) as e:
        raise CliError(f"cannot read {config_path}: {e}", 2) from None
    api = (document.get("api") or {}) if isinstance(document, dict) else {}
    listen = api.get("listen", DEFAULT_API_LISTEN)
    if listen is None:
        raise CliError(f"the API is off in {config_path} (api.listen): give --api URL", 2)
    token = None
    if api.get("token_env"):
        token = os.environ.get(api["token_env"])
    elif api.get("token_file"):
        try:
            token = Path(api["token_file"]).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise CliError(f"cannot read the API token {api['token_file']}: {e.strerror}", 2) from None
    elif api.get("token"):
        token = str(api["token"])
    return endpoint_url(str(listen)), token


class Client:
    """Talks to the service's API."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> tuple[bytes, dict[str, str]]:
        """Send a request; return the body and headers, or raise L{CliError} with the API's error."""
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                return response.read(), dict(response.headers)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace").strip() or e.reason
            raise CliError(f"{e.code}: {message}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CliError(f"cannot reach the callhome API at {self.url} ({reason}); is the service running?", 2) from None

    def json(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON request and its JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        raw, _ = self.request(method, path, data, "application/json" if data is not None else None)
        return json.loads(raw)


# --- commands ---------------------------------------------------------------------------


def cmd_devices(client: Client, args: argparse.Namespace) -> int:
    """List devices, or show one."""
    if args.name:
        device = client.json("GET", f"/devices/{quote(args.name, safe='')}")
        if args.json:
            return _print_json(device)
        session = device.pop("current_session")
        for key, value in device.items():
            print(f"{key:12} {value}")
        if session:
            print("session:")
            capabilities = session.pop("capabilities", [])
            for key, value in session.items():
                print(f"  {key:20} {value}")
            print(f"  capabilities ({len(capabilities)}):")
            for capability in capabilities:
                print(f"    {capability}")
        return 0
    devices = client.json("GET", "/devices?status=overdue" if args.overdue else "/devices")["devices"]
    if args.overdue and not devices and not args.json:
        print("no device is overdue")
        return 0
    if args.json:
        return _print_json(devices)
    print(_table(
        [[d["name"], d["status"], "yes" if d["session"] else "-", _when(d["last_seen"]), d["source"] or "-", d["calls"], d["last_error"] or ""] for d in devices],
        ["DEVICE", "STATUS", "SESSION", "LAST SEEN", "SOURCE", "CALLS", "LAST ERROR"],
    ))
    return 0


def cmd_sessions(client: Client, args: argparse.Namespace) -> int:
    """The calls connected now."""
    sessions = client.json("GET", "/sessions")["sessions"]
    if args.json:
        return _print_json(sessions)
    if not sessions:
        print("no open sessions")
        return 0
    print(_table(
        [[s["device"] or "-", s["peer"], s["state"], s["mode"] or "-", _when(s["started"]), s["framing"] or "-", s["bytes_received"], s["id"]] for s in sessions],
        ["DEVICE", "PEER", "STATE", "MODE", "SINCE", "FRAMING", "BYTES IN", "CALL"],
    ))
    return 0


def cmd_events(client: Client, args: argparse.Namespace) -> int:
    """Events, oldest first; --follow keeps reading."""
    since = args.since
    while True:
        query = {k: v for k, v in (("since", since), ("device", args.device), ("kind", args.kind), ("limit", args.limit)) if v is not None}
        answer = client.json("GET", "/events?" + urlencode(query))
        for event in answer["events"]:
            if args.json:
                print(json.dumps(event))
            else:
                print(f"{_when(event['time'])}  {event['id']:>6}  {event['kind']:<14} {event['device'] or '-':<16} {event['message']}")
        sys.stdout.flush()
        if not args.follow:
            return 0
        since = str(answer["next"])
        time.sleep(1.0)


def cmd_results(client: Client, args: argparse.Namespace) -> int:
    """Result metadata, newest first."""
    query = {k: v for k, v in (("device", args.device), ("action", args.action), ("limit", args.limit)) if v is not None}
    results = client.json("GET", "/results?" + urlencode(query))["results"]
    if args.json:
        return _print_json(results)
    print(_table(
        [[r["id"], r["device"], r["action"], _when(r["time"]), r["size"], r["path"]] for r in results],
        ["ID", "DEVICE", "ACTION", "TIME", "BYTES", "PATH"],
    ))
    return 0


def cmd_result(client: Client, args: argparse.Namespace) -> int:
    """One result's payload to standard output."""
    body, _ = client.request("GET", f"/results/{int(args.id)}")
    sys.stdout.buffer.write(body)
    return 0


def cmd_export(client: Client, args: argparse.Namespace) -> int:
    """
    Write results' payloads as files under DIR, at their paths relative to
    results_dir (``DEVICE/STAMP-ACTION.xml``), each checked against its
    SHA-256: the files an operator gets with ``store.payloads: database``.
    """
    query = {k: v for k, v in (("device", args.device), ("action", args.action), ("limit", args.limit)) if v is not None}
    results = client.json("GET", "/results?" + urlencode(query))["results"]
    root = Path(args.directory).resolve()
    written = 0
    for result in results:
        target = (root / result["path"]).resolve()
        if root not in target.parents:
            print(f"result {result['id']}: path {result['path']!r} leaves {root}; skipped", file=sys.stderr)
            continue
        body, _ = client.request("GET", result["url"])
        if hashlib.sha256(body).hexdigest() != result["sha256"]:
            print(f"result {result['id']}: payload does not match its SHA-256; skipped", file=sys.stderr)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".partial-{target.name}")
        partial.write_bytes(body)
        partial.replace(target)
        written += 1
    print(f"{written} of {len(results)} results written under {root}", file=sys.stderr)
    return 0 if written == len(results) else 1


def cmd_schemas(client: Client, args: argparse.Namespace) -> int:
    """The cached YANG modules, or those a device announced."""
    path = f"/schemas?device={quote(args.device, safe='')}" if args.device else "/schemas"
    schemas = client.json("GET", path)["schemas"]
    if args.json:
        return _print_json(schemas)
    if not schemas:
        print("no schemas" + (f" announced by {args.device}" if args.device else " in the cache"))
        return 0
    rows = [[f"{s['module']}@{s['revision'] or '-'}", s["size"] if s["size"] is not None else "not cached",
             s["devices"] if "devices" in s else "-", _when(s["fetched_at"]), s["url"]] for s in schemas]
    print(_table(rows, ["MODULE", "BYTES", "DEVICES", "FETCHED", "URL"]))
    return 0


def cmd_pending(client: Client, args: argparse.Namespace) -> int:
    """Quarantined host keys."""
    entries = client.json("GET", "/quarantine")["quarantine"]
    if args.json:
        return _print_json(entries)
    if not entries:
        print("no devices in quarantine")
        return 0
    print(_table(
        [[e["fingerprint"], e["key_type"], _when(e["first_seen"]), _when(e["last_seen"]), e["source"], e["times_seen"]] for e in entries],
        ["FINGERPRINT", "KEY TYPE", "FIRST SEEN", "LAST SEEN", "SOURCE", "CALLS"],
    ))
    return 0


def cmd_approve(client: Client, args: argparse.Namespace) -> int:
    """Enroll a quarantined device."""
    body = {"name": args.name, **({"group": args.group} if args.group else {})}
    device = client.json("POST", f"/quarantine/{quote(args.fingerprint, safe='')}/approve", body)
    if args.json:
        return _print_json(device)
    print(f"approved {args.fingerprint} as {device['name']}" + (f" in group {args.group}" if args.group else "") + "; its next call is served")
    return 0


def cmd_rpc(client: Client, args: argparse.Namespace) -> int:
    """Run an RPC from a file on a device's persistent session."""
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror}", 2) from None
    is_json = args.file.endswith(".json") or body.lstrip()[:1] == b"{"
    raw, headers = client.request(
        "POST", f"/devices/{quote(args.device, safe='')}/rpc", body,
        "application/json" if is_json else "application/xml",
    )
    if not is_json:
        sys.stdout.buffer.write(raw)
        return 0 if headers.get("X-Netconf-Outcome", "ok") == "ok" else 1
    answer = json.loads(raw)
    if args.json:
        _print_json(answer)
    else:
        if answer.get("reply"):
            print(answer["reply"])
        if not answer["ok"]:
            print(f"{answer['action']} failed: {answer['error']}", file=sys.stderr)
    return 0 if answer["ok"] else 1


def cmd_disconnect(client: Client, args: argparse.Namespace) -> int:
    """Close a device's session."""
    client.json("POST", f"/devices/{quote(args.device, safe='')}/disconnect")
    print(f"session of {args.device} closed")
    return 0


def cmd_reload(client: Client, args: argparse.Namespace) -> int:
    """Have the service re-read its config."""
    summary = client.json("POST", "/reload")
    if args.json:
        return _print_json(summary)
    print(f"config reloaded: {summary['devices']} devices; listeners added {summary['listeners_added'] or '-'}, removed {summary['listeners_removed'] or '-'}")
    if summary["needs_restart"]:
        print(f"changed, takes effect after a restart: {', '.join(summary['needs_restart'])}")
    return 0


def approve_offline(config_path: str, fingerprint: str, name: str, group: str | None) -> int:
    """Write an enrollment to enrolled.json, for a service that is not running."""
    from callhome import config as config_module
    from callhome import fingerprints
    from callhome.call.registry import ENROLLED_FILE, Enrollment, EnrollmentError, check_enrollment, read_json, write_json

    try:
        config = config_module.load(config_path)
        fp = fingerprints.normalise_any(fingerprint)
    except (config_module.ConfigError, fingerprints.FingerprintError) as e:
        raise CliError(str(e), 2) from None
    path = config.state_dir / ENROLLED_FILE
    enrolled = read_json(path, [])
    taken = {f: d.name for d in config.devices for f in d.host_keys}
    taken.update({e["fingerprint"]: e["name"] for e in enrolled if "fingerprint" in e and "name" in e})
    enrollment = Enrollment(fp, name, group, time.time())
    try:
        check_enrollment(config, enrollment, taken)
    except EnrollmentError as e:
        raise CliError(str(e), 2) from None
    enrolled.append(enrollment.__dict__)
    write_json(path, enrolled)
    print(f"approved {fp} as {name}" + (f" in group {group}" if group else "") + f" in {path}; applied when the service starts (or within seconds if it runs)")
    return 0


def _print_json(value: Any) -> int:
    print(json.dumps(value, indent=1))
    return 0


COMMANDS = {
    "devices": cmd_devices, "sessions": cmd_sessions, "events": cmd_events, "results": cmd_results,
    "result": cmd_result, "export": cmd_export, "schemas": cmd_schemas, "pending": cmd_pending, "quarantine": cmd_pending, "approve": cmd_approve,
    "rpc": cmd_rpc, "disconnect": cmd_disconnect, "reload": cmd_reload,
}


def parser() -> argparse.ArgumentParser:
    """The command line's grammar."""
    top = argparse.ArgumentParser(prog="callhome", description="Operate a callhome service through its API.")
    top.add_argument("-c", "--config", default="etc/config.yaml", help="the service's config file, for the API address and token (default %(default)s)")
    top.add_argument("--api", default=os.environ.get("CALLHOME_API"), help="the API's URL, e.g. http://127.0.0.1:8080 (default: from the config)")
    top.add_argument("--token-file", help="a file holding the API's bearer token (default: from the config, or $CALLHOME_API_TOKEN)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    commands = top.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("devices", parents=[common], help="list devices and their status, or show one")
    sub.add_argument("name", nargs="?")
    sub.add_argument("--overdue", action="store_true", help="only the devices that have not called when expected")
    commands.add_parser("sessions", parents=[common], help="list the open sessions")
    sub = commands.add_parser("schemas", parents=[common], help="list the cached YANG modules, or those a device announced")
    sub.add_argument("device", nargs="?")
    sub = commands.add_parser("events", parents=[common], help="list events (oldest first)")
    sub.add_argument("--since", help="an event id or a time (epoch seconds or ISO 8601)")
    sub.add_argument("--device")
    sub.add_argument("--kind")
    sub.add_argument("--limit", type=int)
    sub.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    sub = commands.add_parser("results", parents=[common], help="list saved results (newest first)")
    sub.add_argument("--device")
    sub.add_argument("--action")
    sub.add_argument("--limit", type=int)
    sub = commands.add_parser("result", parents=[common], help="print one result's payload")
    sub.add_argument("id", type=int)
    sub = commands.add_parser("export", parents=[common], help="write results' payloads as files under a directory")
    sub.add_argument("directory")
    sub.add_argument("--device")
    sub.add_argument("--action")
    sub.add_argument("--limit", type=int)
    for name in ("pending", "quarantine"):
        commands.add_parser(name, parents=[common], help="list quarantined devices")
    sub = commands.add_parser("approve", parents=[common], help="enroll a quarantined device under a name")
    sub.add_argument("fingerprint")
    sub.add_argument("name")
    sub.add_argument("--group", help="the group whose credentials and chain it takes (default: defaults)")
    sub.add_argument("--offline", action="store_true", help="write enrolled.json instead (service not running)")
    sub = commands.add_parser("rpc", parents=[common], help="run an RPC on a device's persistent session")
    sub.add_argument("device")
    sub.add_argument("file", help="an XML operation (e.g. <get-config>...) or a JSON action ({\"get\": {}}); - reads stdin")
    sub = commands.add_parser("disconnect", parents=[common], help="close a device's session")
    sub.add_argument("device")
    commands.add_parser("reload", parents=[common], help="have the service re-read its config")
    from callhome.tools import listen

    sub = commands.add_parser("listen", help="wait for one call home, run one operation, print the reply")
    listen.add_arguments(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``callhome``."""
    args = parser().parse_args(argv)
    if args.command == "listen":
        from callhome.tools import listen

        return listen.run(args)
    try:
        if args.command == "approve" and args.offline:
            return approve_offline(args.config, args.fingerprint, args.name, args.group)
        if args.api:
            url, token = args.api, None
        else:
            url, token = api_settings(args.config)
        if args.token_file:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        elif os.environ.get("CALLHOME_API_TOKEN"):
            token = os.environ["CALLHOME_API_TOKEN"]
        return COMMANDS[args.command](Client(url, token), args)
    except CliError as e:
        print(f"callhome {args.command}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
