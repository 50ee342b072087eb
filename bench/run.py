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

    def __init__(self, name: str, argv: list[str], port: int, repo: Path = REPO) -> None:
        self.name = name
        self.port = port
        env = dict(os.environ, PYTHONPATH=str(repo))
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


def load(port: int, work: Path, sessions: int, concurrency: int, *extra: str) -> tuple[float, int, int]:
    """
    Run the simulated devices against a manager; return wall seconds,
    sessions served and retries (calls refused by admission and retried).
    """
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # With --devices 1 the simulator uses --host-key itself, not device-0000.
    host_key = work / "devices" / ("device-0000_ed25519" if sessions == 1 else "base")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "callhome.simulator.cli", "--manager", f"127.0.0.1:{port}",
         "--host-key", str(host_key), "--devices", str(sessions), "--count", str(sessions),
         "--concurrency", str(concurrency), "--authorized-key", str(work / "manager_ed25519.pub"), "--quiet", *extra],
        capture_output=True, text=True, env=env, timeout=600,
    )
    wall = time.perf_counter() - started
    served = retried = 0
    for line in result.stdout.splitlines():
        if "calls served" in line:
            words = line.split(":")[1].replace(",", " ").split()
            served, retried = int(words[0]), int(words[5])
    return wall, served, retried


def variant(config: Path, port: int, new_port: int, name: str, store: str = "") -> Path:
    """A copy of the bench config for another subject: its own port, results, state and database; more store keys."""
    work = config.parent
    text = config.read_text().replace(f"tcp:{port}:", f"tcp:{new_port}:")
    for part in ("results", "state", "callhome.sqlite"):
        text = text.replace(f"{work}/{part}", f"{work}/{name}-{part}")
    text = text.replace("store: {", "store: {" + store)
    path = work / f"config-{name}.yaml"
    path.write_text(text)
    return path


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def prepare(work: Path, sessions: int, admission: str | None = None) -> None:
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
        f"store: {{database: {work}/callhome.sqlite}}\napi: {{listen: \"tcp:0:interface=127.0.0.1\"}}\n"
        f"netconf: {{max_message_size: {200 * 1024 * 1024}}}\n"
        f"defaults: {{username: admin, private_key: {work}/manager_ed25519, chain: bench}}\n"
        # Every simulated device calls from 127.0.0.1 at once: lift the
        # per-source limit so the run measures sessions, not admission.
        + (admission or f"admission: {{max_pending: {2 * sessions + 100}, max_pending_per_source: {2 * sessions + 100}}}") + "\n"
        "devices:\n" + "\n".join(lines) + "\n"
        "chains: {bench: [{get: {}}]}\n"
    )


def storm(devices: int) -> bool:
    """
    A reconnect storm: every device connects at once (as after a manager
    restart), through admission control with its default global limit; the
    devices retry a refused call after a random wait of up to 1 s, as real
    devices do.  Prints how many were served, refused-and-retried, and the
    time until all were served.
    """
    work = Path(tempfile.mkdtemp(prefix="callhome-storm-"))
    # All simulated devices share 127.0.0.1, so the per-source limit is
    # raised to the global one: the global limit is what is exercised.
    prepare(work, devices, admission="admission: {max_pending: 200, max_pending_per_source: 200}")
    port = free_port()
    config = work / "config.yaml"
    config.write_text(config.read_text().replace("{port}", str(port)))
    subject = Subject("callhome", [sys.executable, str(REPO / "bench" / "ours.py"), str(config)], port)
    try:
        wall, served, retried = load(port, work, devices, devices, "--retries", "1000", "--retry-delay", "1.0")
    finally:
        subject.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(f"storm: {devices} devices at once: {served} served ({100 * served / devices:.1f} %), "
          f"{retried} calls refused by admission and retried, all served after {wall:.1f} s")
    return served == devices


