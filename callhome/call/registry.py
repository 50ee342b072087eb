"""
The device registry: who a host key belongs to, and what each device is doing.

Devices come from the config and from enrollment (quarantined devices an
operator approved with ``callhome approve``).  For each device it keeps its
status (``connecting``, ``authenticating``, ``connected``, ``failed-auth``,
``failed-not-allowed``, ``disconnected``), when and from where it was last
seen, how many calls it made and its last error.  Unknown host keys seen
under ``unknown_devices: quarantine`` are kept as pending devices.

State lives in the store (SQLite, L{callhome.storage.store}): status, quarantine
and enrollments are read once at start-up and written back, batched, by the
housekeeping tick.  An approval comes through the API
(L{Registry.approve}) and applies at once.  ``enrolled.json`` in
``state_dir`` is still honoured, for ``callhome approve --offline`` and
deployments from before the store; ``status.json`` and ``quarantine.json``
from those deployments are imported into an empty database once.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from twisted.internet.interfaces import IReactorTime

from callhome.logs import LevelLogger
from callhome import fingerprints
from callhome.config import DEVICE_NAME, Config, Device

if TYPE_CHECKING:  # pragma: no cover
    from callhome.storage.store import Snapshot, Store

STATUSES = ("connecting", "authenticating", "connected", "failed-auth", "failed-not-allowed", "disconnected", "overdue", "supervision-failed")

#: quarantined keys kept at most.
MAX_PENDING = 10_000

STATUS_FILE = "status.json"
QUARANTINE_FILE = "quarantine.json"
ENROLLED_FILE = "enrolled.json"


@dataclass
class DeviceStatus:
    """What we know about one device's calls."""

    name: str
    status: str = "disconnected"
    last_seen: float | None = None
    last_source: str | None = None
    calls: int = 0
    last_error: str | None = None
    fingerprint: str | None = None


@dataclass
class PendingDevice:
    """An unknown host key held in quarantine until an operator approves it."""

    fingerprint: str
    key_type: str
    first_seen: float
    last_seen: float
    last_source: str
    times_seen: int = 1
    #: an unknown certificate: its subject, issuer and validity (ISO 8601), as JSON text.
    certificate: str | None = None


