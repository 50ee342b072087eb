"""
A private HAProxy in front of callhome instances, for the tests and the
benchmark: Debian's haproxy in TCP mode on a free loopback port, each
backend sent a PROXY v2 header and health-checked with a PROXY v2 LOCAL
header (``check-send-proxy``), as the README's cluster example configures it.

Stdlib only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def available() -> str | None:
    """None if HAProxy can run here, else why not."""
    return None if os.access(HAPROXY, os.X_OK) else "haproxy is not installed (apt-get install haproxy)"


def start(
    config: Path,
    port: int,
    servers: list[tuple[str, int]],
    check: str = "inter 1s",
    maxconn: int = 2000,
    timeout: str = "120s",
    connect: str = "2s",
    defaults: tuple[str, ...] = (),
) -> "subprocess.Popen[bytes]":
    """
    Write C{config} and start HAProxy on 127.0.0.1:C{port}, round-robin over
    C{servers} (name, port on 127.0.0.1); the caller stops it.

    @param check: the health check's options after ``check check-send-proxy``.
    @param defaults: more lines for the ``defaults`` section.
    """
    backends = "\n".join(
        f"    server {name} 127.0.0.1:{server_port} send-proxy-v2 check check-send-proxy {check}" for name, server_port in servers
    )
    more = "".join(f"    {line}\n" for line in defaults)
    config.write_text(f"""
global
    maxconn {maxconn}
defaults
    mode tcp
    timeout connect {connect}
    timeout client {timeout}
    timeout server {timeout}
{more}frontend callhome
    bind 127.0.0.1:{port}
    default_backend managers
backend managers
    balance roundrobin
{backends}
""")
    return subprocess.Popen([HAPROXY, "-f", str(config), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
