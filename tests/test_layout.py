"""
The layout's two rules, checked on every run: small modules, and imports
that only go one way (no circle, counting imports made for type checking).
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "callhome"
MAX_LINES = 500


def modules() -> dict[str, Path]:
    """Every module of callhome/ outside the simulator, by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if "simulator" in parts:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The callhome modules a module imports, at any depth (functions, TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    # "from callhome.x import y" is an edge to callhome.x.y if that is a module, else to callhome.x.
    return {name for name in names if name in known}


class LayoutTests(SynchronousTestCase):
    """What docs/DESIGN.md promises of the module map."""

    def test_no_module_over_500_lines(self):
        """One job per module: none grows past 500 lines."""
        big = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
        self.assertEqual(big, {})

    def test_no_import_circle(self):
        """Imports go one way: a circle would tie two stages of a call into one."""
        found = modules()
        graph = {name: imports(path, set(found)) - {name} for name, path in found.items()}
        # A package's __init__ may name its own submodules; only real back edges count.
        for name in graph:
            graph[name] = {t for t in graph[name] if not (name and t.startswith(name + ".") and found[name].name == "__init__.py")}
        circles: list[list[str]] = []
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(node: str) -> None:
            state[node] = 1
            stack.append(node)
            for target in sorted(graph[node]):
                if state.get(target) == 1:
                    circles.append(stack[stack.index(target):] + [target])
                elif target not in state:
                    visit(target)
            stack.pop()
            state[node] = 2

        for node in sorted(graph):
            if node not in state:
                visit(node)
        self.assertEqual(circles, [])
