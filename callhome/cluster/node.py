"""
One instance of a cluster: its claims on devices' sessions, its
heartbeat, and what it learns from the others through the shared
PostgreSQL database.

* **Claims** (the manager's L{callhome.call.manager.Cluster}): a device's
  session is a row of the ``sessions`` table, with a lease its instance
  renews every C{lease / 3} seconds.  The call goes on while its claim is
  written (as a worker's claim does).  Under ``reject`` the claim is its
  own transaction, and a refusal (the device held by a live instance)
  ends the call a moment after login.  Under ``replace`` it always takes
  the row, so it simply goes with the store's next batch of writes; the
  old holder sees at its next heartbeat that the row is no longer its own
  and closes its session.
* **Expiry**: a claim not renewed for C{lease} seconds (its instance was
  killed, its machine is gone) is deleted by whichever instance sees it
  first, which records the device as disconnected with the reason.
* **While the database is unreachable** a claim that cannot be written is
  kept and written again at each heartbeat; the call is served meanwhile
  (one instance never holds two sessions of a device, but two instances
  may, until the database answers and the duplicate policy applies).
* **The others' state**: every second, the sessions other instances hold
  (for the API's forwarding), approvals and quarantined keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from callhome.call.record import Outcome
from callhome.cluster import membership
from callhome.cluster.membership import NOW
from callhome.control.operations import iso
from callhome.logs import LevelLogger
from callhome.storage.store import DEVICE_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    from callhome.call.connection import CallConnection
    from callhome.call.manager import Manager
    from callhome.storage.store import Store

#: seconds between two reads of what the other instances hold.
REFRESH_INTERVAL = 1.0
#: seconds of device-status changes read again each time (late commits; the
#: times are the database's clock, so no skew between machines).
DEVICES_OVERLAP = 2.0


class ClusterNode(Service):
    """
    This instance's part in the cluster (a service of the callhome service).

    @ivar elsewhere: device -> the claim row of another instance (refreshed
        every second): where the API forwards an RPC or a disconnect.
    @ivar unwritten: claims not yet in the database (it did not answer).
    """

    log = LevelLogger(namespace="callhome.cluster")

    def __init__(self, store: "Store", manager: "Manager", instance: str, lease: float, clock: IReactorTime) -> None:
        self.store = store
        self.manager = manager
        self.instance = instance
        self.lease = lease
        self.clock = clock
        self.elsewhere: dict[str, dict[str, Any]] = {}
        self.advertised: dict[str, str] = {}
        self.unwritten: dict[str, "CallConnection"] = {}
        self._devices_since = 0.0
        #: claims that failed since the database last answered one.
        self.unwritable = 0
        #: this instance watches the expected calls of the whole cluster
        #: (one instance does, or every overdue event would come N times).
        self.leads = False
        self._loops: list[task.LoopingCall] = []

    # --- the service ---------------------------------------------------------------------------

    def startService(self) -> None:
        """Heartbeat every lease/3 seconds; refresh what the others hold every second."""
        super().startService()
        for interval, work in ((self.lease / 3, self.beat), (REFRESH_INTERVAL, self.refresh)):
            loop = task.LoopingCall(self._quietly, work)
            loop.clock = self.clock
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stopService(self) -> defer.Deferred[Any]:
        """Leave the cluster: claims deleted, the name free at once."""
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        d = self.store.interaction(membership.leave, self.store.database, self.instance)
        return d.addErrback(lambda f: self.log.warn("cannot record leaving the cluster: {error}", error=f.getErrorMessage()))

    def _quietly(self, work: Any) -> defer.Deferred[Any]:
        # A database that does not answer is logged by the store; the loop goes on.
        return defer.maybeDeferred(work).addErrback(lambda f: self.log.debug("cluster upkeep failed: {error}", error=f.getErrorMessage()))

    # --- claims (the manager's Cluster) ------------------------------------------------------

    def claim(self, device: str, call: "CallConnection") -> bool:
        """Write the claim; a refusal ends the call when the answer comes."""
        self._write_claim(device, call)
        return True

    def _write_claim(self, device: str, call: "CallConnection") -> None:
        record = call.call
        assert record is not None
        reject = self.manager.config.duplicate_sessions == "reject"
        if not reject:
            # replace: the claim always takes the row, so nothing waits for an
            # answer; it goes with the store's next batch (no transaction of
            # its own), before any later heartbeat or release of it.
            self.store.execute_later(claim_statement(reject=False), (device, self.instance, record.id, record.transport, record.peer, self.lease))
            return
        written = self.store.interaction(
            _claim, self.store.database, device, self.instance, record.id, record.transport, record.peer, self.lease, reject,
        )

        def verdict(holder: str | None) -> None:
            self.unwritten.pop(device, None)
            if self.unwritable:
                self.log.warn("sessions are recorded in the cluster database again ({count} claims failed meanwhile)",
                              count=self.unwritable)
                self.unwritable = 0
            if holder is None or self.manager.sessions.get(device) is not call or call.call is None:
                return
            reason = f"device {device} already has a session on instance {holder} (duplicate_sessions: reject)"
            call.call.end(Outcome.DUPLICATE_REFUSED, reason)
            self.manager.disconnect(call, reason)

        def unwritable(failure: Any) -> None:
            if self.manager.sessions.get(device) is call:
                self.unwritten[device] = call
            self.unwritable += 1
            if self.unwritable == 1:  # once per outage, not once per call
                self.log.warn("cannot record sessions in the cluster database ({error}): calls are served, "
                              "claims retried at each heartbeat", error=failure.getErrorMessage().strip())

        written.addCallbacks(verdict, unwritable)

    def release(self, device: str, call_id: str) -> None:
        """The call ended here: its claim goes (queued with the store's writes)."""
        self.unwritten.pop(device, None)
        self.store.execute_later("DELETE FROM sessions WHERE device = ? AND instance = ? AND call = ?",
                                 (device, self.instance, call_id))

    # --- heartbeat ---------------------------------------------------------------------------

    def beat(self) -> defer.Deferred[None]:
        """Renew; close what another instance took over; expire the dead's claims."""
        for device, call in list(self.unwritten.items()):
            if self.manager.sessions.get(device) is call:
                self._write_claim(device, call)
        local = {device: call.call.id for device, call in self.manager.sessions.items()
                 if call.call is not None and device not in self.unwritten}
        renewed = self.store.interaction(membership.heartbeat, self.store.database, self.instance, self.lease, local)
        renewed.addCallback(self._taken_over, local)
        renewed.addCallback(lambda _: self.store.interaction(membership.expire, self.store.database, self.lease))
        renewed.addCallback(self._expired)
        renewed.addCallback(lambda _: self.store.interaction(membership.lead, self.store.database))
        return renewed.addCallback(self._leading)

    def _leading(self, leads: bool) -> None:
        if leads != self.leads:
            self.log.info("instance {instance} {what} the cluster's expected calls", instance=self.instance,
                          what="now watches" if leads else "no longer watches")
        self.leads = leads

    def _taken_over(self, found: tuple[set[tuple[str, str]], dict[str, str]], local: dict[str, str]) -> None:
        held, holders = found
        for device, call_id in local.items():
            call = self.manager.sessions.get(device)
            record = call.call if call is not None else None
            if call is None or record is None or record.id != call_id or (device, call_id) in held:
                continue  # ended meanwhile, or still ours
            if self.clock.seconds() - record.started < self.lease / 3:
                continue  # its claim may still be on its way
            holder = holders.get(device)
            if holder is None:
                # No row at all (its write was lost, or it expired while the
                # database was away): it is ours, say so again.
                self._write_claim(device, call)
                continue
            reason = f"replaced by a new call from the same device on instance {holder}"
            record.end(Outcome.REPLACED, reason)
            self.log.warn("device {device}: {reason}", device=device, reason=reason)
            self.manager.disconnect(call, reason)

    def _expired(self, claims: list[dict[str, Any]]) -> None:
        registry = self.manager.registry
        for claim in claims:
            reason = f"instance {claim['instance']} stopped renewing its claim (lease of {self.lease:g}s expired)"
            self.log.warn("session of {device} on {instance} is gone: {reason}", device=claim["device"],
                          instance=claim["instance"], reason=reason)
            self.manager.event("lease-expired", f"session of {claim['device']} on {claim['instance']} is gone: {reason}",
                               claim["device"], instance=claim["instance"], call=claim["call"])
            device = registry.device(claim["device"])
            if device is not None and claim["device"] not in self.manager.sessions:
                registry.transition(device, "disconnected", error=reason)

    # --- what the others hold and know -------------------------------------------------------

    def refresh(self) -> defer.Deferred[None]:
        """Where the others' sessions are; approvals and quarantine made elsewhere."""
        # Rows changed since the last look, with a margin for clocks and for
        # transactions that commit late.
        d = self.store.interaction(_others, self.store.database, self.instance, self._devices_since - DEVICES_OVERLAP)

        def apply(found: tuple[list[dict[str, Any]], dict[str, str], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]) -> None:
            sessions, advertised, enrollments, quarantine, devices = found
            if devices:
                self._devices_since = max(row.pop("updated") or 0.0 for row in devices)
                self.manager.registry.mirror_statuses(devices, skip=self.manager.sessions)
            self.elsewhere = {row["device"]: row for row in sessions}
            self.advertised = advertised
            registry = self.manager.registry
            registry.apply_enrollments(enrollments, "the cluster database")
            known = {row["fingerprint"] for row in quarantine}
            registry.mirror([], [row for row in quarantine if row["fingerprint"] not in registry.pending],
                            [fp for fp in registry.pending if fp not in known])

        return d.addCallback(apply)

    def sessions_elsewhere(self) -> list[dict[str, Any]]:
        """The other instances' sessions, as /sessions shows them."""
        return [
            {"id": row["call"], "device": row["device"], "peer": row["peer"], "transport": row["transport"],
             "started": iso(row["since"]), "instance": row["instance"]}
            for row in sorted(self.elsewhere.values(), key=lambda r: r["since"])
        ]


def claim_statement(reject: bool) -> str:
    """The claim's upsert: under reject it takes only an expired row (or its own)."""
    condition = f" WHERE sessions.lease_until < {NOW} OR sessions.instance = excluded.instance" if reject else ""
    return (
        "INSERT INTO sessions (device, instance, call, transport, peer, since, lease_until)"
        f" VALUES (?, ?, ?, ?, ?, {NOW}, {NOW} + ?)"
        " ON CONFLICT (device) DO UPDATE SET instance = excluded.instance, call = excluded.call,"
        " transport = excluded.transport, peer = excluded.peer, since = excluded.since,"
        f" lease_until = excluded.lease_until{condition}"
    )


def _claim(cursor: Any, database: Any, device: str, instance: str, call: str, transport: str | None,
           peer: str | None, lease: float, reject: bool) -> str | None:
    """Claim C{device} (database thread); None when claimed, else the live instance holding it."""
    sql = database.sql
    database.lock_writes(cursor)
    cursor.execute(sql(claim_statement(reject) + " RETURNING device"), (device, instance, call, transport, peer, lease))
    if cursor.fetchone() is not None:
        return None
    cursor.execute(sql("SELECT instance FROM sessions WHERE device = ?"), (device,))
    row = cursor.fetchone()
    return str(row[0]) if row is not None else None


def _others(cursor: Any, database: Any, instance: str, devices_since: float) -> tuple[
        list[dict[str, Any]], dict[str, str], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Sessions held by live claims of other instances, their API URLs, enrollments, quarantine, changed statuses."""
    def rows(statement: str, *parameters: Any) -> list[dict[str, Any]]:
        cursor.execute(database.sql(statement), parameters)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    sessions = rows(f"SELECT device, instance, call, transport, peer, since FROM sessions WHERE instance <> ? AND lease_until >= {NOW}", instance)
    advertised = {r["name"]: r["advertise"] for r in rows("SELECT name, advertise FROM instances WHERE stopped IS NULL") if r["advertise"]}
    enrollments = rows('SELECT fingerprint, name, grp AS "group", approved_at FROM enrollments')
    quarantine = rows("SELECT * FROM quarantine")
    devices = rows(f"SELECT {DEVICE_COLUMNS}, updated FROM devices WHERE updated >= ? AND (writer IS NULL OR writer <> ?)"
                   " ORDER BY updated", devices_since, instance)
    return sessions, advertised, enrollments, quarantine, devices
