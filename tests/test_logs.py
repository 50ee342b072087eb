"""
log.level: every callhome logger honours it, from the service's start line
to the per-call line, the API, a reload and the stop.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, globalLogPublisher

from callhome import logs
from tests.service_harness import RunningService


class LogLevelTests(RunningService):
    """A whole service run at each level, with every event of ours recorded."""

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(logs.set_level, "info")

    async def run_service(self, level: str) -> list[dict[str, Any]]:
        """Start, serve a periodic and a persistent device, use the API, reload, stop."""
        periodic, periodic_fp = self.device_key("periodic")
        held, held_fp = self.device_key("held")
        service = self.start(
            f'[{{name: periodic, host_keys: ["{periodic_fp}"]}}, '
            f'{{name: held, host_keys: ["{held_fp}"], mode: persistent}}]',
            chains="{main: [{get: {}}, {sleep: {seconds: 0.01}}]}",
            extra=f"log: {{level: {level}}}\nunknown_devices: quarantine",
        )
        stranger, _ = self.device_key("stranger")
        self.assertEqual(await self.call(periodic, "--count", "1").ended, 0)
        self.call(held, "--count", "1")
        await self.session_of("held")
        await self.call(stranger, "--count", "1").ended  # quarantined: a warning
        self.assertEqual((await self.get("/devices")).code, 200)
        self.assertEqual((await self.post("/reload")).code, 200)
        await service.stopService()
        return [e for e in self.events if str(e.get("log_namespace", "")).startswith("callhome")]

    async def test_warn_silences_every_info_line_of_ours(self):
        """
        log.level: warn leaves warnings (the quarantined key) and nothing
        below: not the start line, the per-call lines, the persistent
        session's line, the API's or the reload's.
        """
        ours = await self.run_service("warn")
        below = [(e["log_namespace"], e.get("log_format")) for e in ours if e["log_level"] < LogLevel.warn]
        self.assertEqual(below, [])
        self.assertTrue(any("quarantined" in (e.get("log_format") or "") for e in ours))

    async def test_info_keeps_the_call_lines_and_drops_debug(self):
        """The default level logs each call's line, but no per-step debug line and no conch chatter."""
        ours = await self.run_service("info")
        formats = [e.get("log_format") or "" for e in ours]
        self.assertTrue(any(f.startswith("call from") for f in formats), formats)
        self.assertTrue(any(f.startswith("callhome listening") for f in formats))
        self.assertEqual([f for e, f in zip(ours, formats) if e["log_level"] < LogLevel.info], [])
