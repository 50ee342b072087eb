"""
The benchmark's smoke run: it must keep working (no thresholds here:
performance figures live in bench/, never in a timed unit test).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent


class BenchSmokeTests(SynchronousTestCase):
    """bench/run.py --quick runs both managers and prints its table."""

    def test_quick_run_prints_the_table(self):
        """20 sessions against callhome and the asyncssh baseline, all served."""
        result = subprocess.run(
            [sys.executable, str(REPO / "bench" / "run.py"), "--quick"],
            capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("CPU ms/session", result.stdout)
        self.assertRegex(result.stdout, r"callhome\s+[\d.]+\s+[\d.]+")
        self.assertRegex(result.stdout, r"asyncssh\s+[\d.]+\s+[\d.]+")
        self.assertIn("ratio ours/asyncssh", result.stdout)

    def test_quick_cluster_run_prints_the_table(self):
        """20 sessions on SQLite, PostgreSQL, and three instances behind HAProxy (skipped without them)."""
        from tests import pgserver

        reason = pgserver.available()
        if reason is not None:
            from twisted.trial.unittest import SkipTest

            raise SkipTest(reason)
        result = subprocess.run(
            [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--cluster", "3"],
            capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        if "cluster benchmark skipped" in result.stdout:
            return
        for row in ("sqlite x1", "postgresql x1", "postgresql x3 \\+ haproxy"):
            self.assertRegex(result.stdout, row + r"\s+[\d.]+\s+[\d.]+")
