"""Drive real third-party software as a NETCONF Call Home device (RFC 8071).

The device is OpenSSH's ``sshd -i`` serving Debian's ``netconfd`` (yuma123)
through the ``netconf`` subsystem.  For call home the *device* opens the TCP
connection to the manager, yet stays the SSH server: ``socat`` connects out
and execs ``sshd -i`` on that very socket.

One netconfd serves every device of a test process (started on first use,
stopped at exit).  It listens on a private Unix socket in its own temporary
directory rather than the default ``/tmp/ncxserver.sock``, so several test
processes (or a system netconfd) can run side by side.

Stdlib only; no Twisted.  Needs root: ``sshd -i`` wants it for privilege
separation, and the SSH user is then ``root`` (public key auth only).
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref

__all__ = ["NetconfdDevice", "available", "stop_netconfd", "netconfd_log"]

SSHD = "/usr/sbin/sshd"
NETCONFD = "/usr/sbin/netconfd"
SUBSYSTEM = "/usr/sbin/netconf-subsystem"

# netconfd only accepts sessions whose server port is in its --port list
# (default 830).  On call home sshd's "server" port is the device's
# ephemeral source port, so the wrapper pretends it was 830.
NETCONF_PORT = 830

# Set (by sshd's SetEnv) for a device made with input_delay.
INPUT_DELAY_ENV = "REALPEER_INPUT_DELAY"

# Registry of netconfds started by this module, one pid file per owning
# test process, so that a later run can kill what a crashed run left behind.
_REGISTRY = os.path.join(tempfile.gettempdir(), "callhome-realpeer")

_netconfd: subprocess.Popen[bytes] | None = None
_netconfd_dir: str | None = None
_devices: "weakref.WeakSet[NetconfdDevice]" = weakref.WeakSet()


def available() -> str | None:
    """Return None if the real peer can run here, else a reason to skip."""
    for path in (SSHD, NETCONFD, SUBSYSTEM):
        if not os.access(path, os.X_OK):
            return f"{path} not installed"
    for tool in ("socat", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if os.geteuid() != 0:
        return "sshd -i with privilege separation needs root"
    return None


def _pid_is_netconfd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0]
    except OSError:
        return False
    return os.path.basename(argv0) == b"netconfd"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_leftovers() -> None:
    """Kill netconfds whose owning test process is gone (crash, SIGKILL)."""
    try:
        names = os.listdir(_REGISTRY)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(_REGISTRY, name)
        try:
            owner = int(name.split(".")[0])
            with open(path) as f:
                pid_s, rundir = f.read().split("\n")[:2]
            pid = int(pid_s)
        except (ValueError, OSError):
            continue
        if owner != os.getpid() and _pid_alive(owner):
            continue  # a concurrent test process still uses it
        if _pid_is_netconfd(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(rundir, ignore_errors=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _sock_path() -> str:
    assert _netconfd_dir is not None
    return os.path.join(_netconfd_dir, "ncxserver.sock")


def _wrapper_path() -> str:
    assert _netconfd_dir is not None
    return os.path.join(_netconfd_dir, "netconf-subsystem-wrapper")


def _ensure_netconfd(timeout: float = 15.0) -> None:
    """Start the shared netconfd unless it is already running."""
    global _netconfd, _netconfd_dir
    if _netconfd is not None and _netconfd.poll() is None:
        return
    stop_netconfd()  # clean up after one that died on its own
    _reap_leftovers()
    reason = available()
    if reason is not None:
        raise RuntimeError(reason)

    rundir = tempfile.mkdtemp(prefix="callhome-netconfd-")
    _netconfd_dir = rundir
    sock = _sock_path()
    subsystem = f"{SUBSYSTEM} --ncxserver-sockname={NETCONF_PORT}@{sock}"
    with open(_wrapper_path(), "w") as f:
        # sshd runs this via the user's shell; SSH_CONNECTION is
        # "client_ip client_port server_ip server_port".  A device made
        # with input_delay gets INPUT_DELAY_ENV through sshd's SetEnv.
        f.write(
            "#!/bin/sh\n"
            "set -- $SSH_CONNECTION\n"
            f'SSH_CONNECTION="$1 $2 $3 {NETCONF_PORT}"\n'
            "export SSH_CONNECTION\n"
            f'if [ -n "${INPUT_DELAY_ENV}" ]; then\n'
            f'    {{ sleep "${INPUT_DELAY_ENV}"; exec cat; }} | exec {subsystem}\n'
            "else\n"
            f"    exec {subsystem}\n"
            "fi\n"
        )
    os.chmod(_wrapper_path(), 0o755)

    user = _username()
    env = dict(os.environ)
    # netconfd keeps state in $HOME/.yuma; keep concurrent instances apart.
    env["HOME"] = rundir
    # netconfd stays in the foreground (it has no daemon option), so the
    # Popen is the server itself.  New session: a ^C aimed at the test
    # runner must not kill it before teardown has finished.
    out = open(os.path.join(rundir, "netconfd.out"), "wb")
    _netconfd = subprocess.Popen(
        [
            NETCONFD,
            f"--superuser={user}",
            "--no-startup",
            f"--log={os.path.join(rundir, 'netconfd.log')}",
            f"--ncxserver-sockname={sock}",
            f"--port={NETCONF_PORT}",
        ],
        cwd=rundir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()  # the child has its own copy
    os.makedirs(_REGISTRY, exist_ok=True)
    with open(os.path.join(_REGISTRY, f"{os.getpid()}.pid"), "w") as f:
        f.write(f"{_netconfd.pid}\n{rundir}\n")

    # The socket file appears at bind(); connect() proves listen() too.
    deadline = time.monotonic() + timeout
    while True:
        if _netconfd.poll() is not None:
            log = netconfd_log()
            stop_netconfd()
            raise RuntimeError(f"netconfd exited early:\n{log}")
        if os.path.exists(sock):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(sock)
                break
            except OSError:
                pass
            finally:
                probe.close()
        if time.monotonic() > deadline:
            stop_netconfd()
            raise RuntimeError("netconfd did not open its socket in time")
        time.sleep(0.02)


def stop_netconfd() -> None:
    """Stop the shared netconfd (idempotent; also registered with atexit)."""
    global _netconfd, _netconfd_dir
    proc, rundir = _netconfd, _netconfd_dir
    _netconfd = _netconfd_dir = None
    if proc is not None and proc.poll() is None:
        # netconfd takes ~1 s to honour SIGTERM; SIGKILL is safe here since
        # there is no startup config to save.
        proc.kill()
        proc.wait()
    if rundir is not None:
        shutil.rmtree(rundir, ignore_errors=True)
    try:
        os.unlink(os.path.join(_REGISTRY, f"{os.getpid()}.pid"))
    except FileNotFoundError:
        pass


def netconfd_log() -> str:
    """Return the shared netconfd's log (empty if it is not running)."""
    if _netconfd_dir is None:
        return ""
    try:
        with open(os.path.join(_netconfd_dir, "netconfd.log"), errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _username() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _keygen(path: str, key_type: str) -> None:
    bits = {"ed25519": [], "rsa": ["-b", "2048"], "ecdsa": ["-b", "256"]}
    if key_type not in bits:
        raise ValueError(f"unsupported host key type {key_type!r}")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, *bits[key_type], "-N", "", "-C", "", "-f", path],
        check=True,
        stdin=subprocess.DEVNULL,
    )


