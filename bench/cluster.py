"""
One instance on SQLite, one on PostgreSQL, and N on PostgreSQL behind
HAProxy, the same periodic load, in the same run.

    python bench/run.py --cluster 3 [--sessions N] [--rounds R] [--concurrency C]

Rounds alternate the three set-ups, so the machine's noise falls on all of
them alike.  For each it prints the medians of sessions/s, the instances'
CPU ms per session (every instance added up), PostgreSQL's CPU ms per
session (its server processes), HAProxy's, and the load generator's share
of the machine: everything runs on the same cores, so on a 2-core machine
N instances cannot scale; the per-instance CPU says what each call costs.

Needs PostgreSQL and HAProxy from Debian's packages (as root: a private
server is started in a temporary directory, as the tests do).
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
sys.path.insert(0, str(REPO / "bench"))
from ours import process_cpu  # noqa: E402  (bench/ is no package)



def _postgres_cpu(data_dir: str) -> float:
    """
    CPU seconds of the private server: its postmaster (with the backends it
    has reaped) and the processes it runs now (backends, writer, walwriter).
    """
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            postmaster = int(f.readline())
    except (OSError, ValueError):
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent = int(entry), int(fields[1])
        if pid == postmaster:
            total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
        elif parent == postmaster:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _balancer(work: Path, ports: list[int], run: Any) -> tuple[subprocess.Popen[bytes], int]:
    from tests import haproxy

    port = run.free_port()
    process = haproxy.start(work / "haproxy.cfg", port, [(f"i{n}", p) for n, p in enumerate(ports)], maxconn=5000)
    time.sleep(1.5)  # first health checks
    return process, port


def _config(work: Path, name: str, port: int, url: str | None, proxied: bool) -> Path:
    text = (work / "config.yaml").read_text().replace("{port}", str(port))
    if proxied:
        text = text.replace('listen: ["tcp:', 'listen: ["haproxy:tcp:', 1)
    text = text.replace(f"results_dir: {work}/results", f"results_dir: {work}/results-{name}")
    if url is not None:
        text = text.replace(f"store: {{database: {work}/callhome.sqlite}}",
                            f'store: {{database: "{url}", password_env: CALLHOME_BENCH_PGPASSWORD}}')
        text += f"cluster: {{instance: {name}}}\n"
    else:
        text = text.replace("callhome.sqlite}", f"callhome-{name}.sqlite}}")
    path = work / f"{name}.yaml"
    path.write_text(text)
    return path


def cluster(run: Any, instances: int, sessions: int, concurrency: int, rounds: int) -> bool:
    """Run the three set-ups, alternating; print the table."""
    sys.path.insert(0, str(REPO))
    from tests import haproxy, pgserver

    reason = pgserver.available() or haproxy.available()
    if reason is not None:
        print(f"cluster benchmark skipped: {reason}")
        return True
    server = pgserver.PostgresServer()
    os.environ["CALLHOME_BENCH_PGPASSWORD"] = pgserver.PASSWORD
    work = Path(tempfile.mkdtemp(prefix="callhome-cluster-bench-"))
    cores = os.cpu_count() or 1
    setups: list[tuple[str, list[Any], int, subprocess.Popen[bytes] | None]] = []
    try:
        run.prepare(work, sessions)
        ours = [sys.executable, str(REPO / "bench" / "ours.py")]
        port = run.free_port()
        setups.append(("sqlite x1", [run.Subject("sqlite", ours + [str(_config(work, "sqlite", port, None, False))], port)], port, None))
        url = server.create_database("bench_one")
        port = run.free_port()
        setups.append(("postgresql x1", [run.Subject("pg", ours + [str(_config(work, "pg", port, url, False))], port)], port, None))
        url = server.create_database("bench_cluster")
        ports = [run.free_port() for _ in range(instances)]
        members = [run.Subject(f"c{i}", ours + [str(_config(work, f"c{i}", p, url, True))], p) for i, p in enumerate(ports)]
        haproxy, front = _balancer(work, ports, run)
        setups.append((f"postgresql x{instances} + haproxy", members, front, haproxy))
        figures: dict[str, dict[str, list[float]]] = {
            name: {"rate": [], "cpu": [], "db": [], "lb": [], "load": [], "served": [], "spread": []} for name, *_ in setups}
        for round_number in range(1, rounds + 1):
            for name, subjects, port, balancer in setups:
                cpu = [s.ask("cpu")["cpu"] for s in subjects]
                db = _postgres_cpu(server.data)
                lb = process_cpu(balancer.pid) if balancer is not None else 0.0
                children = run._children_cpu()
                wall, served, _ = run.load(port, work, sessions, concurrency)
                load_cpu = run._children_cpu() - children
                spent = [s.ask("cpu")["cpu"] - c for s, c in zip(subjects, cpu)]
                f = figures[name]
                f["rate"].append(served / wall)
                f["cpu"].append(sum(spent) * 1000 / max(served, 1))
                f["db"].append((_postgres_cpu(server.data) - db) * 1000 / max(served, 1))
                f["lb"].append(((process_cpu(balancer.pid) - lb) if balancer is not None else 0.0) * 1000 / max(served, 1))
                f["load"].append(100 * load_cpu / (wall * cores))
                f["served"].append(served)
                f["spread"].append(min(spent) / max(max(spent), 1e-9))
                print(f"round {round_number} {name}: {served}/{sessions} served in {wall:.2f}s, "
                      f"{f['cpu'][-1]:.2f} ms CPU/session in the instances, {f['db'][-1]:.2f} in PostgreSQL",
                      file=sys.stderr, flush=True)
    finally:
        for _, subjects, _, balancer in setups:
            for subject in subjects:
                subject.stop()
            if balancer is not None:
                balancer.terminate()
                balancer.wait()
        server.destroy()
        shutil.rmtree(work, ignore_errors=True)
    print(f"cluster: {sessions} sessions x {rounds} rounds, concurrency {concurrency}, {cores} cores, "
          "everything on the same machine, medians")
    print(f"{'':30}{'sessions/s':>11}{'CPU ms/session':>15}{'db ms/session':>14}{'lb ms/session':>14}"
          f"{'load gen %':>11}{'served':>8}")
    medians = {name: {k: statistics.median(v) for k, v in f.items()} for name, f in figures.items()}
    for name, m in medians.items():
        print(f"{name:30}{m['rate']:11.1f}{m['cpu']:15.2f}{m['db']:14.2f}{m['lb']:14.2f}{m['load']:11.1f}"
              f"{int(min(figures[name]['served'])):8d}")
    names = list(medians)
    base = medians[names[0]]
    for name in names[1:]:
        m = medians[name]
        print(f"{'ratio ' + name.split(' +')[0] + ' / sqlite':30}"
              f"{m['rate'] / base['rate']:11.2f}{(m['cpu'] + m['db'] + m['lb']) / base['cpu']:15.2f}  (CPU: instances + db + lb)")
    spread = statistics.median(figures[names[-1]]["spread"])
    print(f"the busiest instance did {1 / max(spread, 1e-9):.2f}x the CPU of the least busy one (round-robin balancing)")
    return all(min(f["served"]) >= sessions for f in figures.values())
