"""
Action plugins: discovery and references.

Two ways to bring your own action:

* **Plugin modules.** Put a module in a directory ``callhome/actions/``
  (no ``__init__.py``) under any directory on ``sys.path`` (the config's
  ``plugin_paths`` adds some).  Any object in it that provides
  ``twisted.plugin.IPlugin`` and :class:`~callhome.actions.IActionFactory`
  becomes an action by its ``name``.  :class:`ActionPlugin` makes one from
  an action class in one line.
* **References.** A step may name ``package.module:callable``.  A class is
  built with the step's parameters once; a function is called as
  ``function(context, **parameters)`` on every run; an ``IActionFactory``
  provider is asked to ``build(**parameters)``.

Either way the action's result goes through :func:`check_result`, its
failures and time-outs fail only its own step.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Callable

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from callhome.logs import LevelLogger
from callhome.actions import ActionConfigError, ActionContext, IActionFactory, check_parameters

log = LevelLogger(namespace="callhome.actions.plugins")


@implementer(IPlugin, IActionFactory)
class ActionPlugin:
    """
    A plugin made from an action class: ``backup = ActionPlugin("backup", Backup)``.

    The class is built with the step's parameters, its instances are called
    with the context.
    """

    def __init__(self, name: str, action_class: Callable[..., Any]) -> None:
        self.name = name
        self.action_class = action_class

    def build(self, **params: Any) -> Any:
        """Build the action from a step's parameters."""
        check_parameters(self.action_class, params)
        action = self.action_class(**params)
        if not getattr(action, "name", None):
            action.name = self.name
        return action


class FunctionAction:
    """A plain function as an action: called as ``function(context, **params)``."""

    def __init__(self, name: str, function: Callable[..., Any], params: dict[str, Any]) -> None:
        self.name = name
        self.function = function
        self.params = params

    def __call__(self, context: ActionContext) -> Any:
        """Call the function for this session."""
        return self.function(context, **self.params)


_discovered: dict[str, Any] | None = None


def discovered(refresh: bool = False) -> dict[str, Any]:
    """Action plugins on the plugin path, by name (found once, then cached)."""
    global _discovered
    if _discovered is None or refresh:
        import callhome.actions as package

        found: dict[str, Any] = {}
        for plugin in getPlugins(IActionFactory, package):
            name = getattr(plugin, "name", None)
            if not isinstance(name, str) or not name:
                log.error("ignoring action plugin {plugin!r}: it has no name", plugin=plugin)
                continue
            if name in found:
                log.warn("two action plugins are named {name}; using the first", name=name)
                continue
            found[name] = plugin
        _discovered = found
    return _discovered


def add_plugin_paths(paths: list[Path]) -> None:
    """Put directories on the plugin path (sys.path and the package's __path__)."""
    import sys

    import callhome.actions as package

    for path in paths:
        text = str(path.resolve())
        if text not in sys.path:
            sys.path.append(text)
        candidate = str((path / "callhome" / "actions").resolve())
        if Path(candidate).is_dir() and candidate not in package.__path__:
            package.__path__.append(candidate)
    discovered(refresh=True)


def build_from_plugin(plugin: Any, params: dict[str, Any]) -> Any:
    """Build a discovered plugin's action."""
    try:
        return plugin.build(**params)
    except ActionConfigError:
        raise
    except TypeError as e:
        raise ActionConfigError(f"plugin {plugin.name} refused its parameters: {e}") from None


def build_from_reference(reference: str, params: dict[str, Any]) -> Any:
    """Build the action a ``package.module:callable`` reference names."""
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an import runs arbitrary code; report any failure
        raise ActionConfigError(f"cannot import {module_name}: {type(e).__name__}: {e}") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ActionConfigError(f"{module_name} has no {attribute}")
    if IActionFactory.providedBy(target):
        return build_from_plugin(target, params)
    if inspect.isclass(target):
        check_parameters(target, params)
        # A plugin class of any type; its instance gets a name.
        action: Any = target(**params)
        if not getattr(action, "name", None):
            action.name = reference
        return action
    if callable(target):
        check_parameters(target, params, skip=1)
        return FunctionAction(reference, target, params)
    raise ActionConfigError(f"{reference} is not callable")


# What a step may return: plain data, paths, replies.
_SCALARS = (type(None), bool, int, float, str, bytes, Path)


def check_result(result: Any, depth: int = 0) -> None:
    """
    Refuse a result that is not plain data (or a reply/saved result): a
    plugin that returns something odd fails its step instead of confusing
    the next one or the record.
    """
    from callhome.actions.builtin import Saved
    from callhome.netconf.session import RPCReply

    if isinstance(result, _SCALARS + (Saved, RPCReply)):
        return
    if isinstance(result, (list, tuple)) and depth < 3:
        for item in result:
            check_result(item, depth + 1)
        return
    if isinstance(result, dict) and depth < 3:
        for key, value in result.items():
            if not isinstance(key, str):
                raise TypeError(f"returned a dict with a non-text key {key!r}")
            check_result(value, depth + 1)
        return
    raise TypeError(f"returned an unsupported result of type {type(result).__name__}")
