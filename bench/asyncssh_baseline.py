"""
The baseline: a minimal call-home manager on asyncssh's ``listen_reverse``.

    python bench/asyncssh_baseline.py PORT CLIENT_KEY HOST_KEYS_DIR RESULTS_DIR [persistent]

It does the same session as callhome's periodic chain: accept, SSH with the
device's host key checked against the known ones and public-key auth,
NETCONF hellos (base:1.1), one ``<get>``, the reply saved to a file
(temporary file and rename), ``<close-session>``, disconnect.  Nothing
more: no registry, no status, no logging, so it is the cheapest manager one
can write on asyncssh.  With ``persistent`` it keeps each session open
after the ``<get>`` (no close-session), with SSH keepalives every 30 s, as
callhome's persistent mode does.  Same control lines as ``bench/ours.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import asyncssh

BASE_1_1 = "urn:ietf:params:netconf:base:1.1"
HELLO = (
    '<?xml version="1.0" encoding="UTF-8"?><hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
    "<capabilities><capability>urn:ietf:params:netconf:base:1.0</capability>"
    f"<capability>{BASE_1_1}</capability></capabilities></hello>]]>]]>"
).encode()
GET = b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="1"><get/></rpc>'
CLOSE = b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="2"><close-session/></rpc>'


def chunk(message: bytes) -> bytes:
    return b"\n#%d\n%s\n##\n" % (len(message), message)


async def read_hello(reader: asyncssh.SSHReader) -> bytes:
    return await reader.readuntil(b"]]>]]>")


async def read_chunked(reader: asyncssh.SSHReader) -> bytes:
    parts = []
    while True:
        header = await reader.readuntil(b"\n")
        if header == b"\n":
            header = await reader.readuntil(b"\n")
        if header.startswith(b"##"):
            return b"".join(parts)
        size = int(header[1:-1])
        parts.append(await reader.readexactly(size))


class Baseline:
    def __init__(self, results: Path, names: dict[bytes, str], client_key: asyncssh.SSHKey, persistent: bool = False) -> None:
        self.results = results
        self.persistent = persistent
        #: persistent sessions held open: connection -> its channel's writer.
        self.held: dict[asyncssh.SSHClientConnection, object] = {}
        self.names = names
        self.client_key = client_key
        self.latencies: list[float] = []
        self.folders: set[Path] = set()

    async def session(self, conn: asyncssh.SSHClientConnection, accepted: float) -> None:
        writer, reader, _ = await conn.open_session(subsystem="netconf", encoding=None)
        writer.write(HELLO)
        await read_hello(reader)
        writer.write(chunk(GET))
        reply = await read_chunked(reader)
        # One folder per device, as callhome does: the device is the one
        # whose host key the connection presented.
        host_key = conn.get_server_host_key()
        folder = self.results / self.names[host_key.public_data]
        if folder not in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            self.folders.add(folder)
        fd, tmp = tempfile.mkstemp(dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(reply)
        os.replace(tmp, folder / f"{time.time():.6f}-get.xml")
        self.latencies.append(time.monotonic() - accepted)
        if self.persistent:
            # Keep nothing of the reply while held (callhome keeps none either).
            del reply
            self.held[conn] = writer
            await conn.wait_closed()
            self.held.pop(conn, None)
            return
        writer.write(chunk(CLOSE))
        await read_chunked(reader)
        conn.close()


async def main() -> None:
    port, key_path, host_keys_dir, results = sys.argv[1:5]
    client_key = asyncssh.read_private_key(key_path)
    files = sorted(Path(host_keys_dir).glob("*.pub"))
    known = [asyncssh.read_public_key(str(p)) for p in files]
    names = {key.public_data: path.stem for key, path in zip(known, files)}
    persistent = sys.argv[5:6] == ["persistent"]
    baseline = Baseline(Path(results), names, client_key, persistent)

    def acceptor(conn: asyncssh.SSHClientConnection) -> None:
        accepted = time.monotonic()
        task = asyncio.ensure_future(baseline.session(conn, accepted))
        task.add_done_callback(lambda t: t.exception())

    known_data = set(names)

    class KnownDevices(asyncssh.SSHClient):
        """Host keys checked by lookup, before any credential is sent."""

        def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
            return key.public_data in known_data

    # Not known_hosts=(all device keys): asyncssh copies that list into
    # every connection (memory and CPU growing with the number of devices);
    # an empty list and the callback keep the baseline at its cheapest.
    await asyncssh.listen_reverse(
        host="127.0.0.1", port=int(port), username="admin", client_keys=[client_key],
        known_hosts=([], [], []), client_factory=KnownDevices, acceptor=acceptor, backlog=1024,
        encryption_algs=["aes128-ctr"], mac_algs=["hmac-sha2-256"], compression_algs=None,
        kex_algs=["curve25519-sha256"],
        keepalive_interval=30 if persistent else 0, keepalive_count_max=3,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "cpu":
            r = resource.getrusage(resource.RUSAGE_SELF)
            print(json.dumps({"cpu": r.ru_utime + r.ru_stime, "maxrss_kib": r.ru_maxrss}), flush=True)
        elif line == "held":
            with open("/proc/self/statm") as f:
                resident_pages = int(f.read().split()[1])
            print(json.dumps({"sessions": len(baseline.held), "rss_kib": resident_pages * resource.getpagesize() // 1024}), flush=True)
        elif line == "latency":
            print(json.dumps({"latencies": baseline.latencies[:]}), flush=True)
            baseline.latencies.clear()
        elif line in ("quit", ""):
            return


if __name__ == "__main__":
    asyncio.run(main())
