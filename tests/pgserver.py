"""
A private PostgreSQL server for the tests: Debian's PostgreSQL 15, run as
the ``postgres`` user from a temporary directory, on a free port of
127.0.0.1 with its Unix socket in that directory too.  Nothing outside the
directory is touched; L{PostgresServer.stop} (and exit) stop it.

Password authentication (scram) is on, so the tests exercise
``store.password_env`` as an operator would use it.

Stdlib only (and psycopg when creating databases).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

__all__ = ["PostgresServer", "available", "PASSWORD"]

#: the superuser's password in every test server.
PASSWORD = "test-secret-Pw"
USER = "callhome"


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def available() -> str | None:
    """None if a private PostgreSQL can run here, else why not."""
    if _bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user to run PostgreSQL as"
    if os.geteuid() != 0:
        return "starting PostgreSQL as the postgres user needs root"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One private server; C{url(dbname)} is what callhome's config takes."""

    def __init__(self) -> None:
        bindir = _bindir()
        assert bindir is not None
        self.bindir = bindir
        self.directory = tempfile.mkdtemp(prefix="callhome-pg-")
        self.data = os.path.join(self.directory, "data")
        self.log = os.path.join(self.directory, "postgres.log")
        self.port = free_port()
        self.running = False
        self._made: list[str] = []
        postgres = pwd.getpwnam("postgres")
        os.chown(self.directory, postgres.pw_uid, postgres.pw_gid)
        os.chmod(self.directory, 0o755)
        pwfile = os.path.join(self.directory, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        os.chown(pwfile, postgres.pw_uid, postgres.pw_gid)
        self._as_postgres(
            "initdb", "-D", self.data, "-U", USER, "-A", "scram-sha-256", f"--pwfile={pwfile}",
            "-E", "UTF8", "--no-sync",
        )
        os.unlink(pwfile)
        atexit.register(self.stop)
        self.start()

    def _as_postgres(self, tool: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", os.path.join(self.bindir, tool), *args],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.directory,
        )

    def start(self) -> None:
        """Start (or start again after L{stop}) on the same port and data."""
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._as_postgres("pg_ctl", "-D", self.data, "-o", options, "-l", self.log, "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (C{immediate}: as if it crashed)."""
        if not self.running:
            return
        self.running = False
        try:
            self._as_postgres("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")
        except subprocess.CalledProcessError:
            pass

    def destroy(self) -> None:
        """Stop and remove everything."""
        self.stop("immediate")
        if os.environ.get("CALLHOME_TEST_KEEP_PG"):  # for a look at postgres.log after a failure
            return
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        """A URL without the password (callhome reads it from store.password_env)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"{prefix}_{int(time.time() * 1000) % 10**9}_{os.getpid()}_{len(self._made)}"
        self._made.append(name)
        with psycopg.connect(self.url(), password=PASSWORD, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)



_shared: PostgresServer | None = None


def shared() -> PostgresServer:
    """One server for the whole test process (each test makes its own database)."""
    global _shared
    if _shared is None or not _shared.running:
        if _shared is not None:
            _shared.destroy()
        _shared = PostgresServer()
        atexit.register(_shared.destroy)
    return _shared
