"""
The TLS calls of a ``listen_tls:`` listener: each accepted (and admitted)
connection becomes a L{TlsCall} inside Twisted's TLS, as the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.protocol import Protocol, ServerFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from callhome.config import Config
from callhome.tls.call import CallTLSProtocol, TlsCall
from callhome.tls.context import CallTlsOptions

if TYPE_CHECKING:  # pragma: no cover
    from callhome.call.manager import Manager


class TlsCalls:
    """
    Builds the TLS calls for the manager's current config (a listener's
    C{calls}); L{reconfigure} takes a reloaded one.

    @ivar options: the OpenSSL client context and its callbacks.
    """

    def __init__(self, manager: "Manager") -> None:
        self.manager = manager
        self.options = self._options(manager.config)
        # TLSMemoryBIOFactory keeps the set of live protocols (a WrappingFactory);
        # its wrapped factory is never asked to build: we build the call here.
        self._tls = TLSMemoryBIOFactory(self.options, True, ServerFactory())
        self._tls.noisy = False

    @staticmethod
    def _options(config: Config) -> CallTlsOptions:
        return CallTlsOptions(config.tls.default_identity, config.tls.trusted_ca_path)

    def reconfigure(self, config: Config) -> None:
        """New calls use the reloaded identities and trusted CAs; open ones keep theirs."""
        self.options = self._options(config)
        self._tls = TLSMemoryBIOFactory(self.options, True, ServerFactory())
        self._tls.noisy = False

    def __call__(self) -> Protocol:
        """One TLS call, tracked by the manager."""
        config = self.manager.config
        call = TlsCall(self.manager, self.options, config.ssh.handshake_timeout, config.admission.idle_timeout)
        self.manager.track_call(call)
        return CallTLSProtocol(self._tls, call)
