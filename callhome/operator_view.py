"""
The operator's view, wired into a service: which devices did not call
(L{callhome.call.expectations}), webhook alerts (L{callhome.control.webhooks}),
and their metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.application.service import MultiService

from callhome.call.expectations import Expectations
from callhome.call.manager import Manager
from callhome.config import Config
from callhome.control.webhooks import Webhooks
from callhome.metrics import Metrics
from callhome.reactor import IServiceReactor
from callhome.storage.store import Store


@dataclass
class OperatorView:
    """What L{attach} started: either may be None."""

    expectations: Expectations | None
    webhooks: Webhooks | None


def attach(
    parent: MultiService, config: Config, manager: Manager, store: Store, metrics: Metrics,
    reactor: IServiceReactor, main_process: bool,
) -> OperatorView:
    """
    Start the expectations (in the main process, where every status is
    known) and the webhooks (in every process: each posts the events it
    records) as services of C{parent}.
    """
    expectations = None
    if main_process:
        expectations = Expectations(manager, reactor)
        expectations.setServiceParent(parent)
        metrics.live_expectations(expectations.count, expectations.last_calls, expectations.by_status)
    webhooks = None
    if config.alerts:
        webhooks = Webhooks(config.alerts, reactor, store.instance)
        webhooks.setServiceParent(parent)
        store.event_observers.append(webhooks.event)
        metrics.live_alerts(lambda: webhooks.counts()["sent"], lambda: webhooks.counts()["dropped"])
    return OperatorView(expectations, webhooks)
