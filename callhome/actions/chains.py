"""
Chains built from the config's data: each L{StepSpec} becomes a L{Step}
holding its built action.

This is where plugin code is imported (Twisted's plugin discovery on the
config's ``plugin_paths``, and ``package.module:callable`` references), so
the config reader stays free of it.  It runs when the config loads, at
start-up and on reload, so a bad step still stops start-up (or refuses the
reload) with its key path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from callhome.actions import Action, ActionConfigError, build_action
from callhome.actions.plugins import add_plugin_paths
from callhome.config import Config, ConfigError, StepSpec


@dataclass(frozen=True)
class Step:
    """One step of a chain: a built action and how to run it."""

    name: str
    action: Action
    timeout: float | None = None
    on_error: str = "stop"


#: chain name -> its built steps.
Chains = Mapping[str, tuple[Step, ...]]


def build_step(spec: StepSpec) -> Step:
    """
    Build one step's action from its parameters.

    @raises ConfigError: naming the parameter's key path and what is wrong.
    """
    try:
        action = build_action(spec.name, dict(spec.params))
    except ActionConfigError as e:
        path = f"{spec.path}.{e.key}" if e.key and spec.path else (e.key or spec.path)
        raise ConfigError(path, str(e)) from None
    return Step(name=spec.name, action=action, timeout=spec.timeout, on_error=spec.on_error)


def build_chains(config: Config) -> dict[str, tuple[Step, ...]]:
    """
    Build every chain of C{config} (plugins on its ``plugin_paths`` found first).

    @raises ConfigError: for the first step that cannot be built.
    """
    if config.plugin_paths:
        add_plugin_paths(list(config.plugin_paths))
    return {name: tuple(build_step(spec) for spec in specs) for name, specs in config.chains.items()}
