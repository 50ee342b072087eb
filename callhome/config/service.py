"""
The config's sections about running the service rather than calling
devices: ``store``, ``cluster``, ``api`` and ``log``.  A mixin of the
reader (L{callhome.config.reader}), kept apart so each module has one job.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

# _parseServer is private: Twisted has no public way to read an endpoint
# string's arguments without building the endpoint (which binds nothing,
# but needs a reactor); the reader must not touch one.
from twisted.internet.endpoints import _parseServer

from callhome.config.model import (
    ALERT_EVENTS,
    DEFAULT_API_LISTEN,
    AlertTarget,
    DEFAULT_LEASE,
    ApiSettings,
    ClusterSettings,
    ConfigError,
    StoreSettings,
    default_instance_name,
)
from callhome.config.node import Node
from callhome.config.secrets import SecretReader
from callhome.database_url import is_database_url, url_without_password

#: instance names: they go in logs, metrics labels and URLs.
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,63}$")


def is_loopback_endpoint(description: str) -> bool:
    """Whether a server endpoint string listens on loopback (or a UNIX socket) only."""
    kind, args, kwargs = _parseServer(description, None)
    if str(kind).lower() == "unix":
        return True
    interface = kwargs.get("interface", "")
    if not interface:
        return False  # all addresses
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return interface == "localhost"



class ServiceSections:
    """Reads ``store``, ``cluster``, ``api`` and ``log`` (a mixin of the config reader)."""

    secrets: SecretReader
    warn: Callable[[str, str], None]
    endpoint: Callable[[Node], str]

    def store(self, node: Node) -> StoreSettings:
        fields = node.mapping(("database", "retention", "durable", "password", "password_env", "password_file",
                               "payloads", "payloads_max_inline"))
        database, url = StoreSettings.database, None
        if "database" in fields:
            text = fields["database"].text()
            if is_database_url(text):
                url = self.database_url(fields["database"])
            else:
                database = Path(text)
        password = self.secrets.secret(fields, "password")
        if password is not None and url is None:
            given = next(k for k in ("password", "password_env", "password_file") if k in fields)
            raise fields[given].error("a password is for a PostgreSQL store.database (postgresql://...), not an SQLite file")
        days = per_device = None
        if "retention" in fields and fields["retention"].value is not None:
            retention = fields["retention"].mapping(("days", "per_device"))
            if "days" in retention:
                days = retention["days"].number()
            if "per_device" in retention:
                per_device = retention["per_device"].integer()
        durable = fields["durable"].flag() if "durable" in fields else False
        payloads = fields["payloads"].text() if "payloads" in fields else StoreSettings.payloads
        if payloads not in ("files", "database"):
            raise fields["payloads"].error(f"must be files or database, not {payloads!r}")
        max_inline = StoreSettings.payloads_max_inline
        if "payloads_max_inline" in fields:
            max_inline = fields["payloads_max_inline"].integer()
            if max_inline > 64 << 20:
                raise fields["payloads_max_inline"].error("at most 67108864 bytes (64 MiB): larger results belong in files")
        return StoreSettings(database=database, retention_days=days, retention_per_device=per_device, durable=durable,
                             url=url, password=password, payloads=payloads, payloads_max_inline=max_inline)

    def database_url(self, node: Node) -> str:
        """A PostgreSQL URL: host and database named; psycopg needed to use it."""
        url = node.text()
        parts = urlsplit(url)
        if not parts.hostname or not parts.path.strip("/"):
            raise node.error(f"{url_without_password(url)}: name the host and the database (postgresql://user@host:5432/dbname)")
        if parts.password:
            self.warn(node.path, "password written in the URL; prefer store.password_env or store.password_file")
        if importlib.util.find_spec("psycopg") is None:
            raise node.error("a PostgreSQL store needs psycopg: pip install 'callhome[postgresql]'")
        return url

    def cluster(self, node: Node) -> ClusterSettings:
        """``cluster:``: this instance's name, the claim lease, the advertised API URL."""
        fields = node.mapping(("instance", "lease", "advertise"))
        named = "instance" in fields and fields["instance"].value is not None
        instance = fields["instance"].text() if named else default_instance_name()
        if not _INSTANCE_NAME.match(instance):
            raise (fields["instance"].error if named else node.error)(
                f"{instance!r}: an instance name is 1-63 letters, digits, '.', '_' or '-'")
        lease = DEFAULT_LEASE
        if "lease" in fields:
            lease = fields["lease"].number()
            if not 3 <= lease <= 300:
                raise fields["lease"].error("must be between 3 and 300 seconds")
        advertise = None
        if "advertise" in fields and fields["advertise"].value is not None:
            advertise = fields["advertise"].text().rstrip("/")
            if not advertise.startswith(("http://", "https://")) or not urlsplit(advertise).hostname:
                raise fields["advertise"].error(f"{advertise!r}: give the URL other instances reach this API at (http://host:port)")
        return ClusterSettings(instance=instance, lease=lease, advertise=advertise, named=named)

    def api(self, node: Node) -> ApiSettings:
        fields = node.mapping(("listen", "token", "token_env", "token_file"))
        listen: str | None = DEFAULT_API_LISTEN
        if "listen" in fields:
            listen = None if fields["listen"].value in (None, False, "none", "off") else self.endpoint(fields["listen"])
        token = self.secrets.secret(fields, "token")
        if token is not None and not token.strip():
            given = next(k for k in ("token", "token_env", "token_file") if k in fields)
            raise fields[given].error("the API token is empty")
        if listen is not None and token is None and not is_loopback_endpoint(listen):
            raise ConfigError(
                "api.listen",
                f"{listen} is reachable from other hosts: set api.token_file or api.token_env "
                "(a bearer token), or bind to 127.0.0.1",
            )
        return ApiSettings(listen=listen, token=token)

    def log_level(self, node: Node) -> str:
        fields = node.mapping(("format", "level"))
        if "level" not in fields:
            return "info"
        value = fields["level"].text()
        if value not in ("debug", "info", "warn", "error"):
            raise fields["level"].error("must be debug, info, warn or error")
        return value

    def log_format(self, node: Node) -> str:
        fields = node.mapping(("format", "level"))
        if "format" not in fields:
            return "text"
        value = fields["format"].text()
        if value not in ("text", "json"):
            raise fields["format"].error("must be text or json")
        return value

    def alerts(self, node: Node) -> tuple[AlertTarget, ...]:
        """``alerts:``: webhooks, each a URL and the events it wants."""
        if node.value is None:
            return ()
        targets = []
        for entry in node.items():
            fields = entry.mapping(("url", "events", "token", "token_env", "token_file", "timeout"))
            if "url" not in fields:
                raise entry.error("a webhook needs url")
            url = fields["url"].text()
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise fields["url"].error(f"{url!r}: an http:// or https:// URL")
            if "events" not in fields:
                raise entry.error(f"say which events to post: events: [{', '.join(ALERT_EVENTS[:4])}]")
            events = []
            for event in fields["events"].items():
                name = event.text()
                if name not in ALERT_EVENTS:
                    raise event.error(f"{name!r} is not an event (events: {', '.join(ALERT_EVENTS)})")
                events.append(name)
            timeout = fields["timeout"].number() if "timeout" in fields else 10.0
            targets.append(AlertTarget(url, frozenset(events), self.secrets.secret(fields, "token"), timeout))
        return tuple(targets)
