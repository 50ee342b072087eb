"""Drive real third-party software as a TLS NETCONF Call Home device (RFC 8071 §4, RFC 7589).

The device is Debian's libnetconf2 2.0.x (``libnetconf2-dev``, with
``libyang2-dev``): a small C program, ``tests/peers/nc_tls_callhome.c``,
configures the library's server-side TLS call home and answers ``<get>`` /
``<get-config>``; the library does everything else (the outgoing TCP
connection and its retries, the TLS server side, the check of the
manager's certificate with cert-to-name, the hello, framing,
``<close-session>``).

The program is built on first use with gcc and pkg-config into a cache
directory keyed by its source and the compiler and library versions, so a
test run compiles it once (about a second) and later runs reuse it.  The
build goes to a temporary name and is renamed into place: concurrent test
processes never see half a binary.

Stdlib only; no Twisted.  See ``tests/realpeer.py`` for the SSH peer.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from tests.realpeer import reap_group, signal_group

__all__ = ["Libnetconf2Device", "available", "build"]

SOURCE = Path(__file__).resolve().parent / "peers" / "nc_tls_callhome.c"
PACKAGES = ("libnetconf2", "libyang")
CFLAGS = ("-std=gnu11", "-O1", "-g", "-Wall", "-Wextra")
READY = "nc_tls_callhome: ready"

_built: Path | None = None
_devices: "weakref.WeakSet[Libnetconf2Device]" = weakref.WeakSet()


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)


def available() -> str | None:
    """Return None if the driver can be built here, else a reason to skip."""
    for tool in ("gcc", "pkg-config"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install gcc pkg-config libnetconf2-dev libyang2-dev)"
    for package in PACKAGES:
        if _run("pkg-config", "--exists", package).returncode != 0:
            return f"pkg-config finds no {package} (apt-get install libnetconf2-dev libyang2-dev)"
    version = _run("pkg-config", "--modversion", "libnetconf2").stdout.strip()
    if not version.startswith("2.0."):
        # 2.1+ configures the server through YANG data (nc_server_config_*):
        # the driver is written for the 2.0.x callback API.
        return f"libnetconf2 {version} found; the driver is written for the 2.0.x API (Debian 12's 2.0.24)"
    return None


def _pkg_config(*flags: str) -> list[str]:
    out = _run("pkg-config", *flags, *PACKAGES)
    if out.returncode != 0:
        raise RuntimeError(f"pkg-config {' '.join(flags)} failed: {out.stderr.strip()}")
    return out.stdout.split()


def _cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"callhome-libnetconf2-peer-{os.geteuid()}"


def build() -> Path:
    """The driver's binary: built now unless this process or an earlier run already did."""
    global _built
    if _built is not None and _built.exists():
        return _built
    reason = available()
    if reason is not None:
        raise RuntimeError(reason)
    cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    for part in (_run("gcc", "-dumpfullversion").stdout, _run("pkg-config", "--modversion", *PACKAGES).stdout,
                 " ".join(CFLAGS + tuple(cflags) + tuple(libs))):
        key.update(b"\0" + part.encode())
    directory = _cache_dir() / key.hexdigest()[:16]
    binary = directory / "nc_tls_callhome"
    if not binary.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / f".nc_tls_callhome.{os.getpid()}"
        out = _run("gcc", *CFLAGS, "-o", str(partial), str(SOURCE), *cflags, *libs)
        if out.returncode != 0 or not partial.exists():
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"building {SOURCE.name} failed:\n{out.stdout}{out.stderr}")
        os.replace(partial, binary)
    _built = binary
    return binary


class Libnetconf2Device:
    """
    One libnetconf2 call-home device process.

    It calls C{host}:C{port} over TLS presenting C{certificate}/C{key},
    trusts the certificate (or CA) in C{trusted}, and maps the manager's
    certificate, known by its SHA-256 C{fingerprint}, to C{username}
    (cert-to-name, "specified"; without a username the certificate's CN).
    C{mode} is libnetconf2's call-home connection type: C{persistent}
    calls again at once when a session ends, C{periodic} after its period.
    With C{sessions} > 0 the process exits (status 0) once that many
    NETCONF sessions have ended.  Its stderr (libnetconf2's verbose log and
    the driver's own lines) goes to C{workdir}/libnetconf2.log.
    """

    def __init__(
        self, workdir: str | os.PathLike[str], port: int, certificate: str | os.PathLike[str],
        key: str | os.PathLike[str], trusted: str | os.PathLike[str], fingerprint: str,
        username: str | None = None, mode: str = "periodic", hostname: str = "libnetconf2-device",
        sessions: int = 0, host: str = "127.0.0.1", period_minutes: int = 1, idle_timeout: int = 120,
    ) -> None:
        if mode not in ("periodic", "persistent"):
            raise ValueError(f"mode is periodic or persistent, not {mode!r}")
        if not (host.startswith("127.") or host == "::1"):
            raise ValueError("the test device calls loopback addresses only")
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "libnetconf2.log"
        self.argv = [
            "--host", host, "--port", str(port), "--cert", str(certificate), "--key", str(key),
            "--trusted", str(trusted), "--fingerprint", fingerprint, "--mode", mode,
            "--hostname", hostname, "--sessions", str(sessions),
            "--period", str(period_minutes), "--idle-timeout", str(idle_timeout),
        ]
        if username is not None:
            self.argv += ["--username", username]
        self.proc: subprocess.Popen[bytes] | None = None
        _devices.add(self)

    def start(self) -> None:
        """Build if need be and start the process (returns at once; see L{ready})."""
        binary = build()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), *self.argv],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: a ^C aimed at the test runner must not
                # kill it before teardown, and stop() reaches it alone.
                start_new_session=True,
            )

    def log(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ready(self) -> bool:
        """Whether the process is configured and its call-home thread runs (raises if it died first)."""
        text = self.log()
        if READY in text:
            return True
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"nc_tls_callhome exited with {self.proc.returncode} before it was ready:\n{text}")
        return False

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until L{ready} (for callers without a reactor)."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nc_tls_callhome not ready within {timeout:g}s:\n{self.log()}")
            time.sleep(0.02)

    def count(self, text: str) -> int:
        """How many times C{text} occurs in the log (e.g. ``"probe answered"``)."""
        return self.log().count(text)

    @property
    def returncode(self) -> int | None:
        """The exit status once the process ended, else None."""
        return None if self.proc is None else self.proc.poll()

    def terminate(self) -> None:
        """SIGTERM without waiting (poll L{returncode}): the driver stops calling, closes its sessions, exits 0."""
        if self.proc is not None:
            signal_group(self.proc, signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the driver stops calling, closes its sessions, exits 0), SIGKILL after C{timeout}."""
        proc = self.proc
        if proc is None:
            return None
        signal_group(proc, signal.SIGTERM)
        return reap_group(proc, timeout)


def _at_exit() -> None:
    for device in list(_devices):
        device.stop(timeout=2)


atexit.register(_at_exit)
