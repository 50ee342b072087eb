"""
O-RAN supervision of held sessions: N persistent sessions kept with
keepalives only, then N kept with ``oran-supervision`` (a watchdog reset
every 54 s: a 60 s notification interval minus a 6 s margin; the simulated
O-RUs also raise supervision-notification every 60 s, which are saved),
in the same run.

    python bench/run.py --supervision 10000 [--supervision-window 120]

Prints, for each, the manager's CPU over the window as a share of one core
(CPU seconds per second of wall time), the resets and notifications
handled, and the CPU per reset (the supervision run's extra CPU over the
keepalive-only run, per reset RPC).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _config(run: Any, work: Path, count: int, supervised: bool) -> tuple[Path, int]:
    run.prepare(work, count)
    port = run.free_port()
    config = work / "config.yaml"
    text = config.read_text().replace("{port}", str(port))
    text = text.replace("chain: bench}", "chain: bench, mode: persistent}")
    if supervised:
        text = text.replace("chains: {bench: [{get: {}}]}",
                            "chains: {bench: [{oran-supervision: {supervision_notification_interval: 60, guard_timer_overhead: 10}}]}")
    text += "ssh: {keepalive_interval: 30, keepalive_max_missed: 3}\nnetconf: {rpc_timeout: 30}\n"
    config.write_text(text)
    return config, port


def _hold(run: Any, work: Path, config: Path, port: int, count: int, window: float) -> dict[str, float]:
    subject = run.Subject("callhome", [sys.executable, str(REPO / "bench" / "ours.py"), str(config)], port)
    devices = None
    try:
        devices, opened = run.open_held(subject, work, count)
        # Past the first interval: the resets and notifications are in their steady beat.
        time.sleep(65)
        before, cpu = subject.ask("held"), subject.ask("cpu")["cpu"]
        time.sleep(window)
        spent, after = subject.ask("cpu")["cpu"] - cpu, subject.ask("held")
    finally:
        if devices is not None:
            devices.kill()
            devices.wait()
        subject.stop()
    return {
        "held": after["sessions"], "opened": opened, "share": 100 * spent / window, "cpu": spent,
        "resets": after["supervision_resets"] - before["supervision_resets"],
        "notifications": after["notifications"] - before["notifications"],
    }


def supervision(run: Any, count: int, window: float) -> bool:
    """Both runs, one after the other; print the comparison."""
    import resource as _resource

    soft, hard = _resource.getrlimit(_resource.RLIMIT_NOFILE)
    if soft < count + 1000 <= hard:
        _resource.setrlimit(_resource.RLIMIT_NOFILE, (count + 1000, hard))
    figures = {}
    for supervised in (False, True):
        work = Path(tempfile.mkdtemp(prefix="callhome-supervision-"))
        try:
            config, port = _config(run, work, count, supervised)
            figures[supervised] = _hold(run, work, config, port, count, window)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        f = figures[supervised]
        name = "with oran-supervision" if supervised else "keepalives only"
        print(f"held sessions ({name}): {f['held']:.0f} of {count} after {f['opened']:.0f} s; over {window:g} s: "
              f"{f['share']:.2f} % of one core, {f['resets']:.0f} resets, {f['notifications']:.0f} notifications saved", flush=True)
    plain, supervised_run = figures[False], figures[True]
    extra = supervised_run["cpu"] - plain["cpu"]
    resets = max(supervised_run["resets"], 1)
    print(f"supervision of {count} held sessions (reset every 54 s): +{100 * extra / window:.2f} % of one core over "
          f"keepalives alone; {1000 * extra / resets:.3f} ms CPU per reset (its notification included), "
          f"{1000 * supervised_run['cpu'] / resets:.3f} ms per reset all told")
    return supervised_run["held"] == count and plain["held"] == count
