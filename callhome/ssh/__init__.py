"""
The SSH client side of a call home, on a socket the device opened to us.

RFC 8071 reverses only the TCP direction: on the accepted socket we are the
SSH client.  The layers, each one class:

* :class:`~callhome.ssh.transport.CallHomeTransport`: conch's client transport.  Its host-key check
  *is* the device identification (C5-C7): an unknown key ends the call before
  any credential is sent; a known one selects the device, and only then are
  that device's credentials used.
* :class:`~callhome.ssh.userauth.CallHomeUserAuth`: a small, bounded userauth client.  It sends the
  signed public-key request at once (RFC 4252 §7, no ``none`` probe and no
  "is this key acceptable?" round trip), signs RSA with rsa-sha2-256/512,
  tries only the methods the device's credentials allow, each once, and
  answers keyboard-interactive a bounded number of rounds.
* :class:`~callhome.ssh.connection.CallHomeConnection` and
  :class:`~callhome.ssh.connection.NetconfChannel`: one session
  channel with the ``netconf`` subsystem, carrying a
  :class:`~callhome.netconf.session.NetconfSession`.

What happens after the NETCONF hello is not this module's business: the
transport hands the session to its
:class:`~callhome.ssh.transport.CallHandler` (the manager).
"""
