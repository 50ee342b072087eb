"""
``callhome``: the operator's command line.

    callhome [-c etc/config.yaml] devices [--json]
    callhome [-c etc/config.yaml] pending [--json]
    callhome [-c etc/config.yaml] approve FINGERPRINT NAME [--group GROUP]
    callhome listen --host-key FP | --accept-any-host-key  --get | --get-config | --rpc FILE ...

``devices`` and ``pending`` read the state the running service writes in
``state_dir``; ``approve`` enrolls a quarantined device, and the running
service picks it up within a couple of seconds, without a restart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Sequence

from callhome import config as config_module
from callhome import fingerprints
from callhome.registry import (
    ENROLLED_FILE,
    QUARANTINE_FILE,
    STATUS_FILE,
    Enrollment,
    EnrollmentError,
    check_enrollment,
    read_json,
    write_json,
)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) + "Z"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def devices(config: config_module.Config, as_json: bool) -> int:
    """Every configured and enrolled device with its status."""
    status = read_json(config.state_dir / STATUS_FILE, {})
    enrolled = read_json(config.state_dir / ENROLLED_FILE, [])
    names = [d.name for d in config.devices] + [e["name"] for e in enrolled if "name" in e]
    rows: list[dict[str, Any]] = []
    for name in dict.fromkeys(names):
        entry = status.get(name, {})
        rows.append({
            "name": name,
            "status": entry.get("status", "never-called"),
            "last_seen": entry.get("last_seen"),
            "last_source": entry.get("last_source"),
            "calls": entry.get("calls", 0),
            "last_error": entry.get("last_error"),
        })
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    print(_table(
        [[r["name"], r["status"], _when(r["last_seen"]), r["last_source"] or "-", str(r["calls"]), r["last_error"] or ""] for r in rows],
        ["DEVICE", "STATUS", "LAST SEEN", "SOURCE", "CALLS", "LAST ERROR"],
    ))
    return 0


def pending(config: config_module.Config, as_json: bool) -> int:
    """Unknown host keys held in quarantine."""
    entries = list(read_json(config.state_dir / QUARANTINE_FILE, {}).values())
    if as_json:
        print(json.dumps(entries, indent=1))
        return 0
    if not entries:
        print("no devices in quarantine" + ("" if config.unknown_devices == "quarantine" else f" (unknown_devices is {config.unknown_devices})"))
        return 0
    print(_table(
        [[e["fingerprint"], e["key_type"], _when(e["first_seen"]), _when(e["last_seen"]), e["last_source"], str(e["times_seen"])] for e in entries],
        ["FINGERPRINT", "KEY TYPE", "FIRST SEEN", "LAST SEEN", "SOURCE", "CALLS"],
    ))
    return 0


def approve(config: config_module.Config, fingerprint: str, name: str, group: str | None) -> int:
    """Enroll a quarantined device under a name."""
    try:
        fp = fingerprints.normalise(fingerprint)
    except fingerprints.FingerprintError as e:
        print(f"callhome approve: {e}", file=sys.stderr)
        return 2
    quarantined = read_json(config.state_dir / QUARANTINE_FILE, {})
    if fp not in quarantined:
        print(f"callhome approve: {fp} is not in quarantine (see: callhome pending)", file=sys.stderr)
        return 2
    path = config.state_dir / ENROLLED_FILE
    enrolled = read_json(path, [])
    taken = {f: d.name for d in config.devices for f in d.host_keys}
    taken.update({e["fingerprint"]: e["name"] for e in enrolled if "fingerprint" in e and "name" in e})
    enrollment = Enrollment(fp, name, group, time.time())
    try:
        check_enrollment(config, enrollment, taken)
    except EnrollmentError as e:
        print(f"callhome approve: {e}", file=sys.stderr)
        return 2
    enrolled.append(enrollment.__dict__)
    write_json(path, enrolled)
    print(f"approved {fp} as {name}" + (f" in group {group}" if group else "") + "; the running service picks it up within seconds")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``callhome``."""
    parser = argparse.ArgumentParser(prog="callhome", description="Operate a callhome service.")
    parser.add_argument("-c", "--config", default="etc/config.yaml", help="the service's config file (default %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("devices", "list devices and their status"), ("pending", "list quarantined devices")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub = commands.add_parser("approve", help="enroll a quarantined device under a name")
    sub.add_argument("fingerprint")
    sub.add_argument("name")
    sub.add_argument("--group", help="the group whose credentials and chain it takes (default: defaults)")
    from callhome import listen

    sub = commands.add_parser("listen", help="wait for one call home, run one operation, print the reply")
    listen.add_arguments(sub)
    args = parser.parse_args(argv)
    if args.command == "listen":
        return listen.run(args)
    try:
        config = config_module.load(args.config)
    except config_module.ConfigError as e:
        print(f"callhome: config error: {e}", file=sys.stderr)
        return 2
    if args.command == "devices":
        return devices(config, args.json)
    if args.command == "pending":
        return pending(config, args.json)
    return approve(config, args.fingerprint, args.name, args.group)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
