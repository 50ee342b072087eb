"""The YANG modules a simulated device ships and serves with ``get-schema``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from callhome.simulator.xmltree import _KNOWN_PREFIXES

YANG_DIRECTORY = Path(__file__).with_name("yang")


@dataclass(frozen=True)
class YangModule:
    """A YANG module the device ships (and serves with ``get-schema``)."""

    name: str
    revision: str
    namespace: str
    prefix: str
    text: str

    @property
    def capability(self) -> str:
        """The module's capability URI for the hello (RFC 6020 §5.6.4)."""
        return f"{self.namespace}?module={self.name}&revision={self.revision}"


def load_module(path: str | Path) -> YangModule:
    """Read a ``.yang`` file's name, namespace, prefix and newest revision."""
    text = Path(path).read_text(encoding="utf-8")
    name = re.search(r"^\s*module\s+([\w.-]+)\s*\{", text, re.M)
    namespace = re.search(r"\bnamespace\s+\"([^\"]+)\"\s*;", text)
    if name is None or namespace is None:
        raise ValueError(f"{path}: not a YANG module (no module name or namespace)")
    prefix = re.compile(r"\bprefix\s+\"?([\w.-]+)\"?\s*;").search(text, namespace.end())
    revisions = re.findall(r"\brevision\s+\"?(\d{4}-\d{2}-\d{2})\"?\s*[;{]", text)
    if prefix is None or not revisions:
        raise ValueError(f"{path}: YANG module without a prefix or a revision")
    _KNOWN_PREFIXES.setdefault(namespace.group(1), prefix.group(1))
    return YangModule(name.group(1), max(revisions), namespace.group(1), prefix.group(1), text)


def load_modules(directory: str | Path = YANG_DIRECTORY) -> list[YangModule]:
    """Every ``*.yang`` module in a directory, by name."""
    return sorted((load_module(p) for p in Path(directory).glob("*.yang")), key=lambda m: m.name)
