"""
The type of the reactor the service is given.

Twisted has no single interface for "the reactor": a reactor provides many
(L{IReactorTime}, L{IReactorCore}, L{IReactorTCP}...), and which ones
depends on the reactor and the platform.  mypy has no intersection types
either, so "provides all of these" is spelled as one interface that
extends each of them.  Nothing declares that it implements
L{IServiceReactor}: it is a static type only (C{typing.cast} to it where
the real reactor is picked, at an entry point); never adapt to it or ask
C{providedBy}.

A leaf module: it imports nothing of callhome, and never the global reactor.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorProcess,
    IReactorSocket,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
)


class IServiceReactor(
    IReactorTime, IReactorCore, IReactorFromThreads, IReactorProcess, IReactorSocket, IReactorTCP, IReactorUNIX,
):
    """
    What L{callhome.service.CallHomeService} and its parts use of the reactor.

      - L{IReactorTime}: timers (housekeeping, grace period, store flushes,
        respawn delays) and the clock of every call.
      - L{IReactorCore}: C{running}, C{stop}, C{callWhenRunning} (signal
        handlers) and the system event triggers of the store's
        C{adbapi.ConnectionPool}.
      - L{IReactorFromThreads}: C{callFromThread} from the signal handlers,
        and the database thread's results (C{adbapi}).
      - L{IReactorProcess}: the worker processes (C{ProcessEndpoint}).
      - L{IReactorSocket}: a worker adopts the listening sockets it inherited.
      - L{IReactorTCP}, L{IReactorUNIX}: the endpoints of C{listen:} and
        C{api.listen} (C{serverFromString}: C{tcp:}, C{tcp6:}, C{unix:}).

    Not L{IReactorThreads}: the store's connection pool runs its own thread
    pool; nothing here asks the reactor's.
    """
