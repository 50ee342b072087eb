"""
TLS call home (RFC 8071 §4, NETCONF over TLS per RFC 7589).

* :mod:`~callhome.tls.context`: the OpenSSL client context and the verify
  callback that records, never decides.
* :mod:`~callhome.tls.certificates`: the device's certificate as we judge it.
* :mod:`~callhome.tls.call`: one call: identity after the handshake, then NETCONF.
* :mod:`~callhome.tls.probe`: NETCONF-level keepalives (OpenSSL 3 has no heartbeats).
"""