@dataclass
class Enrollment:
    """An approved device: a host key, a name, and the group it takes settings from."""

    fingerprint: str
    name: str
    group: str | None = None
    approved_at: float = 0.0


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def read_json(path: Path, default: Any) -> Any:
    """Read a JSON state file; a missing file gives C{default}."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


class EnrollmentError(ValueError):
    """An approval cannot be applied (name taken, unknown group, bad key)."""


def check_enrollment(config: Config, enrollment: Enrollment, taken: dict[str, str]) -> Device:
    """
    Turn an enrollment into a device, or say why it cannot be one.

    @param taken: fingerprint -> device name of every device already known.
    """
    fp = fingerprints.normalise_any(enrollment.fingerprint)
    if not DEVICE_NAME.match(enrollment.name):
        raise EnrollmentError(f"{enrollment.name!r} is not a valid device name (letters, digits, . _ -)")
    if fp in taken:
        raise EnrollmentError(f"host key {fp} already belongs to device {taken[fp]!r}")
    if enrollment.name in taken.values():
        raise EnrollmentError(f"a device named {enrollment.name!r} already exists")
    if enrollment.group is not None:
        if enrollment.group not in config.groups:
            raise EnrollmentError(f"no group named {enrollment.group!r}")
        profile = config.groups[enrollment.group]
        if profile is None:
            raise EnrollmentError(f"group {enrollment.group!r} (with defaults) has no complete credentials and chain")
    else:
        profile = config.default_profile
        if profile is None:
            raise EnrollmentError("defaults have no complete credentials and chain: approve into a --group")
    if fingerprints.is_certificate(fp):  # a TLS device, known by its certificate
        if profile.tls is None:
            raise EnrollmentError("a certificate needs a TLS identity (tls_certificate, tls_private_key) in its group or defaults")
        return Device.from_profile(enrollment.name, frozenset(), profile, enrollment.group, certificates=frozenset([fp]))
    return Device.from_profile(enrollment.name, frozenset([fp]), profile, enrollment.group)


def _records(kind: Any, raws: list[dict[str, Any]]) -> Iterator[Any]:
    """The entries of C{raws} that make a C{kind} (a stored or reported row); others are skipped."""
    for raw in raws:
        try:
            yield kind(**raw)
        except TypeError:
            continue


class Registry:
    """
    Devices by host-key fingerprint, with status, quarantine and enrollment.

    @ivar status: device name -> L{DeviceStatus}.
    @ivar pending: fingerprint -> L{PendingDevice} (quarantine).
    @ivar enrollments: fingerprint -> L{Enrollment}, every approval applied.
    @ivar store: where state is written; None keeps it in memory only.
    """

    log = LevelLogger(namespace="callhome.call.registry")

    def __init__(
        self,
        config: Config,
        clock: IReactorTime,
        state_dir: Path | None = None,
        store: "Store | None" = None,
        snapshot: "Snapshot | None" = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.state_dir = Path(state_dir if state_dir is not None else config.state_dir)
        self.store = store
        self._by_fingerprint = config.device_by_fingerprint()
        self.status: dict[str, DeviceStatus] = {}
        self.pending: dict[str, PendingDevice] = {}
        self.enrollments: dict[str, Enrollment] = {}
        self._enrolled_mtime: float | None = None
        self._dirty_status: set[str] = set()
        self._dirty_pending: set[str] = set()
        if snapshot is not None:
            self._load(snapshot)
        self.check_enrollments()

    # --- identification ---------------------------------------------------------

    def identify(self, fingerprint: str) -> Device | None:
        """Return the device whose host key has this fingerprint."""
        return self._by_fingerprint.get(fingerprint)

    def devices(self) -> list[Device]:
        """Every device we accept: configured and enrolled."""
        seen: dict[str, Device] = {}
        for device in self._by_fingerprint.values():
            seen.setdefault(device.name, device)
        return list(seen.values())

    def device(self, name: str) -> Device | None:
        """The device with this name, configured or enrolled."""
        for device in self._by_fingerprint.values():
            if device.name == name:
                return device
        return None

    def quarantine(self, fingerprint: str, key_type: str, source: str, certificate: dict[str, Any] | None = None) -> PendingDevice:
        """
        Record an unknown host key (or certificate) for an operator to approve.

        @param certificate: an unknown certificate's subject, issuer and validity.
        """
        now = self.clock.seconds()
        pending = self.pending.get(fingerprint)
        if pending is None:
            if len(self.pending) >= MAX_PENDING:
                # Forget the longest-unseen entry: quarantine cannot grow without bound.
                oldest = min(self.pending.values(), key=lambda p: p.last_seen).fingerprint
                del self.pending[oldest]
                self._dirty_pending.add(oldest)
            pending = self.pending[fingerprint] = PendingDevice(
                fingerprint, key_type, now, now, source,
                certificate=json.dumps(certificate, sort_keys=True) if certificate else None,
            )
            self.log.warn(
                "quarantined unknown device {fingerprint} ({key_type}) from {source}; "
                "approve with: callhome approve {fingerprint} NAME",
                fingerprint=fingerprint, key_type=key_type, source=source,
            )
            if self.store is not None:
                what = "certificate" if certificate else "host key"
                self.store.add_event("quarantine", f"unknown {what} {fingerprint} ({key_type}) from {source} quarantined",
                                     data={"fingerprint": fingerprint, "key_type": key_type, "source": source,
                                           **({"certificate": certificate} if certificate else {})})
        else:
            pending.last_seen, pending.last_source = now, source
            pending.times_seen += 1
        self._dirty_pending.add(fingerprint)
        return pending

    # --- status ----------------------------------------------------------------------

    def transition(self, device: Device, status: str, source: str | None = None, error: str | None = None, fingerprint: str | None = None) -> None:
        """Record a device's new status (and, on a new call, where from)."""
        assert status in STATUSES, status
        entry = self.status.get(device.name)
        if entry is None:
            entry = self.status[device.name] = DeviceStatus(device.name)
        entry.status = status
        if status == "connecting":
            entry.calls += 1
            entry.last_seen = self.clock.seconds()
            entry.last_source = source
            entry.fingerprint = fingerprint
        if error is not None:
            entry.last_error = error
        self._dirty_status.add(device.name)

    # --- enrollment ---------------------------------------------------------------

    def approve(self, fingerprint: str, name: str, group: str | None = None) -> Device:
        """
        Enroll a host key as a new device now (the API's approval).

        @raises EnrollmentError: if the name is taken or invalid, the group
            unknown, or the key already belongs to a device.
        @raises fingerprints.FingerprintError: if C{fingerprint} is malformed.
        """
        fp = fingerprints.normalise_any(fingerprint)
        enrollment = Enrollment(fp, name, group, self.clock.seconds())
        device = self._enroll(enrollment)
        if self.store is not None:
            self.store.put_enrollment(fp, name, group, enrollment.approved_at)
            self.store.add_event("enrolled", f"device {name} enrolled ({fp})", device=name,
                                 data={"fingerprint": fp, "group": group})
        return device

    def _enroll(self, enrollment: Enrollment) -> Device:
        taken = {f: d.name for f, d in self._by_fingerprint.items()}
        device = check_enrollment(self.config, enrollment, taken)
        fp = next(iter(device.identities))
        self._by_fingerprint[fp] = device
        self.enrollments[fp] = enrollment
        if self.pending.pop(fp, None) is not None:
            self._dirty_pending.add(fp)
        self.log.info("enrolled device {name} ({fingerprint})", name=device.name, fingerprint=fp)
        return device

    def check_enrollments(self) -> None:
        """Apply approvals written to enrolled.json since the last look."""
        path = self.state_dir / ENROLLED_FILE
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._enrolled_mtime:
            return
        try:
            entries = read_json(path, [])
        except ValueError as e:  # JSON syntax: keep the old state, retry on change
            self._enrolled_mtime = mtime
            self.log.error("cannot read {file}: {error}", file=str(path), error=e)
            return
        self._enrolled_mtime = mtime
        if not isinstance(entries, list):
            self.log.error("{file} must hold a list of enrollments", file=str(path))
            return
        self._apply_enrollments(entries, ENROLLED_FILE, persist=True)

    def apply_enrollments(self, entries: list[dict[str, Any]], where: str) -> None:
        """Approvals another process or instance made and stored: into memory."""
        self._apply_enrollments(entries, where, persist=False)

    def _apply_enrollments(self, entries: list[dict[str, Any]], where: str, persist: bool) -> None:
        for raw in entries:
            try:
                enrollment = Enrollment(**raw)
                if not isinstance(enrollment.name, str) or not isinstance(enrollment.fingerprint, str) or not isinstance(enrollment.group, (str, type(None))):
                    raise TypeError("fingerprint, name and group must be text")
                enrollment.fingerprint = fingerprints.normalise_any(enrollment.fingerprint)
            except (TypeError, fingerprints.FingerprintError) as e:
                self.log.error("ignoring a bad entry in {file}: {error}", file=where, error=e)
                continue
            if enrollment.fingerprint in self._by_fingerprint:
                continue  # already applied (or configured)
            try:
                self._enroll(enrollment)
            except EnrollmentError as e:
                self.log.error("cannot enroll {fingerprint} as {name}: {error}", fingerprint=enrollment.fingerprint, name=enrollment.name, error=e)
                continue
            if persist and self.store is not None:
                self.store.put_enrollment(enrollment.fingerprint, enrollment.name, enrollment.group, enrollment.approved_at or self.clock.seconds())

    # --- reload ----------------------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """
        Take a new config: its devices replace the configured ones; enrolled
        devices are rebuilt with the new groups and defaults (one that now
        clashes with a configured device is logged and left out).
        """
        self.config = config
        self._by_fingerprint = config.device_by_fingerprint()
        for enrollment in list(self.enrollments.values()):
            if enrollment.fingerprint in self._by_fingerprint:
                continue  # configured now: the config wins
            try:
                self._enroll(enrollment)
            except EnrollmentError as e:
                self.log.error("enrolled device {name} left out after reload: {error}", name=enrollment.name, error=e)

    # --- persistence ----------------------------------------------------------------

    def _load(self, snapshot: "Snapshot") -> None:
        devices, quarantined = snapshot.devices, snapshot.quarantine
        if not devices and not quarantined:
            devices, quarantined = self._legacy_state()
        for status in _records(DeviceStatus, devices):
            if status.status not in ("failed-auth", "failed-not-allowed", "overdue"):
                # Nothing is connected to a service that has just started.
                status.status = "disconnected"
            self.status[status.name] = status
        for pending in _records(PendingDevice, quarantined):
            self.pending[pending.fingerprint] = pending
        self._apply_enrollments(snapshot.enrollments, "the database", persist=False)

    def _legacy_state(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """status.json and quarantine.json from before the store, imported once."""
        try:
            devices = list(read_json(self.state_dir / STATUS_FILE, {}).values())
            quarantined = list(read_json(self.state_dir / QUARANTINE_FILE, {}).values())
        except (ValueError, AttributeError) as e:
            self.log.error("cannot import old state from {dir}: {error}", dir=str(self.state_dir), error=e)
            return [], []
        if devices or quarantined:
            self.log.info(
                "importing {devices} device statuses and {pending} quarantined keys from {dir} into the database",
                devices=len(devices), pending=len(quarantined), dir=str(self.state_dir),
            )
            self._dirty_status.update(str(d.get("name")) for d in devices if isinstance(d, dict))
            self._dirty_pending.update(str(q.get("fingerprint")) for q in quarantined if isinstance(q, dict))
        return devices, quarantined

    def changes(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        """
        What changed since the last save, as plain values: device statuses,
        quarantined keys, and fingerprints no longer quarantined (a worker
        process sends these to the main one before it saves).
        """
        statuses = [dict(vars(self.status[n])) for n in self._dirty_status if n in self.status]
        pending = [dict(vars(self.pending[f])) for f in self._dirty_pending if f in self.pending]
        dropped = [f for f in self._dirty_pending if f not in self.pending]
        return statuses, pending, dropped

    def mirror(self, statuses: list[dict[str, Any]], pending: list[dict[str, Any]], dropped: list[str]) -> None:
        """
        Take another process's changes (see L{changes}) into memory: that
        process writes them to the store itself, so nothing is marked to save.
        """
        for status in _records(DeviceStatus, statuses):
            self.status[status.name] = status
        for entry in _records(PendingDevice, pending):
            if entry.fingerprint not in self._by_fingerprint:
                self.pending[entry.fingerprint] = entry
        for fp in dropped:
            self.pending.pop(fp, None)

    def mirror_statuses(self, rows: list[dict[str, Any]], skip: Any = ()) -> int:
        """
        Other instances' device statuses (rows of the store) into memory,
        except those changed here and not yet saved, and those in C{skip}
        (this instance's sessions: it knows them best); how many were taken.
        """
        taken = 0
        known = {device.name for device in self._by_fingerprint.values()}
        for status in _records(DeviceStatus, rows):
            if status.name in self._dirty_status or status.name in skip or status.name not in known:
                continue
            self.status[status.name] = status
            taken += 1
        return taken

    def enroll(self, fingerprint: str, name: str, group: str | None, approved_at: float) -> Device:
        """Apply an approval another process made (and stored) to this one's memory."""
        return self._enroll(Enrollment(fingerprint, name, group, approved_at))

    def save(self) -> None:
        """Queue what changed since the last save for the store."""
        if self.store is None:
            self._dirty_status.clear()
            self._dirty_pending.clear()
            return
        for name in self._dirty_status:
            if name in self.status:
                self.store.put_device(dict(vars(self.status[name])))
        for fp in self._dirty_pending:
            pending = self.pending.get(fp)
            if pending is None:
                self.store.drop_quarantined(fp)
            else:
                self.store.put_quarantined(dict(vars(pending)))
        self._dirty_status.clear()
        self._dirty_pending.clear()

    def tick(self) -> None:
        """Periodic work: pick up approvals, write what changed."""
        try:
            self.check_enrollments()
            self.save()
        except Exception:  # housekeeping must go on whatever one file holds
            self.log.failure("cannot update state in {dir}", dir=str(self.state_dir))
