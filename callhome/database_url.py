"""
``store.database`` values: an SQLite path, or a PostgreSQL URL.  A leaf:
the config reader and the store both need it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def is_database_url(value: str) -> bool:
    """Whether C{store.database} names PostgreSQL rather than an SQLite file."""
    return value.startswith(("postgresql://", "postgres://"))


def url_without_password(url: str) -> str:
    """The URL to show an operator: any password in it replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