class NetconfdDevice:
    """A call-home device made of OpenSSH ``sshd -i`` + netconfd.

    Every ``call_home()`` starts a fresh sshd for one TCP connection, like
    inetd would; all of them share this device's host key, authorised keys,
    config and log, and the process-wide netconfd.
    """

    host_key_public: str
    host_key_fingerprint: str
    username: str

    def __init__(
        self,
        workdir: str,
        authorized_keys: list[str],
        host_key_type: str = "ed25519",
        input_delay: float = 0.0,
        sshd_options: list[str] | None = None,
    ) -> None:
        """Generate the host key in ``workdir`` (created if missing).

        ``authorized_keys`` are OpenSSH public key lines allowed to log in;
        the list is rewritten to disk on every call_home(), so tests may
        change it between calls.

        ``input_delay`` (seconds) makes a slow reader: netconfd's hello goes
        out at once, but what the manager sends is held back that long and
        then passed on in one write (through ``cat``), so netconfd reads
        the manager's hello together with whatever followed it by then.

        ``sshd_options`` are sshd_config lines written before the defaults
        (sshd keeps a keyword's first value), e.g. ``Ciphers aes128-ctr``.
        """
        if input_delay < 0:
            raise ValueError("input_delay must not be negative")
        self.input_delay = input_delay
        self.sshd_options = list(sshd_options or [])
        # sshd_config quoting and AuthorizedKeysFile %-expansion.
        if any(c in workdir for c in '"%\n'):
            raise ValueError(f"unsupported character in workdir {workdir!r}")
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.authorized_keys = list(authorized_keys)
        self.username = _username()
        self._hostkey = os.path.join(self.workdir, f"ssh_host_{host_key_type}_key")
        _keygen(self._hostkey, host_key_type)
        with open(self._hostkey + ".pub") as f:
            self.host_key_public = f.read().strip()
        out = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", self._hostkey + ".pub"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.host_key_fingerprint = out.split()[1]
        self._config = os.path.join(self.workdir, "sshd_config")
        self._authkeys = os.path.join(self.workdir, "authorized_keys")
        self._log = os.path.join(self.workdir, "sshd.log")
        self._procs: list[subprocess.Popen[bytes]] = []
        _devices.add(self)

    def start(self) -> None:
        """Ensure the shared netconfd runs and write this device's configs."""
        _ensure_netconfd()
        # Privilege separation directory; sshd refuses to start without it.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self._write_authorized_keys()
        with open(self._config, "w") as f:
            f.writelines(line + "\n" for line in self.sshd_options)
            f.write(
                f'HostKey "{self._hostkey}"\n'
                f'AuthorizedKeysFile "{self._authkeys}"\n'
                "PermitRootLogin prohibit-password\n"
                "PubkeyAuthentication yes\n"
                # root has no usable password on a test box; keep auth
                # failures deterministic (publickey only).
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                # The key files live in a test temp dir of any mode.
                "StrictModes no\n"
                "PidFile none\n"
                # VERBOSE logs the fingerprint of each accepted/offered key.
                "LogLevel VERBOSE\n"
                f"Subsystem netconf {_wrapper_path()}\n"
            )
            if self.input_delay:
                f.write(f"SetEnv {INPUT_DELAY_ENV}={self.input_delay:g}\n")

    def _write_authorized_keys(self) -> None:
        with open(self._authkeys, "w") as f:
            f.writelines(k.strip() + "\n" for k in self.authorized_keys)

    def call_home(self, port: int, host: str = "127.0.0.1") -> subprocess.Popen[bytes]:
        """Connect to the manager at host:port and run ``sshd -i`` on it.

        Returns at once (the connect is asynchronous); the Popen ends when
        the SSH connection does.  If nobody listens, it exits with status 1
        and socat's reason is appended to ``<workdir>/socat.log``.
        """
        # Cheap and idempotent; it also rewrites sshd_config in case the
        # shared netconfd was restarted (new socket dir) since the last call,
        # and the authorized keys in case the test changed them.
        self.start()
        target = f"TCP6:[{host}]:{port}" if ":" in host else f"TCP4:{host}:{port}"
        errlog = open(os.path.join(self.workdir, "socat.log"), "ab")
        # nofork: socat execs sshd in place, so sshd's stdin/stdout is the
        # TCP socket itself and it sees real addresses (SSH_CONNECTION).
        # Relative paths + cwd keep socat's address syntax (which splits
        # on ',' ':' and spaces) away from the workdir path.
        proc = subprocess.Popen(
            ["socat", target, "EXEC:/usr/sbin/sshd -i -f sshd_config -E sshd.log,nofork"],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errlog,
            # Own process group, so stop() reaches sshd's privsep child too.
            start_new_session=True,
        )
        errlog.close()
        self._procs.append(proc)
        return proc

    def stop(self) -> None:
        """Kill the call-home processes this device spawned (not netconfd)."""
        for proc in self._procs:
            signal_group(proc, signal.SIGTERM)
        for proc in self._procs:
            reap_group(proc, 5)
        self._procs.clear()

    def sshd_log(self) -> str:
        """Return the sshd ``-E`` log of all this device's connections."""
        try:
            with open(self._log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def signal_group(proc: "subprocess.Popen[bytes]", sig: int) -> None:
    """Send C{sig} to a running process's group (started with start_new_session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def reap_group(proc: "subprocess.Popen[bytes]", timeout: float) -> int:
    """Wait for a process, killing its group if it outlives C{timeout}; its exit status."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        return proc.wait()


def _at_exit() -> None:
    for device in list(_devices):
        device.stop()
    stop_netconfd()


atexit.register(_at_exit)