def large_reply(megabytes: int) -> bool:
    """One <get> of about C{megabytes} MB in chunked framing: MB/s and the manager's peak RSS."""
    work = Path(tempfile.mkdtemp(prefix="callhome-large-"))
    try:
        prepare(work, 1)
        entry = "<interface><name>eth{0}</name><description>{1}</description><mtu>1500</mtu></interface>"
        filler = "x" * 120
        count = megabytes * 1024 * 1024 // len(entry.format(0, filler))
        with open(work / "big.xml", "w") as f:
            f.write('<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><interfaces xmlns="urn:ietf:params:xml:ns:yang:ietf-interfaces">')
            for i in range(count):
                f.write(entry.format(i, filler))
            f.write("</interfaces></data>")
        port = free_port()
        config = work / "config.yaml"
        config.write_text(config.read_text().replace("{port}", str(port)))
        subject = Subject("callhome", [sys.executable, str(REPO / "bench" / "ours.py"), str(config)], port)
        try:
            start = subject.ask("cpu")
            before = start["maxrss_kib"]
            wall, served, _ = load(port, work, 1, 1, "--datastore", str(work / "big.xml"), "--timeout", "300")
            end = subject.ask("cpu")
            peak = end["maxrss_kib"]
            cpu = end["cpu"] - start["cpu"]
            latency = subject.ask("latency")["latencies"]
        finally:
            subject.stop()
        reply = next((work / "results").rglob("*-get.xml"), None)
        size = reply.stat().st_size if reply else 0
        seconds = latency[0] if latency else wall
        print(f"large reply: {size / 1e6:.1f} MB <get> in chunked framing, {served} served: "
              f"{size / 1e6 / seconds:.1f} MB/s end to end (accept to saved, {seconds:.2f} s, the device's "
              f"own work included), {size / 1e6 / max(cpu, 1e-9):.1f} MB per manager CPU second; manager RSS "
              f"{before / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB: grew {(peak - before) * 1024 / max(size, 1):.1f}x the reply")
        return served == 1
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def held(count: int, baseline: bool, window: float = 30.0, before: Path | None = None) -> bool:
    """
    Persistent sessions: hold C{count} open with keepalives every 30 s, in
    callhome and (if C{baseline}) in the asyncssh manager; print resident
    memory per held session and the CPU spent per second keeping them.
    """
    import resource as _resource

    soft, hard = _resource.getrlimit(_resource.RLIMIT_NOFILE)
    if soft < count + 1000 <= hard:
        _resource.setrlimit(_resource.RLIMIT_NOFILE, (count + 1000, hard))
    work = Path(tempfile.mkdtemp(prefix="callhome-held-"))
    prepare(work, count)
    port = free_port()
    config = work / "config.yaml"
    text = config.read_text().replace("{port}", str(port))
    text = text.replace("chain: bench}", "chain: bench, mode: persistent}") + "ssh: {keepalive_interval: 30, keepalive_max_missed: 3}\n"
    config.write_text(text)
    subjects = [("callhome", [sys.executable, str(REPO / "bench" / "ours.py"), str(config)], port, REPO)]
    if before is not None:
        # The older checkout holds the same sessions after ours (each subject alone on the machine).
        subjects.append(("callhome@before", [sys.executable, str(before.resolve() / "bench" / "ours.py"), str(config)], port,
                         before.resolve()))
    if baseline:
        base_port = free_port()
        subjects.append(("asyncssh", [
            sys.executable, str(REPO / "bench" / "asyncssh_baseline.py"), str(base_port),
            str(work / "manager_ed25519"), str(work / "devices"), str(work / "baseline-results"), "persistent",
        ], base_port, REPO))
    figures: dict[str, tuple[float, float]] = {}
    complete = True
    try:
        for name, argv, subject_port, repo in subjects:
            per_session, cpu_share, held_now, opened = _hold(Subject(name, argv, subject_port, repo=repo), work, count, window)
            figures[name] = (per_session, cpu_share)
            complete &= held_now == count
            print(f"held sessions ({name}): {held_now} of {count} open after {opened:.0f} s; "
                  f"{per_session:.1f} KiB RSS per session; keeping them (keepalive every 30 s) costs "
                  f"{cpu_share:.2f} % of one core", flush=True)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if "asyncssh" in figures:
        ours, base = figures["callhome"], figures["asyncssh"]
        print(f"held sessions, ratio ours/asyncssh: memory {ours[0] / base[0]:.2f}, keepalive CPU {ours[1] / max(base[1], 1e-9):.2f}")
    if "callhome@before" in figures:
        ours, base = figures["callhome"], figures["callhome@before"]
        print(f"held sessions, ratio ours/before: memory {ours[0] / base[0]:.2f}, keepalive CPU {ours[1] / max(base[1], 1e-9):.2f}")
    return complete


