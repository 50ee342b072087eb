"""
Prometheus metrics of one service (``GET /metrics``).

Each service has its own C{CollectorRegistry}, so two services in one
process (tests, benchmarks) do not mix their figures.  Gauges that mirror
live state (handshakes in progress, open sessions) are read when scraped
rather than kept up to date on every change.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

#: gauges of state every process shares (the main process's view counts,
#: not the sum over the worker processes).
SHARED_GAUGES = frozenset([
    "callhome_devices_known", "callhome_devices_quarantined", "callhome_devices_overdue",
    "callhome_device_last_call_timestamp_seconds", "callhome_devices_by_status",
])

#: RPC latency buckets (seconds): from a LAN device's get to a slow commit.
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The counters, gauges and histograms the service keeps."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls_accepted = Counter("callhome_calls_accepted", "Connections admitted for a handshake, by transport (ssh, tls)", ["transport"], registry=r)
        self.calls_refused = Counter("callhome_calls_refused", "Calls refused, by reason", ["reason"], registry=r)
        self.calls_finished = Counter("callhome_calls_finished", "Calls ended, by outcome and transport (ssh, tls)", ["outcome", "transport"], registry=r)
        self.auth_failures = Counter("callhome_auth_failures", "Calls whose SSH login failed", registry=r)
        self.rpcs = Counter("callhome_rpcs", "NETCONF RPCs sent, by operation and outcome", ["operation", "outcome"], registry=r)
        self.rpc_latency = Histogram(
            "callhome_rpc_duration_seconds", "Time from sending an RPC to its reply", ["operation"],
            buckets=RPC_BUCKETS, registry=r,
        )
        self._bytes = _FunctionCounter("callhome_bytes_received", "Bytes received from devices (SSH wire bytes)")
        r.register(self._bytes)
        self._store_failures = _FunctionCounter(
            "callhome_store_write_failures", "Database write batches that failed (kept queued and retried)")
        self._store_dropped = _FunctionCounter(
            "callhome_store_records_dropped", "Queued database records dropped because the queue was full")
        r.register(self._store_failures)
        r.register(self._store_dropped)
        self.chain_steps = Counter("callhome_chain_steps", "Chain steps run, by action and outcome", ["action", "outcome"], registry=r)
        self.scheduled_runs = Counter("callhome_scheduled_runs", "Scheduled chain runs in persistent sessions, by chain and outcome (ok, failed, skipped)",
                                      ["chain", "outcome"], registry=r)
        self.notifications = Counter("callhome_notifications_received", "NETCONF notifications received", registry=r)
        self.results_saved = Counter("callhome_results_saved", "Result files written", registry=r)
        self.handshakes = Gauge("callhome_handshakes_in_progress", "Connections not yet authenticated", registry=r)
        self.sessions = Gauge("callhome_sessions_open", "Calls connected now (any stage)", registry=r)
        self.devices = Gauge("callhome_devices_known", "Devices the service accepts (configured and enrolled)", registry=r)
        self.quarantined = Gauge("callhome_devices_quarantined", "Unknown host keys waiting for approval", registry=r)
        self.overdue = Gauge("callhome_devices_overdue", "Devices that have not called within expect_call_every + expect_grace", registry=r)
        self._last_calls = _FunctionGauges(
            "callhome_device_last_call_timestamp_seconds", "When each device last called (or last held a session)", "device")
        self._by_status = _FunctionGauges("callhome_devices_by_status", "Devices by status (never-called: no call yet)", "status")
        r.register(self._last_calls)
        r.register(self._by_status)
        self._registry = r

    def live_expectations(
        self, overdue: Callable[[], float], last_calls: Callable[[], Iterable[tuple[str, float]]],
        by_status: Callable[[], Iterable[tuple[str, float]]],
    ) -> None:
        """Devices overdue now, each device's last call (so Prometheus can alert on it too), devices by status."""
        self.overdue.set_function(overdue)
        self._last_calls.read = last_calls
        self._by_status.read = by_status

    def live_alerts(self, sent: Callable[[], float], dropped: Callable[[], float]) -> None:
        """Webhook events delivered, and dropped after their retries or from a full queue."""
        sent_counter = _FunctionCounter("callhome_alerts_sent", "Webhook events delivered")
        dropped_counter = _FunctionCounter("callhome_alerts_dropped", "Webhook events dropped (retries exhausted or queue full)")
        sent_counter.read, dropped_counter.read = sent, dropped
        self._registry.register(sent_counter)
        self._registry.register(dropped_counter)

    def set_instance(self, name: str) -> None:
        """
        A cluster instance's metrics say whose they are: an info metric,
        C{callhome_cluster_instance_info{cluster_instance="..."} 1} (not an
        ``instance`` label on every series: Prometheus sets its own
        ``instance`` target label, and /metrics is per instance anyway).
        """
        info = Gauge("callhome_cluster_instance_info", "This instance of a cluster (cluster.instance)",
                     ["cluster_instance"], registry=self._registry)
        info.labels(name).set(1)

    def live(
        self,
        handshakes: Callable[[], float],
        sessions: Callable[[], float],
        devices: Callable[[], float],
        quarantined: Callable[[], float],
        bytes_received: Callable[[], float],
    ) -> None:
        """Read these from the running service when scraped."""
        self._bytes.read = bytes_received
        self.handshakes.set_function(handshakes)
        self.sessions.set_function(sessions)
        self.devices.set_function(devices)
        self.quarantined.set_function(quarantined)

    def live_store(self, failures: Callable[[], float], dropped: Callable[[], float]) -> None:
        """Read the store's write failures and dropped records when scraped."""
        self._store_failures.read = failures
        self._store_dropped.read = dropped

    def rpc_done(self, operation: str, outcome: str, seconds: float) -> None:
        """Count one RPC: C{outcome} is ok, rpc-error, timeout or lost."""
        self.rpcs.labels(operation, outcome).inc()
        self.rpc_latency.labels(operation).observe(seconds)

    def samples(self) -> list[list[Any]]:
        """
        This process's samples as plain values, [family, sample, labels,
        value], for the main process to add to its own (``workers: N``).
        """
        return [
            [family.name, sample.name, sample.labels, sample.value]
            for family in self.registry.collect() if family.name not in SHARED_GAUGES
            for sample in family.samples if not sample.name.endswith("_created")
        ]

    def exposition(self, others: Iterable[list[list[Any]]] = ()) -> bytes:
        """
        The Prometheus text format of every metric, with the samples of
        other processes (see L{samples}) added to this one's.
        """
        extra: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = defaultdict(lambda: defaultdict(float))
        for samples in others:
            for family, name, labels, value in samples:
                extra[family][(name, tuple(sorted(labels.items())))] += value
        if not extra:
            return generate_latest(self.registry)
        families = []
        for family in self.registry.collect():
            added = extra.get(family.name)
            if added:
                merged = []
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    merged.append(sample._replace(value=sample.value + added.pop(key, 0.0)))
                # Label values only other processes have seen.
                for (name, labels), value in added.items():
                    merged.append(Sample(name, dict(labels), value))
                family.samples = merged
            families.append(family)
        return generate_latest(_Families(families))


class _Families:
    """Collected metric families, as C{generate_latest} reads a registry."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


class _FunctionCounter(Collector):
    """
    A counter read from the service when scraped: the byte count is kept
    as a plain integer on each call (no lock per read from the socket).
    """

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.read: Callable[[], float] = lambda: 0.0

    def collect(self) -> Iterator[CounterMetricFamily]:
        """The counter, read now."""
        family = CounterMetricFamily(self.name, self.documentation)
        family.add_metric([], self.read())
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        """The counter's name and help, without reading it."""
        yield CounterMetricFamily(self.name, self.documentation)


class _FunctionGauges(Collector):
    """Gauges with one label, read from the service when scraped (one sample per value of the label)."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.read: Callable[[], Iterable[tuple[str, float]]] = lambda: ()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The samples, read now."""
        family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, number in self.read():
            family.add_metric([value], number)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The family's name and help, without reading it."""
        yield GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
