"""
callhome's benchmark: periodic call-home sessions, ours against asyncssh.

    python bench/run.py                 # 1000 sessions x 3 rounds, concurrency 50
    python bench/run.py --quick         # a few seconds: the CI smoke run

Both managers run in their own processes on loopback, each the only user of
its reactor/event loop; the load is ``callhome-device`` (N simulated devices,
each with its own host key) in another process, so the load generator's CPU
is not counted.  Each session: TCP connect, SSH handshake with host-key
check and public-key auth, NETCONF hellos (base:1.1), one ``<get>`` whose
reply is saved to disk, ``<close-session>``.  A round runs the same load
against each manager in turn; figures are medians over the rounds:

* sessions/s: sessions divided by the round's wall time (bounded by the
  load generator too: compare, do not quote alone);
* CPU ms/session: the manager's own user+system CPU (``getrusage`` inside
  its process, before and after the round) divided by the sessions;
* p50/p99: milliseconds from TCP accept to the reply saved (callhome).
  asyncssh's ``listen_reverse`` calls its acceptor only once the SSH
  connection is up, so its latency starts after the handshake: shown, but
  not comparable, and no ratio is printed for it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from callhome import fingerprints  # noqa: E402
from callhome.simulator.ssh_server import load_or_create_host_key  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Subject:
    """A manager process answering control lines."""

    def __init__(self, name: str, argv: list[str], port: int) -> None:
        self.name = name
        self.port = port
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        ready = self.read()
        if not ready.get("ready"):
            raise RuntimeError(f"{name} did not start: {ready}")

    def read(self) -> dict:
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited (status {self.process.poll()})")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, command: str) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def stop(self) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()


def load(port: int, work: Path, sessions: int, concurrency: int) -> tuple[float, int]:
    """Run the simulated devices against a manager; return wall seconds and sessions served."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "callhome.simulator.cli", "--manager", f"127.0.0.1:{port}",
         "--host-key", str(work / "devices" / "base"), "--devices", str(sessions), "--count", str(sessions),
         "--concurrency", str(concurrency), "--authorized-key", str(work / "manager_ed25519.pub"), "--quiet"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    wall = time.perf_counter() - started
    served = 0
    for line in result.stdout.splitlines():
        if "calls served" in line:
            served = int(line.split(":")[1].split()[0])
    return wall, served


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def prepare(work: Path, sessions: int) -> None:
    """Keys, device host keys and the callhome config."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.conch.ssh import keys

    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    (work / "manager_ed25519").write_bytes(key.toString("openssh"))
    (work / "manager_ed25519").chmod(0o600)
    (work / "manager_ed25519.pub").write_bytes(key.public().toString("openssh") + b"\n")
    lines = []
    for i in range(sessions):
        host_key = load_or_create_host_key(work / "devices" / f"device-{i:04d}_ed25519")
        lines.append(f'  - {{name: sim-{i:04d}, host_keys: ["{fingerprints.of_key(host_key)}"]}}')
    (work / "config.yaml").write_text(
        f"listen: [\"tcp:{{port}}:interface=127.0.0.1\"]\n"
        f"results_dir: {work}/results\nstate_dir: {work}/state\n"
        f"defaults: {{username: admin, private_key: {work}/manager_ed25519, chain: bench}}\n"
        # Every simulated device calls from 127.0.0.1 at once: lift the
        # per-source limit so the run measures sessions, not admission.
        f"admission: {{max_pending: {2 * sessions + 100}, max_pending_per_source: {2 * sessions + 100}}}\n"
        "devices:\n" + "\n".join(lines) + "\n"
        "chains: {bench: [{get: {}}]}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 sessions, 1 round (CI smoke)")
    parser.add_argument("--no-baseline", action="store_true", help="skip asyncssh")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.concurrency, args.rounds = 20, 10, 1
    work = Path(tempfile.mkdtemp(prefix="callhome-bench-"))
    prepare(work, args.sessions)
    subjects: list[Subject] = []
    try:
        port = free_port()
        config = work / "config.yaml"
        config.write_text(config.read_text().replace("{port}", str(port)))
        subjects.append(Subject("callhome", [sys.executable, str(REPO / "bench" / "ours.py"), str(config)], port))
        if not args.no_baseline:
            try:
                import asyncssh  # noqa: F401
            except ImportError:
                print("asyncssh is not installed (pip install '.[bench]'): no baseline", file=sys.stderr)
            else:
                base_port = free_port()
                subjects.append(Subject("asyncssh", [
                    sys.executable, str(REPO / "bench" / "asyncssh_baseline.py"), str(base_port),
                    str(work / "manager_ed25519"), str(work / "devices"), str(work / "baseline-results"),
                ], base_port))
        figures: dict[str, dict[str, list[float]]] = {s.name: {"rate": [], "cpu": [], "p50": [], "p99": [], "served": []} for s in subjects}
        for round_number in range(1, args.rounds + 1):
            for subject in subjects:
                before = subject.ask("cpu")["cpu"]
                wall, served = load(subject.port, work, args.sessions, args.concurrency)
                after = subject.ask("cpu")["cpu"]
                latencies = subject.ask("latency")["latencies"]
                f = figures[subject.name]
                f["rate"].append(args.sessions / wall)
                f["cpu"].append((after - before) * 1000 / max(served, 1))
                f["p50"].append(percentile(latencies, 0.5) * 1000)
                f["p99"].append(percentile(latencies, 0.99) * 1000)
                f["served"].append(served)
                print(f"round {round_number} {subject.name}: {served}/{args.sessions} served in {wall:.2f}s, "
                      f"{f['cpu'][-1]:.2f} ms CPU/session", file=sys.stderr, flush=True)
        reply = next((work / "results").rglob("*-get.xml"), None)
        size = reply.stat().st_size if reply else 0
        print()
        print(f"callhome benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"periodic sessions: {args.sessions} x {args.rounds} rounds, concurrency {args.concurrency}, "
              f"<get> reply {size / 1024:.1f} KiB, medians")
        print(f"{'':22}{'sessions/s':>12}{'CPU ms/session':>16}{'p50 ms':>9}{'p99 ms':>9}{'served':>9}")
        medians = {}
        for name, f in figures.items():
            m = {k: statistics.median(v) for k, v in f.items()}
            medians[name] = m
            print(f"{name:22}{m['rate']:12.1f}{m['cpu']:16.2f}{m['p50']:9.1f}{m['p99']:9.1f}{int(min(f['served'])):9d}")
        if "asyncssh" in medians:
            ours, base = medians["callhome"], medians["asyncssh"]
            print(f"{'ratio ours/asyncssh':22}{ours['rate'] / base['rate']:12.2f}{ours['cpu'] / base['cpu']:16.2f}"
                  f"{'-':>9}{'-':>9}")
            print("(asyncssh latency starts after its SSH handshake, at listen_reverse's acceptor: not comparable)")
        failed = any(min(f["served"]) < args.sessions for f in figures.values())
        return 1 if failed else 0
    finally:
        for subject in subjects:
            subject.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
