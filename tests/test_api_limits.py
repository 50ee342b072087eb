"""
A hostile HTTP client: the API refuses before it reads (no token, a body
too large, a chunked body that never ends, too many connections), and
nothing of a refused body reaches the disk.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import threads

from callhome.control.http import MAX_BODY, MAX_CONNECTIONS_PER_CLIENT
from tests.service_harness import RunningService

TOKEN = "limits-token"


def temporary_bytes() -> int:
    """Bytes in the temporary directory's files (where twisted.web spools bodies)."""
    total = 0
    for path in Path(tempfile.gettempdir()).glob("tmp*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            pass
    return total


def send_body(port: int, headers: str, body_bytes: int, chunked: bool = False) -> tuple[bytes, int]:
    """
    Send a request and up to C{body_bytes} of body (blocking, in a thread):
    return what the server answered and how many body bytes the socket took
    before the server closed it.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    answer = b""
    try:
        sock.sendall(headers.encode("latin-1"))
        piece = b"x" * 65536
        sock.settimeout(5)
        deadline = time.monotonic() + 20
        while sent < body_bytes and time.monotonic() < deadline:
            data = (b"%x\r\n" % len(piece) + piece + b"\r\n") if chunked else piece
            try:
                sock.sendall(data)
            except OSError:
                break
            sent += len(piece)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    finally:
        sock.close()
    return answer, sent


class ApiLimitTests(RunningService):
    """The API's limits hold before a body is read."""

    api_extra = ", token_env: CALLHOME_LIMITS_TOKEN"

    def setUp(self) -> None:
        super().setUp()
        os.environ["CALLHOME_LIMITS_TOKEN"] = TOKEN
        self.addCleanup(os.environ.pop, "CALLHOME_LIMITS_TOKEN", None)
        self.start("[]")
        self.api_port = self.service.api_address().port
        # Count the bytes the API's connections actually read.
        factory: Any = self.service.api.factory
        self.read = [0]
        build = factory.buildProtocol

        def counting(addr: Any) -> Any:
            protocol = build(addr)
            if protocol is not None:
                received = protocol.dataReceived

                def counted(data: bytes) -> None:
                    self.read[0] += len(data)
                    received(data)

                protocol.dataReceived = counted
            return protocol

        factory.buildProtocol = counting

    async def test_unauthenticated_body_refused_before_it_is_read(self):
        """A 100 MB POST without the token gets 401 after its headers; the body is neither read nor spooled."""
        spooled = temporary_bytes()
        size = 100 * 1024 * 1024
        headers = f"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nContent-Type: application/json\r\n\r\n"
        answer, sent = await threads.deferToThread(send_body, self.api_port, headers, size)
        self.assertTrue(answer.startswith(b"HTTP/1.1 401"), answer[:200])
        self.assertIn(b"bearer token", answer)
        self.assertLess(self.read[0], 1024 * 1024, "the server read the body")
        self.assertLess(sent, size // 4, "the client could send the whole body")
        self.assertLess(temporary_bytes() - spooled, 1024 * 1024, "the body was spooled to a temporary file")
        # The service goes on answering.
        self.assertEqual((await self.get("/healthz")).code, 200)

    async def test_oversized_content_length_gets_413_at_once(self):
        """With the token, a Content-Length over the limit is refused before any body byte is sent."""
        headers = (f"POST /reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                   f"Content-Length: {MAX_BODY + 1}\r\n\r\n")
        answer, _ = await threads.deferToThread(send_body, self.api_port, headers, 0)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:200])

    async def test_chunked_body_over_the_limit_is_cut(self):
        """A chunked body is cut with 413 as soon as it passes the limit; what came before is dropped."""
        spooled = temporary_bytes()
        headers = (f"POST /reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n")
        answer, _ = await threads.deferToThread(send_body, self.api_port, headers, 3 * MAX_BODY, True)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:200])
        self.assertLess(self.read[0], MAX_BODY + 4 * 1024 * 1024)
        self.assertLess(temporary_bytes() - spooled, 1024 * 1024)

    async def test_unauthenticated_chunked_body_refused(self):
        """No token and a chunked body: 401 at the headers."""
        headers = "POST /reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        answer, _ = await threads.deferToThread(send_body, self.api_port, headers, 10 * 1024 * 1024, True)
        self.assertTrue(answer.startswith(b"HTTP/1.1 401"), answer[:200])

    async def test_huge_headers_refused(self):
        """Headers past the limit are refused (400, or a reset while the client still sends), not read on."""
        headers = "GET /healthz HTTP/1.1\r\nHost: x\r\n" + "X-Pad: " + "y" * (1024 * 1024) + "\r\n\r\n"
        answer, _ = await threads.deferToThread(send_body, self.api_port, headers, 0)
        self.assertTrue(answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200])
        self.assertLess(self.read[0], 256 * 1024, "the server read on past the header limit")
        self.assertEqual((await self.get("/healthz")).code, 200)

    async def test_connections_per_client_are_limited(self):
        """One address holds at most the limit of connections; the next is closed at once, the others still work."""
        held = [socket.create_connection(("127.0.0.1", self.api_port)) for _ in range(MAX_CONNECTIONS_PER_CLIENT)]
        try:
            def one_more() -> bytes:
                with socket.create_connection(("127.0.0.1", self.api_port), timeout=5) as extra:
                    try:
                        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                        return extra.recv(100)
                    except OSError:
                        return b""

            self.assertEqual(await threads.deferToThread(one_more), b"")
        finally:
            for sock in held:
                sock.close()
        for _ in range(100):
            if self.service.api.factory.open.get("127.0.0.1", 0) == 0:
                break
            await threads.deferToThread(time.sleep, 0.02)
        self.assertEqual((await self.get("/healthz")).code, 200)


class StoreHealthTests(RunningService):
    """While the database refuses writes, /healthz says degraded and why, and /metrics counts it."""

    async def test_degraded_while_writes_fail(self):
        service = self.start("[]")
        self.assertEqual((await self.get("/healthz")).json()["status"], "ok")
        service.store.failing = "OperationalError: database or disk is full"
        service.store.write_failures = 3
        report = (await self.get("/healthz")).json()
        self.assertEqual(report["status"], "degraded")
        self.assertEqual(report["store"]["failing"], "OperationalError: database or disk is full")
        metrics = (await self.get("/metrics")).body.decode()
        self.assertIn("callhome_store_write_failures_total 3.0", metrics)
        service.store.failing = None
        self.assertEqual((await self.get("/healthz")).json()["status"], "ok")
