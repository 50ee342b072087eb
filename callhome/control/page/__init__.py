"""
The status page (``GET /``): one HTML file and its script, no build step.
They hold no data: the script reads the JSON API with the operator's token.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

#: what the page may load and run: only itself (no inline script, no other origin).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@lru_cache(maxsize=None)
def asset(name: str) -> bytes:
    """``status.html`` or ``status.js``, read once from the package."""
    return resources.files(__package__).joinpath(name).read_bytes()
