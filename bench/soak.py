"""
The soak: a long run that should change nothing.

    python bench/run.py --soak MINUTES [--soak-held 1000] [--soak-rate 100]
                        [--soak-notify 60] [--soak-trace]

Holds C{held} persistent sessions (keepalives every 30 s), each subscribed
to its device's notifications (a heartbeat every C{notify} seconds per
device, saved and indexed like any notification), while C{rate} periodic
calls a second come and go, for C{minutes}.  Every minute it prints the
manager's resident memory, its open file descriptors, the sessions held and
the periodic calls and notifications served in that minute and the median
accept-to-saved time of those calls; at the end the
slope of memory and descriptors (least squares over the minutes after the
first, when the held sessions are all open).  A leak shows as a slope well
above the noise.

With C{trace} the manager runs under tracemalloc (slower: use it to explain
a slope, not to measure one) and the soak prints the 15 source lines whose
allocations grew most between minute 1 and the end.
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


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (per unit of x)."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def soak(minutes: float, held: int, rate: int, run: Any, notify: float = 60.0, trace: bool = False) -> bool:
    """
    Run the soak (C{run} is bench/run.py's module: Subject, free_port...).

    @return: True if every held session stayed up and periodic calls were
        served in every minute.
    """
    from callhome import fingerprints
    from callhome.simulator.ssh_server import load_or_create_host_key

    import resource as _resource

    soft, hard = _resource.getrlimit(_resource.RLIMIT_NOFILE)
    if soft < held + 2000 <= hard:
        _resource.setrlimit(_resource.RLIMIT_NOFILE, (held + 2000, hard))
    work = Path(tempfile.mkdtemp(prefix="callhome-soak-"))
    run.prepare(work, 0)
    lines = []
    for group, count, extra in (("held", held, "mode: persistent, chain: watch"), ("periodic", rate, "mode: periodic")):
        for i in range(count):
            key = load_or_create_host_key(work / group / f"device-{i:04d}_ed25519")
            lines.append(f'  - {{name: {group}-{i:04d}, host_keys: ["{fingerprints.of_key(key)}"], {extra}}}')
    port = run.free_port()
    config = work / "config.yaml"
    text = config.read_text().replace("{port}", str(port)).replace("devices:\n\n", "devices:\n" + "\n".join(lines) + "\n")
    text = text.replace("admission: {max_pending: 100,", f"admission: {{max_pending: {held + rate + 100},")
    text = text.replace("max_pending_per_source: 100}", f"max_pending_per_source: {held + rate + 100}}}")
    text = text.replace("chains: {bench: [{get: {}}]}", "chains: {bench: [{get: {}}], watch: [{subscribe: {}}]}")
    text += "ssh: {keepalive_interval: 30, keepalive_max_missed: 3}\n"
    config.write_text(text)
    if trace:
        os.environ["CALLHOME_TRACEMALLOC"] = "1"
    subject = run.Subject("callhome", [sys.executable, str(REPO / "bench" / "ours.py"), str(config)], port)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    loads = []

    def devices(group: str, count: int, *extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "callhome.simulator.cli", "--manager", f"127.0.0.1:{port}",
             "--host-key", str(work / group / "base"), "--devices", str(count), "--concurrency", str(count),
             "--authorized-key", str(work / "manager_ed25519.pub"), "--quiet", "--retries", "1000", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )

    samples: list[tuple[float, float, int, int, float, float]] = []
    growth: list[str] = []
    try:
        loads.append(devices("held", held, "--count", str(held), "--timeout", str(minutes * 60 + 600),
                             "--notify-every", str(notify)))
        loads.append(devices("periodic", rate, "--count", "0", "--interval", "1"))
        started = time.monotonic()
        print(f"soak: {held} held sessions with a notification every {notify:g} s each, "
              f"{rate} periodic calls/s, {minutes:g} minutes{' (tracemalloc)' if trace else ''}", flush=True)
        print(f"{'minute':>7}{'RSS MiB':>10}{'open fds':>10}{'held':>8}{'calls ok':>10}{'failed':>8}{'notifs':>8}{'call ms':>10}", flush=True)
        last = {"served": 0.0, "failed": 0.0, "notifications": 0.0}
        for minute in range(int(minutes) + 1):
            while time.monotonic() < started + minute * 60:
                time.sleep(1)
            state = subject.ask("held")
            # Asking for the latencies also clears them: left alone, that list is the
            # harness's own leak (32 bytes a call: +0.18 MiB/min at 100 calls/s).
            latencies = subject.ask("latency")["latencies"]
            if minute == 1 and trace:
                subject.ask("mark")
            fds = len(os.listdir(f"/proc/{subject.process.pid}/fd"))
            served, failed, notes = (state[k] - last[k] for k in ("served", "failed", "notifications"))
            last = {k: state[k] for k in last}
            samples.append((minute, state["rss_kib"] / 1024, fds, state["sessions"], served, notes))
            median_ms = statistics.median(latencies) * 1000 if latencies else 0.0
            print(f"{minute:7d}{state['rss_kib'] / 1024:10.1f}{fds:10d}{state['sessions']:8d}"
                  f"{served:10.0f}{failed:8.0f}{notes:8.0f}{median_ms:10.1f}", flush=True)
        if trace:
            growth = subject.ask("top")["growth"]
    finally:
        for process in loads:
            process.kill()
            process.wait()
        subject.stop()
        shutil.rmtree(work, ignore_errors=True)
    steady = [s for s in samples if s[0] >= 1]
    rss_slope = _slope([(s[0], s[1]) for s in steady])
    fd_slope = _slope([(s[0], float(s[2])) for s in steady])
    rss = [s[1] for s in steady]
    print(f"soak slope over minutes 1-{int(minutes)}: RSS {rss_slope:+.2f} MiB/min "
          f"(range {min(rss, default=0):.1f}-{max(rss, default=0):.1f} MiB), open fds {fd_slope:+.2f}/min")
    if steady:
        print(f"soak served per minute (median): {statistics.median(s[4] for s in steady):.0f} periodic calls, "
              f"{statistics.median(s[5] for s in steady):.0f} notifications", flush=True)
    for line in growth:
        print(f"  grew: {line}")
    return all(s[3] == held and s[4] > 0 for s in steady)
