"""
SSH against TLS call home on one manager, in the same run.

    python bench/run.py --tls-only [--sessions N] [--rounds R] [--tls-held N]

One manager listens on both ports (``listen`` and ``listen_tls``) for N
SSH devices and N TLS devices (self-signed certificates, pinned).  Periodic
rounds alternate SSH and TLS, so the machine's noise falls on both alike;
it prints the medians of sessions/s and of the manager's CPU ms per
session, and the TLS/SSH ratio.  Then it holds N persistent sessions of
each transport in turn and prints KiB of RSS per session and the CPU share
their keepalives (SSH) or NETCONF probes (TLS) cost, every 30 s each.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _manager_certificate(work: Path) -> str:
    """A self-signed manager certificate and key in C{work}; its fingerprint."""
    from callhome.simulator.tls_device import certificate_fingerprint, load_or_create_certificate

    pem, _ = load_or_create_certificate(work / "manager.pem", "callhome-manager")
    return certificate_fingerprint(pem)


def _tls_devices(work: Path, count: int) -> list[str]:
    """Create C{count} device certificates; their YAML device lines."""
    from callhome.simulator.tls_device import certificate_fingerprint, load_or_create_certificate

    lines = []
    for i in range(count):
        pem, _ = load_or_create_certificate(work / "tls-devices" / f"device-{i:04d}.pem", f"device-{i:04d}")
        lines.append(f'  - {{name: tls-{i:04d}, certificates: ["{certificate_fingerprint(pem)}"]}}')
    return lines


def _config(work: Path, run: Any, count: int, persistent: bool) -> tuple[Path, int, int]:
    """A config for C{count} SSH and C{count} TLS devices; its path and the two ports."""
    run.prepare(work, count)
    manager_fp = _manager_certificate(work)
    (work / "manager-fingerprint").write_text(manager_fp)
    ssh_port, tls_port = run.free_port(), run.free_port()
    config = work / "config.yaml"
    text = config.read_text().replace("{port}", str(ssh_port))
    text = text.replace("devices:\n", "devices:\n" + "\n".join(_tls_devices(work, count)) + "\n", 1)
    text = text.replace(
        "defaults: {", f"listen_tls: [\"tcp:{tls_port}:interface=127.0.0.1\"]\n"
        f"defaults: {{tls_certificate: {work}/manager.pem, tls_private_key: {work}/manager.key, ", 1)
    if persistent:
        text = text.replace("chain: bench}", "chain: bench, mode: persistent}", 1)
        text += "ssh: {keepalive_interval: 30, keepalive_max_missed: 3}\ntls: {probe_interval: 30, probe_max_missed: 3}\n"
    config.write_text(text)
    return config, ssh_port, tls_port


def _devices(work: Path, transport: str, port: int, count: int, concurrency: int, *extra: str) -> list[str]:
    """The simulator's command line for C{count} devices of C{transport}."""
    argv = [sys.executable, "-m", "callhome.simulator.cli", "--manager", f"127.0.0.1:{port}", "--devices", str(count),
            "--count", str(count), "--concurrency", str(concurrency), "--quiet", *extra]
    if transport == "tls":
        fp = (work / "manager-fingerprint").read_text()
        return argv + ["--tls", "--certificate", str(work / "tls-devices" / "base.pem"), "--manager-fingerprint", fp]
    return argv + ["--host-key", str(work / "devices" / "base"), "--authorized-key", str(work / "manager_ed25519.pub")]


def periodic(run: Any, sessions: int, concurrency: int, rounds: int) -> bool:
    """SSH and TLS periodic rounds, alternating, on one manager."""
    work = Path(tempfile.mkdtemp(prefix="callhome-tls-bench-"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    figures: dict[str, dict[str, list[float]]] = {t: {"rate": [], "cpu": [], "served": []} for t in ("ssh", "tls")}
    try:
        config, ssh_port, tls_port = _config(work, run, sessions, persistent=False)
        subject = run.Subject("callhome", [sys.executable, str(REPO / "bench" / "ours.py"), str(config)], ssh_port)
        try:
            for round_number in range(1, rounds + 1):
                for transport, port in (("ssh", ssh_port), ("tls", tls_port)):
                    before = subject.ask("held")
                    cpu = subject.ask("cpu")["cpu"]
                    started = time.perf_counter()
                    subprocess.run(_devices(work, transport, port, sessions, concurrency), env=env,
                                   capture_output=True, timeout=900)
                    wall = time.perf_counter() - started
                    spent = subject.ask("cpu")["cpu"] - cpu
                    served = subject.ask("held")["served"] - before["served"]
                    subject.ask("latency")  # clears the harness's list
                    f = figures[transport]
                    f["rate"].append(served / wall)
                    f["cpu"].append(spent * 1000 / max(served, 1))
                    f["served"].append(served)
                    print(f"round {round_number} {transport}: {served:.0f}/{sessions} served in {wall:.2f}s, "
                          f"{f['cpu'][-1]:.2f} ms CPU/session", file=sys.stderr, flush=True)
        finally:
            subject.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"SSH and TLS periodic sessions, one manager: {sessions} x {rounds} rounds each, alternating, "
          f"concurrency {concurrency}, <get>, medians")
    print(f"{'':22}{'sessions/s':>12}{'CPU ms/session':>16}{'served':>9}")
    medians = {t: {k: statistics.median(v) for k, v in f.items()} for t, f in figures.items()}
    for transport, m in medians.items():
        print(f"{transport:22}{m['rate']:12.1f}{m['cpu']:16.2f}{int(min(figures[transport]['served'])):9d}")
    ssh, tls = medians["ssh"], medians["tls"]
    print(f"{'ratio tls/ssh':22}{tls['rate'] / ssh['rate']:12.2f}{tls['cpu'] / ssh['cpu']:16.2f}")
    return all(min(f["served"]) >= sessions for f in figures.values())


def held(run: Any, count: int, window: float = 30.0) -> bool:
    """Hold C{count} persistent sessions of each transport in turn: KiB per session, keepalive CPU."""
    import resource as _resource

    soft, hard = _resource.getrlimit(_resource.RLIMIT_NOFILE)
    if soft < count + 1000 <= hard:
        _resource.setrlimit(_resource.RLIMIT_NOFILE, (count + 1000, hard))
    work = Path(tempfile.mkdtemp(prefix="callhome-tls-held-"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    complete = True
    try:
        config, ssh_port, tls_port = _config(work, run, count, persistent=True)
        for transport, port in (("ssh", ssh_port), ("tls", tls_port)):
            subject = run.Subject("callhome", [sys.executable, str(REPO / "bench" / "ours.py"), str(config)], ssh_port)
            devices = None
            try:
                before = subject.ask("held")["rss_kib"]
                devices = subprocess.Popen(
                    _devices(work, transport, port, count, count, "--timeout", "3600", "--retries", "1000"),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                started = time.perf_counter()
                state = subject.ask("held")
                while state["sessions"] < count and time.perf_counter() - started < 300:
                    time.sleep(1)
                    state = subject.ask("held")
                time.sleep(2)
                state = subject.ask("held")
                cpu = subject.ask("cpu")["cpu"]
                time.sleep(window)
                share = 100 * (subject.ask("cpu")["cpu"] - cpu) / window
                now = subject.ask("held")["sessions"]
            finally:
                if devices is not None:
                    devices.kill()
                    devices.wait()
                subject.stop()
            complete &= now == count
            print(f"held sessions ({transport}): {now} of {count}; {(state['rss_kib'] - before) / max(now, 1):.1f} KiB RSS "
                  f"per session; keeping them (every 30 s) costs {share:.2f} % of one core", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return complete
