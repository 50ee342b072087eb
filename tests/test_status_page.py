"""
The status page (``GET /``) in a real browser: Debian's headless Chromium
loads it from the running service, with simulated devices calling in their
own processes, runs its script against the JSON API, and the test reads
the DOM Chromium ends with (``--dump-dom``) and takes screenshots (desktop
and phone) under ``var/``.
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import reactor, utils
from twisted.trial.unittest import SkipTest

from callhome.call import expectations as expectations_module
from tests.service_harness import REPO, RunningService, http, wait_for

#: flags for Chromium as root on a machine with no network but loopback.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
)
SCREENSHOTS = REPO / "var" / "screenshots"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise SkipTest("chromium is not installed (apt-get install chromium)")
    return path


class StatusPageTests(RunningService):
    """The page, the token, escaping, in Chromium."""

    timeout = 180

    async def browse(self, url: str, *extra: str) -> str:
        """What Chromium's DOM holds once the page's script has run."""
        profile = self.tmp / f"chromium-{len(os.listdir(self.tmp))}"
        out, err, code = await utils.getProcessOutputAndValue(
            chromium(), [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=8000", *extra, url],
            env=dict(os.environ, HOME=str(self.tmp)), reactor=reactor,
        )
        if "--dump-dom" in extra:
            self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        return out.decode("utf-8", "replace")

    def setUp(self) -> None:
        chromium()
        super().setUp()

    async def started(self, token: str | None = None) -> None:
        self.patch(expectations_module, "CHECK_INTERVAL", 0.2)
        if token is not None:
            self.api_extra = f", token: {token}"
        edge_key, edge_fp = self.device_key("edge")
        late_key, late_fp = self.device_key("tardy-7")
        service = self.start(
            f'[{{name: edge, host_keys: ["{edge_fp}"]}}, '
            f'{{name: tardy-7, host_keys: ["{late_fp}"], expect_call_every: 1, expect_grace: 0.5}}]'
        )
        await self.call(edge_key).ended
        await wait_for(lambda: "tardy-7" in service.expectations.overdue, timeout=10, what="tardy-7 overdue")
        # Text a device or an attacker controls reaches the page: an SSH
        # error, a certificate subject of an unknown device.
        registry = service.manager.registry
        registry.transition(registry.device("edge"), "failed-auth", error='<b id="injected-error">bold</b>')
        registry.quarantine("SHA256:" + "Q" * 43, "certificate", "192.0.2.9:4000",
                            certificate={"subject": '<img id="injected" src=x onerror="document.title=1">CN=evil'})

    async def test_the_page_lists_devices_overdue_first_in_chromium(self) -> None:
        await self.started()
        dom = await self.browse(self.api + "/", "--dump-dom")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / "status.html").write_text(dom)  # what the browser ended with, beside the screenshots
        self.assertIn('data-device="tardy-7" data-status="overdue"', dom.replace("\n", ""))
        self.assertLess(dom.index('data-device="tardy-7"'), dom.index('data-device="edge"'), "overdue first")
        self.assertIn('class="status status-overdue">overdue<', dom)
        self.assertIn("edge", dom)
        # Escaped, never markup: no element came from device text.
        self.assertNotIn('<img id="injected"', dom)
        self.assertNotIn('<b id="injected-error"', dom)
        self.assertIn("&lt;img id=\"injected\"", dom)
        self.assertIn("&lt;b id=\"injected-error\"&gt;", dom)
        self.assertIn("open sessions", dom)
        self.assertIn('>overdue</td><td class="error">device tardy-7 has not called', dom, "the overdue event in recent events")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for name, size in (("status-desktop.png", "1280,900"), ("status-phone.png", "390,844")):
            target = SCREENSHOTS / name
            target.unlink(missing_ok=True)
            await self.browse(self.api + "/", f"--screenshot={target}", f"--window-size={size}")
            self.assertTrue(target.exists() and target.stat().st_size > 5000, f"{target} written")

    async def test_with_a_token_the_page_asks_for_it_and_shows_nothing_without_it(self) -> None:
        await self.started(token="s3cret-page-token")
        bare = await http("GET", self.api + "/")
        self.assertEqual(bare.code, 401)
        self.assertNotIn(b"tardy-7", bare.body)
        self.assertIn(b"API token", bare.body)
        self.assertEqual(bare.header("Content-Security-Policy").split(";")[0], "default-src 'none'")
        dom = await self.browse(self.api + "/", "--dump-dom")
        self.assertNotIn('data-device="tardy-7"', dom)
        self.assertIn('<form id="login">', dom, "the token form is shown")
        dom = await self.browse(self.api + "/#token=s3cret-page-token", "--dump-dom")
        self.assertIn('data-device="tardy-7" data-status="overdue"', dom.replace("\n", ""))
        dom = await self.browse(self.api + "/#token=wrong", "--dump-dom")
        self.assertNotIn('data-device="tardy-7"', dom)
        self.assertIn('<form id="login">', dom)

    async def test_the_shell_holds_no_data(self) -> None:
        await self.started()
        shell = await http("GET", self.api + "/")
        self.assertEqual(shell.code, 200)
        self.assertNotIn(b"tardy-7", shell.body)
        script = await http("GET", self.api + "/status.js")
        self.assertEqual(script.code, 200)
        self.assertIn("textContent", script.body.decode())
        self.assertNotIn("innerHTML", script.body.decode())
