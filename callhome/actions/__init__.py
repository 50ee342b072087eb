"""
Actions: the steps of a device's chain.

An action is built once, when the config loads, from the step's parameters
(so a bad filter or a missing file stops start-up, not a call).  It is then
called once per session with an :class:`ActionContext` and returns a value,
a Deferred or a coroutine.  The chain runner (:mod:`callhome.actions.runner`)
strings the steps of a session together as one Deferred chain.

Actions come from three places, looked up in this order: the built-ins
(:mod:`callhome.actions.builtin`), plugins found by Twisted's plugin system
(any module in a ``callhome/actions/`` directory on ``sys.path`` that holds
an :class:`IActionFactory` provider, see :mod:`callhome.actions.plugins`),
and ``package.module:callable`` references written in the chain itself.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.plugin import pluginPackagePaths
from zope.interface import Attribute, Interface

from callhome.logs import LevelLogger

# Plugin modules dropped into any callhome/actions/ directory on sys.path
# (without an __init__.py) become part of this package for getPlugins().
__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []

if TYPE_CHECKING:  # pragma: no cover
    from callhome.config import Device
    from callhome.netconf.session import NetconfSession
    from callhome.storage.results import ResultsWriter
    from callhome.storage.schemas import SchemaCache


class ActionConfigError(ValueError):
    """
    A step's parameters are wrong.

    @ivar key: the parameter at fault (appended to the step's key path), or
        None for the step as a whole.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass
class ActionContext:
    """
    What a step gets to work with.

    @ivar device: the device's configuration.
    @ivar session: the device's NETCONF session.
    @ivar results: where step results are written.
    @ivar outcomes: the results of the earlier steps of this chain, in order.
    @ivar log: a logger whose events carry the device name.
    @ivar clock: the reactor's clock, for actions that wait.
    @ivar stop: set by a step to end the chain after it (e.g. ``close``).
    @ivar notifications: where a ``subscribe`` step sends the device's
        notifications (the manager saves them and runs ``on_notification``).
    @ivar notification: in an ``on_notification`` chain, the notification.
    @ivar step_done: told each step's outcome as it ends (metrics).
    @ivar schemas: the store's schema cache (``get-schema`` fetches only
        what it lacks), if there is a store.
    """

    device: "Device"
    session: "NetconfSession"
    results: "ResultsWriter"
    clock: IReactorTime
    outcomes: list[Any] = field(default_factory=list)
    log: LevelLogger = field(default_factory=LevelLogger)
    stop: bool = False
    notifications: Callable[[Any, bytes], None] | None = None
    notification: Any = None
    step_done: Callable[[Any], None] | None = None
    schemas: "SchemaCache | None" = None
    #: raise a device-level condition (kind, message): ``supervision-failed``
    #: marks the device's status; every kind is an event (and a webhook).
    alarm: Callable[..., None] | None = None
    #: the device's last saved notification: (eventTime, digests of those
    #: saved at that time), or None (a Deferred); ``subscribe`` resumes from it.
    notification_history: Callable[[], Any] | None = None


ActionResult = Union[Any, Deferred, Awaitable[Any]]


class Action(Protocol):
    """A built chain step: called once per session."""

    name: str

    def __call__(self, context: ActionContext) -> ActionResult:
        """Do the step's work for one session."""


class IAction(Interface):
    """A built chain step (the zope.interface twin of L{Action})."""

    name = Attribute("the action's name, as chains write it")

    def __call__(context: ActionContext) -> ActionResult:
        """Do the step's work for one session: return a value, a Deferred or a coroutine."""


class IActionFactory(Interface):
    """
    What an action plugin provides (together with C{twisted.plugin.IPlugin}):
    a name for chains, and a way to build the action from a step's parameters.
    """

    name = Attribute("the action's name, as chains write it")

    def build(**params: Any) -> IAction:
        """Build the action; raise L{ActionConfigError} for bad parameters."""


ActionFactory = Callable[..., Action]


def builtin_actions() -> dict[str, ActionFactory]:
    """Return the built-in actions by the name a chain uses."""
    from callhome.actions import builtin

    return dict(builtin.ACTIONS)


def check_parameters(factory: Callable[..., Any], params: dict[str, Any], skip: int = 0) -> None:
    """Refuse parameters C{factory} does not accept (skipping its first C{skip})."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    parameters = list(signature.parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    accepted = [p.name for p in parameters]
    for key in params:
        if key not in accepted:
            names = ", ".join(accepted) or "none"
            raise ActionConfigError(f"unknown parameter (accepted: {names})", key=key)


def build_action(name: str, params: dict[str, Any]) -> Action:
    """
    Build the action a chain step names: a built-in, a plugin, or a
    ``package.module:callable`` reference.

    @raises ActionConfigError: for an unknown action or bad parameters.
    """
    from callhome.actions import plugins

    factory = builtin_actions().get(name)
    if factory is not None:
        check_parameters(factory, params)
        return factory(**params)
    plugin = plugins.discovered().get(name)
    if plugin is not None:
        return plugins.build_from_plugin(plugin, params)
    if ":" in name:
        return plugins.build_from_reference(name, params)
    known = ", ".join(sorted(set(builtin_actions()) | set(plugins.discovered())))
    raise ActionConfigError(f"unknown action {name!r} (known: {known}; or package.module:callable)")
