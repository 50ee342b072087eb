"""
The alert rules and the Grafana dashboard shipped in etc/: the rules pass
``promtool check rules`` and fire in ``promtool test rules``; the dashboard
is a Grafana import document whose every query names metrics callhome
exports (read from a running service's /metrics, simulated devices
calling it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.service_harness import RunningService

ETC = Path(__file__).resolve().parent.parent / "etc"
RULES = ETC / "prometheus" / "callhome-alerts.yml"
DASHBOARD = ETC / "grafana" / "callhome.json"
METRIC = re.compile(r"\bcallhome_[a-z_]+")
#: suffixes Prometheus adds to a histogram's or counter's family name.
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        raise SkipTest("promtool is not installed (apt-get install prometheus)")
    return tool


class AlertRuleTests(SynchronousTestCase):
    """promtool, Debian's prometheus package, checks and runs the rules."""

    def test_promtool_check_rules(self) -> None:
        result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS: 9 rules found", result.stdout)

    def test_promtool_test_rules(self) -> None:
        result = subprocess.run([promtool(), "test", "rules", "callhome-alerts.test.yml"], capture_output=True, text=True,
                                cwd=RULES.parent)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_every_alert_the_issue_asks_for(self) -> None:
        text = RULES.read_text()
        for alert in ("CallhomeDevicesOverdue", "CallhomeAuthFailuresRising", "CallhomeQuarantineGrowing",
                      "CallhomeStoreWriteFailures", "CallhomeNoCalls", "CallhomeAdmissionRefusing"):
            self.assertIn(f"alert: {alert}", text)


class DashboardTests(SynchronousTestCase):
    """The dashboard's JSON is what Grafana imports."""

    def setUp(self) -> None:
        self.dashboard = json.loads(DASHBOARD.read_text())

    def test_import_document_shape(self) -> None:
        d = self.dashboard
        self.assertEqual(d["__inputs"][0]["pluginId"], "prometheus")
        for key, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list), ("templating", dict)):
            self.assertIsInstance(d[key], kind, key)
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids are unique")
        for panel in d["panels"]:
            self.assertIn(panel["type"], ("timeseries", "stat", "bargauge", "heatmap"), panel["title"])
            grid = panel["gridPos"]
            self.assertTrue(0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"])
            self.assertTrue(panel["targets"], panel["title"])
            for target in panel["targets"]:
                self.assertEqual(target["datasource"]["uid"], "${DS_PROMETHEUS}")
                self.assertEqual(target["expr"].count("("), target["expr"].count(")"), target["expr"])

    def test_the_panels_the_issue_asks_for(self) -> None:
        exprs = " ".join(t["expr"] for p in self.dashboard["panels"] for t in p["targets"])
        for metric in ("callhome_calls_finished_total", "callhome_sessions_open", "callhome_handshakes_in_progress",
                       "callhome_rpc_duration_seconds_bucket", "callhome_results_saved_total", "callhome_devices_by_status"):
            self.assertIn(metric, exprs)


class ExportedMetricsTests(RunningService):
    """Every metric the rules and the dashboard name is one a running service exports."""

    async def test_rules_and_dashboard_name_exported_metrics(self) -> None:
        key, fp = self.device_key("edge")
        self.start(f'[{{name: edge, host_keys: ["{fp}"], expect_call_every: 3600}}, {{name: lab, host_keys: ["SHA256:{"Z" * 43}"]}}]')
        await self.call(key).ended
        exposed = (await self.get("/metrics")).body.decode()
        families = {family(m) for m in METRIC.findall(exposed)}
        used = set(METRIC.findall(RULES.read_text())) | {
            m for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"] for m in METRIC.findall(t["expr"])}
        missing = sorted(m for m in used if family(m) not in families)
        self.assertEqual(missing, [], "named in etc/ but not exported")
        self.assertIn('callhome_devices_by_status{status="disconnected"} 1.0', exposed)
        self.assertIn('callhome_devices_by_status{status="never-called"} 1.0', exposed)