def open_held(subject: Subject, work: Path, count: int) -> tuple[subprocess.Popen[bytes], float]:
    """Start C{count} simulated devices that stay connected; wait until the manager holds them; (devices, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    devices = subprocess.Popen(
        [sys.executable, "-m", "callhome.simulator.cli", "--manager", f"127.0.0.1:{subject.port}",
         "--host-key", str(work / "devices" / "base"), "--devices", str(count), "--count", str(count),
         "--concurrency", str(count), "--authorized-key", str(work / "manager_ed25519.pub"), "--quiet",
         "--timeout", "3600", "--retries", "1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    started = time.perf_counter()
    state = subject.ask("held")
    while state["sessions"] < count and time.perf_counter() - started < 600:
        time.sleep(1)
        state = subject.ask("held")
    return devices, time.perf_counter() - started


def _hold(subject: Subject, work: Path, count: int, window: float) -> tuple[float, float, int, float]:
    """Hold C{count} sessions on one manager: KiB per session, % of a core, sessions held, seconds to open."""
    devices = None
    try:
        before = subject.ask("held")["rss_kib"]
        devices, opened = open_held(subject, work, count)
        time.sleep(2)
        state = subject.ask("held")
        cpu_before = subject.ask("cpu")["cpu"]
        time.sleep(window)
        cpu = subject.ask("cpu")["cpu"] - cpu_before
        after = subject.ask("held")
    finally:
        if devices is not None:
            devices.kill()
            devices.wait()
        subject.stop()
    held_now = after["sessions"]
    return (state["rss_kib"] - before) / max(held_now, 1), 100 * cpu / window, held_now, opened


def scaling(sessions: int, concurrency: int, rounds: int) -> None:
    """
    workers: 1 against workers: 2, the same periodic load: sessions/s, the
    manager's CPU per session (every process of it) and the load
    generator's share of the machine's CPU (it runs on the same cores).
    """
    cores = os.cpu_count() or 1
    rows = []
    for workers in (1, 2):
        work = Path(tempfile.mkdtemp(prefix="callhome-scaling-"))
        try:
            prepare(work, sessions)
            port = free_port()
            config = work / "config.yaml"
            config.write_text(config.read_text().replace("{port}", str(port)) + f"workers: {workers}\n")
            subject = Subject("callhome", [sys.executable, str(REPO / "bench" / "ours.py"), str(config)], port)
            time.sleep(1.0)  # the worker processes start
            rates, cpus, load_shares, served_min = [], [], [], sessions
            try:
                for _ in range(rounds):
                    before = subject.ask("cpu")["cpu"]
                    children = _children_cpu()
                    wall, served, _ = load(port, work, sessions, concurrency)
                    load_cpu = _children_cpu() - children
                    after = subject.ask("cpu")["cpu"]
                    rates.append(served / wall)
                    cpus.append((after - before) * 1000 / max(served, 1))
                    load_shares.append(100 * load_cpu / (wall * cores))
                    served_min = min(served_min, served)
            finally:
                subject.stop()
        finally:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        rows.append((workers, statistics.median(rates), statistics.median(cpus), statistics.median(load_shares), served_min))
    print(f"workers scaling: {sessions} sessions x {rounds} rounds, concurrency {concurrency}, {cores} cores, medians")
    print(f"{'':22}{'sessions/s':>12}{'CPU ms/session':>16}{'load gen % of machine':>24}{'served':>9}")
    for workers, rate, cpu, share, served in rows:
        print(f"{f'workers: {workers}':22}{rate:12.1f}{cpu:16.2f}{share:24.1f}{served:9d}")
    print(f"{'speed-up 2/1':22}{rows[1][1] / rows[0][1]:12.2f}")


def _children_cpu() -> float:
    """CPU seconds of this script's ended children (the load generator runs)."""
    import resource as _resource

    r = _resource.getrusage(_resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def durability(sessions: int, concurrency: int, rounds: int) -> None:
    """
    store.durable off against on, the same periodic load, rounds alternating:
    sessions/s and the manager's CPU per session (an fsync per result, its
    folder and each commit cost wall time more than CPU).
    """
    rows = []
    for durable in (False, True):
        work = Path(tempfile.mkdtemp(prefix="callhome-durable-"))
        prepare(work, sessions)
        port = free_port()
        config = work / "config.yaml"
        text = config.read_text().replace("{port}", str(port))
        text = text.replace("callhome.sqlite}", f"callhome.sqlite, durable: {str(durable).lower()}}}")
        config.write_text(text)
        rows.append((durable, work, Subject("callhome", [sys.executable, str(REPO / "bench" / "ours.py"), str(config)], port)))
    figures: dict[bool, dict[str, list[float]]] = {d: {"rate": [], "cpu": []} for d, _, _ in rows}
    try:
        for _ in range(rounds):
            for durable, work, subject in rows:
                before = subject.ask("cpu")["cpu"]
                wall, served, _ = load(subject.port, work, sessions, concurrency)
                after = subject.ask("cpu")["cpu"]
                figures[durable]["rate"].append(sessions / wall)
                figures[durable]["cpu"].append((after - before) * 1000 / max(served, 1))
    finally:
        import shutil

        for _, work, subject in rows:
            subject.stop()
            shutil.rmtree(work, ignore_errors=True)
    print(f"store.durable: {sessions} sessions x {rounds} rounds, concurrency {concurrency}, medians")
    print(f"{'':22}{'sessions/s':>12}{'CPU ms/session':>16}")
    for durable in (False, True):
        f = figures[durable]
        print(f"{f'durable: {str(durable).lower()}':22}{statistics.median(f['rate']):12.1f}{statistics.median(f['cpu']):16.2f}")
    off, on = figures[False], figures[True]
    print(f"{'ratio on/off':22}{statistics.median(on['rate']) / statistics.median(off['rate']):12.2f}"
          f"{statistics.median(on['cpu']) / statistics.median(off['cpu']):16.2f}")


def _tls(args: argparse.Namespace) -> bool:
    """SSH against TLS on one manager (bench/tls.py)."""
    sys.path.insert(0, str(REPO / "bench"))
    import tls

    if args.quick:
        args.sessions, args.concurrency, args.rounds = 20, 10, 1
    ok = tls.periodic(sys.modules[__name__], args.sessions, args.concurrency, args.rounds)
    if args.tls_held:
        ok &= tls.held(sys.modules[__name__], args.tls_held, window=2.0 if args.quick else 30.0)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 sessions, 1 round (CI smoke)")
    parser.add_argument("--no-baseline", action="store_true", help="skip asyncssh")
    parser.add_argument("--payloads-db", action="store_true",
                        help="also run callhome with store.payloads: database (results in the SQLite batch, not files)")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="also run callhome from this checkout (git worktree add /tmp/before COMMIT) in the same rounds")
    parser.add_argument("--storm", type=int, default=2000, help="devices in the reconnect storm (0: skip)")
    parser.add_argument("--large-mb", type=int, default=50, help="size of the large <get> reply in MB (0: skip)")
    parser.add_argument("--held", type=int, default=10000, help="persistent sessions to hold open (0: skip)")
    parser.add_argument("--no-workers", dest="workers", action="store_false", help="skip the workers: 1 vs 2 run")
    parser.add_argument("--no-durable", dest="durable", action="store_false", help="skip the store.durable off vs on run")
    parser.add_argument("--soak", type=float, default=0, help="only the soak, for this many minutes (see bench/soak.py)")
    parser.add_argument("--soak-held", type=int, default=1000, help="persistent sessions held during the soak")
    parser.add_argument("--soak-rate", type=int, default=100, help="periodic calls a second during the soak")
    parser.add_argument("--soak-notify", type=float, default=60.0, help="seconds between one held device's notifications")
    parser.add_argument("--soak-trace", action="store_true", help="run the soak's manager under tracemalloc and print where memory grew")
    parser.add_argument("--no-tls", dest="tls", action="store_false", help="skip the SSH vs TLS runs (bench/tls.py)")
    parser.add_argument("--tls-only", action="store_true", help="only the SSH vs TLS runs")
    parser.add_argument("--tls-held", type=int, default=1000, help="persistent sessions of each transport to hold in the TLS run (0: skip)")
    parser.add_argument("--cluster", type=int, default=0, metavar="N",
                        help="only the cluster run: 1 instance on SQLite, 1 on PostgreSQL, N on PostgreSQL behind HAProxy")
    parser.add_argument("--supervision", type=int, default=0, metavar="N",
                        help="only the O-RAN supervision run: N held sessions with and without oran-supervision")
    parser.add_argument("--supervision-window", type=float, default=120.0, help="seconds measured in the supervision run")
    args = parser.parse_args(argv)
    if args.supervision:
        sys.path.insert(0, str(REPO / "bench"))
        import supervision

        return 0 if supervision.supervision(sys.modules[__name__], args.supervision, args.supervision_window) else 1
    if args.cluster:
        sys.path.insert(0, str(REPO / "bench"))
        import cluster

        if args.quick:
            args.sessions, args.concurrency, args.rounds = 20, 10, 1
        return 0 if cluster.cluster(sys.modules[__name__], args.cluster, args.sessions, args.concurrency, args.rounds) else 1
    if args.quick:
        args.tls_held = 20
    if args.tls_only:
        return 0 if _tls(args) else 1
    if args.soak:
        sys.path.insert(0, str(REPO / "bench"))
        import soak

        return 0 if soak.soak(args.soak, args.soak_held, args.soak_rate, sys.modules[__name__],
                                  notify=args.soak_notify, trace=args.soak_trace) else 1
    if args.quick:
        args.sessions, args.concurrency, args.rounds, args.storm, args.large_mb, args.held = 20, 10, 1, 50, 1, 20
    work = Path(tempfile.mkdtemp(prefix="callhome-bench-"))
    prepare(work, args.sessions)
    subjects: list[Subject] = []
    try:
        port = free_port()
        config = work / "config.yaml"
        config.write_text(config.read_text().replace("{port}", str(port)))
        subjects.append(Subject("callhome", [sys.executable, str(REPO / "bench" / "ours.py"), str(config)], port))
        if args.before:
            # The same load, config and round order; only the manager's code differs.
            before = args.before.resolve()
            before_port = free_port()
            subjects.append(Subject("callhome@before", [sys.executable, str(before / "bench" / "ours.py"),
                                                        str(variant(config, port, before_port, "before"))], before_port, repo=before))
        if args.payloads_db:
            db_port = free_port()
            db_config = variant(config, port, db_port, "db", store="payloads: database, ")
            subjects.append(Subject("callhome+db-payloads", [sys.executable, str(REPO / "bench" / "ours.py"), str(db_config)], db_port))
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
                wall, served, _ = load(subject.port, work, args.sessions, args.concurrency)
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
        if "callhome+db-payloads" in medians:
            ours, base = medians["callhome+db-payloads"], medians["asyncssh"] if "asyncssh" in medians else None
            if base is not None:
                print(f"{'ratio db-payloads/asyncssh':22}{ours['rate'] / base['rate']:12.2f}{ours['cpu'] / base['cpu']:16.2f}{'-':>9}{'-':>9}")
        if "callhome@before" in medians:
            ours, base = medians["callhome"], medians["callhome@before"]
            print(f"{'ratio ours/before':22}{ours['rate'] / base['rate']:12.2f}{ours['cpu'] / base['cpu']:16.2f}{'-':>9}{'-':>9}")
        failed = any(min(f["served"]) < args.sessions for f in figures.values())
        if args.storm:
            failed |= not storm(args.storm)
        if args.large_mb:
            failed |= not large_reply(args.large_mb)
        if args.workers:
            scaling(args.sessions, args.concurrency, args.rounds)
        if args.durable:
            durability(args.sessions, args.concurrency, args.rounds)
        if args.held:
            failed |= not held(args.held, baseline="asyncssh" in medians, window=2.0 if args.quick else 30.0, before=args.before)
        if args.tls:
            failed |= not _tls(args)
        return 1 if failed else 0
    finally:
        for subject in subjects:
            subject.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
