"""
The callhome manager as a benchmark subject, in its own process.

    python bench/ours.py CONFIG

Runs the real service (registry, chain, saving, status) on the config and
answers one-line commands on stdin, each with one JSON line on stdout:

    cpu      {"cpu": seconds of user+system CPU (getrusage, this process, plus its worker
              processes with workers: N), "maxrss_kib": ...}
    held     {"sessions": persistent sessions held (chain done, keepalives on), "rss_kib": resident memory now,
              "served": calls ended ok, "failed": calls ended otherwise, "notifications": received,
              "rpcs": RPCs answered, "supervision_resets": of them supervision-watchdog-reset}
    mark     {"marked": true}: remember memory as it is now, the baseline for ``top``
    top      {"growth": the 15 source lines whose allocations grew most since ``mark`` (tracemalloc),
              only when CALLHOME_TRACEMALLOC=1 is set; [] otherwise}
    latency  {"latencies": [seconds from TCP accept to the reply saved, ...]}  (and clears them)
    quit

With ``CALLHOME_PROFILE=FILE`` set, the whole run is under cProfile and its
statistics are written to FILE at ``quit`` (``python -m pstats FILE``).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor, stdio  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

from callhome import config as config_module  # noqa: E402
from callhome.service import CallHomeService  # noqa: E402


def process_cpu(pid: int) -> float:
    """User+system CPU seconds of another process (a worker), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def usage(service: CallHomeService | None = None) -> dict[str, float]:
    """CPU seconds of this process and its worker processes (``workers: N``); this one's peak RSS."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r.ru_utime + r.ru_stime
    pool = service.pool if service is not None else None
    if pool is not None:
        cpu += sum(process_cpu(w.pid) for w in pool.workers.values() if w.pid is not None)
    return {"cpu": cpu, "maxrss_kib": r.ru_maxrss}


class Control(LineReceiver):
    """The benchmark's control line."""

    delimiter = b"\n"

    def __init__(self, latencies: list[float], service: CallHomeService) -> None:
        self.latencies = latencies
        self.service = service
        self.manager = service.manager
        self.baseline: tracemalloc.Snapshot | None = None

    def counts(self) -> dict[str, float]:
        """Calls ended ok and otherwise, and notifications received, from the service's metrics."""
        families = {m.name: m for m in self.service.metrics.registry.collect()}
        finished = families["callhome_calls_finished"].samples
        served = sum(s.value for s in finished if s.name.endswith("_total") and s.labels.get("outcome") == "ok")
        failed = sum(s.value for s in finished if s.name.endswith("_total") and s.labels.get("outcome") != "ok")
        notifications = sum(s.value for s in families["callhome_notifications_received"].samples if s.name.endswith("_total"))
        rpcs = [s for s in families["callhome_rpcs"].samples if s.name.endswith("_total")]
        resets = sum(s.value for s in rpcs if s.labels.get("operation") == "supervision-watchdog-reset")
        return {"served": served, "failed": failed, "notifications": notifications, "rpcs": sum(s.value for s in rpcs),
                "supervision_resets": resets}

    def growth(self) -> list[str]:
        """Where memory grew since ``mark``: tracemalloc's line statistics, biggest growth first."""
        if self.baseline is None:
            return []
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        stats = snapshot.compare_to(self.baseline, "lineno")
        return [str(stat) for stat in stats if stat.size_diff > 0][:15]

    def lineReceived(self, line: bytes) -> None:
        command = line.strip().decode()
        if command == "cpu":
            self.sendLine(json.dumps(usage(self.service)).encode())
        elif command == "held":
            with open("/proc/self/statm") as f:
                resident_pages = int(f.read().split()[1])
            self.sendLine(json.dumps({
                # Held: the chain is done and keepalives are running.
                "sessions": sum(1 for call in self.manager.sessions.values() if call.keepalive is not None),
                "rss_kib": resident_pages * resource.getpagesize() // 1024,
                **self.counts(),
            }).encode())
        elif command == "mark":
            if tracemalloc.is_tracing():
                self.baseline = tracemalloc.take_snapshot()
            self.sendLine(json.dumps({"marked": self.baseline is not None}).encode())
        elif command == "top":
            self.sendLine(json.dumps({"growth": self.growth()}).encode())
        elif command == "latency":
            self.sendLine(json.dumps({"latencies": self.latencies[:]}).encode())
            self.latencies.clear()
        elif command == "quit":
            reactor.stop()


def main() -> None:
    config = config_module.load(sys.argv[1])
    service = CallHomeService(config, reactor)
    manager = service.manager
    latencies: list[float] = []
    # Accept-to-saved latency: the save of a call's reply, minus its accept.
    save = manager.results.save
    started_by_device: dict[str, float] = {}
    identify = manager.identify

    def identify_and_note(call, fingerprint, key_type, candidate, **more):  # type: ignore[no-untyped-def]
        device = identify(call, fingerprint, key_type, candidate, **more)
        if device is not None:
            started_by_device[device.name] = call.call.started
        return device

    def save_and_note(device: str, action: str, payload: bytes) -> Path:
        path = save(device, action, payload)
        if device in started_by_device:
            latencies.append(reactor.seconds() - started_by_device.pop(device))
        return path

    manager.identify = identify_and_note  # type: ignore[method-assign]
    manager.results.save = save_and_note  # type: ignore[method-assign]
    service.startService()
    control = Control(latencies, service)
    if os.environ.get("CALLHOME_TRACEMALLOC") == "1":
        tracemalloc.start(1)
    stdio.StandardIO(control)
    print(json.dumps({"ready": True}), flush=True)
    profile_to = os.environ.get("CALLHOME_PROFILE")
    if profile_to:
        import cProfile

        cProfile.runctx("reactor.run()", globals(), {"reactor": reactor}, profile_to)
    else:
        reactor.run()


if __name__ == "__main__":
    main()
