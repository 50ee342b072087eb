"""
A value of the config's YAML document with the key path that led to it:
every check on it raises a L{ConfigError} naming that path.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterator, Mapping

from callhome.config.model import ConfigError


class Node:
    """A value of the YAML document with the key path that led to it."""

    def __init__(self, value: Any, path: str) -> None:
        self.value = value
        self.path = path

    def error(self, problem: str) -> ConfigError:
        return ConfigError(self.path, problem)

    def child_path(self, key: str | int) -> str:
        """The key path of a child: C{a.b}, C{a[0]}, or C{a['']} for a key that would not show."""
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        if not key.strip():
            return f"{self.path}[{key!r}]"
        return f"{self.path}.{key}" if self.path else key

    def mapping(self, allowed: tuple[str, ...]) -> dict[str, "Node"]:
        """Check this is a mapping with only C{allowed} keys; return its children."""
        if self.value is None:
            return {}
        if not isinstance(self.value, Mapping):
            raise self.error(f"must be a mapping, got {kind(self.value)}")
        children = {}
        for key, value in self.value.items():
            if not isinstance(key, str):
                raise self.error(f"key {key!r} must be text")
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(self.child_path(key), f"unknown key{suggestion}")
            children[key] = Node(value, self.child_path(key))
        return children

    def items(self) -> Iterator["Node"]:
        """Check this is a list; yield its entries."""
        if self.value is None:
            return
        if not isinstance(self.value, list):
            raise self.error(f"must be a list, got {kind(self.value)}")
        for index, value in enumerate(self.value):
            yield Node(value, self.child_path(index))

    def text(self) -> str:
        if not isinstance(self.value, str) or not self.value.strip():
            raise self.error(f"must be non-empty text, got {kind(self.value)}")
        return self.value

    def number(self, minimum: float = 0.0) -> float:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise self.error(f"must be a number, got {kind(self.value)}")
        if self.value <= minimum:
            raise self.error(f"must be greater than {minimum:g}")
        return float(self.value)

    def integer(self, minimum: int = 1) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self.error(f"must be a whole number, got {kind(self.value)}")
        if self.value < minimum:
            raise self.error(f"must be at least {minimum}")
        return self.value

    def flag(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error(f"must be true or false, got {kind(self.value)}")
        return self.value


def kind(value: Any) -> str:
    """How an error names the kind of a YAML value."""
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
