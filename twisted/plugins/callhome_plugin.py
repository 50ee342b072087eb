"""twistd plugin: ``twistd callhome``."""

from twisted.application.service import ServiceMaker

callhome = ServiceMaker(
    "callhome", "callhome.tap", "NETCONF Call Home manager (RFC 8071)", "callhome"
)
