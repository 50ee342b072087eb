"""
Actions: the steps of a device's chain.

An action is built once, when the config loads, from the step's parameters
(so a bad filter or a missing file stops start-up, not a call).  It is then
called once per session with an :class:`ActionContext` and returns a value,
a Deferred or a coroutine.  The chain runner (:mod:`callhome.actions.runner`)
strings the steps of a session together as one Deferred chain.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

if TYPE_CHECKING:  # pragma: no cover
    from callhome.config import Device
    from callhome.netconf.session import NetconfSession
    from callhome.results import ResultsWriter


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
    """

    device: "Device"
    session: "NetconfSession"
    results: "ResultsWriter"
    clock: IReactorTime
    outcomes: list[Any] = field(default_factory=list)
    log: Logger = field(default_factory=Logger)
    stop: bool = False


ActionResult = Union[Any, Deferred, Awaitable[Any]]


class Action(Protocol):
    """A built chain step: called once per session."""

    name: str

    def __call__(self, context: ActionContext) -> ActionResult:
        """Do the step's work for one session."""


ActionFactory = Callable[..., Action]


def builtin_actions() -> dict[str, ActionFactory]:
    """Return the built-in actions by the name a chain uses."""
    from callhome.actions import builtin

    return dict(builtin.ACTIONS)


def build_action(name: str, params: dict[str, Any]) -> Action:
    """
    Build the action a chain step names.

    @raises ActionConfigError: for an unknown action or bad parameters.
    """
    factories = builtin_actions()
    factory = factories.get(name)
    if factory is None:
        known = ", ".join(sorted(factories))
        raise ActionConfigError(f"unknown action {name!r} (known: {known})")
    accepted = inspect.signature(factory).parameters
    for key in params:
        if key not in accepted:
            names = ", ".join(accepted) or "none"
            raise ActionConfigError(f"unknown parameter (accepted: {names})", key=key)
    return factory(**params)
