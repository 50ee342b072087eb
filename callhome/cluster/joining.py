"""
How a service opens its store and, on PostgreSQL, joins the cluster: the
few steps the service runs at start, kept here so the service module only
wires.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from callhome.cluster import membership
from callhome.cluster.forwarding import ClusterSessions
from callhome.cluster.node import ClusterNode
from callhome.config import Config
from callhome import logs
from callhome.logs import LevelLogger
from callhome.reactor import IServiceReactor
from callhome.storage.database import Database, PostgresDatabase, SQLiteDatabase
from callhome.storage.store import StoreError, migrate

if TYPE_CHECKING:  # pragma: no cover
    from callhome.call.expectations import Expectations
    from callhome.call.manager import Manager
    from callhome.control.operations import ControlPlane
    from callhome.storage.store import Store

log = LevelLogger(namespace="callhome.cluster")


def database_for(config: Config) -> Database:
    """The database C{store.database} names."""
    if config.store.url is not None:
        return PostgresDatabase(config.store.url, password=config.store.password)
    return SQLiteDatabase(config.store.database, config.store.durable)


def register(database: Database, config: Config) -> str | None:
    """
    On PostgreSQL: bring the schema up to date and register this instance
    (blocking, start-up); its name.  On SQLite: None (no cluster).

    @raises StoreError: the database cannot be used, or the name is taken.
    """
    if not isinstance(database, PostgresDatabase):
        return None
    try:
        connection = database.connect()
        try:
            migrate(connection, log=log, database=database)
        finally:
            connection.close()
        return membership.register(database, config.cluster, config.cluster.advertise, log)
    except database.errors as e:
        raise StoreError(f"cannot open database {database.describe()}: {str(e).strip()}") from None
    except membership.ClusterError as e:
        raise StoreError(str(e)) from None


def join(
    store: "Store", manager: "Manager", control: "ControlPlane", config: Config, reactor: IServiceReactor,
    expectations: "Expectations | None" = None,
) -> ClusterNode:
    """
    This instance's cluster node, wired as the manager's claims and the
    control plane's remote sessions; the expected calls are decided by one
    instance of the cluster at a time.
    """
    assert store.instance is not None
    node = ClusterNode(store, manager, store.instance, config.cluster.lease, reactor)
    manager.cluster = node
    control.remote = ClusterSessions(node, reactor, config.api.token, timeout=config.netconf.rpc_timeout + 10)
    control.instance = store.instance
    control.metrics.set_instance(store.instance)
    if expectations is not None:
        expectations.deciding = lambda: node.leads
    logs.set_instance(store.instance)
    return node


def advertise(store: "Store", address: Any) -> str:
    """
    The API URL others reach this instance at, from the address the API is
    bound to (``cluster.advertise`` unset); recorded in the instances table.
    """
    host = getattr(address, "host", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        import socket

        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{getattr(address, 'port', 8080)}"
    store.execute_later("UPDATE instances SET advertise = ? WHERE name = ?", (url, store.instance))
    return url
