"""Namespaces, capability URIs and protocol constants of the simulated device."""

from __future__ import annotations

from callhome.netconf import xml

NETCONF_NS = xml.NETCONF_NS
MONITORING_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
NOTIFICATION_NS = xml.NOTIFICATION_NS
#: RFC 5277 nc-notifications: replayComplete, notificationComplete, streams.
NETMOD_NOTIFICATION_NS = "urn:ietf:params:xml:ns:netmod:notification"
#: RFC 6470 ietf-netconf-notifications.
NETCONF_NOTIFICATIONS_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
#: The simulator's own events (``--notify-every``): a heartbeat with a sequence number.
SIMULATOR_NS = "urn:callhome:simulator:1"
WITH_DEFAULTS_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults"

_CAP = "urn:ietf:params:netconf:capability:"
CAPABILITY_WRITABLE_RUNNING = _CAP + "writable-running:1.0"
CAPABILITY_CANDIDATE = _CAP + "candidate:1.0"
CAPABILITY_CONFIRMED_COMMIT_1_0 = _CAP + "confirmed-commit:1.0"
CAPABILITY_CONFIRMED_COMMIT = _CAP + "confirmed-commit:1.1"
CAPABILITY_ROLLBACK_ON_ERROR = _CAP + "rollback-on-error:1.0"
CAPABILITY_VALIDATE_1_0 = _CAP + "validate:1.0"
CAPABILITY_VALIDATE = _CAP + "validate:1.1"
CAPABILITY_STARTUP = _CAP + "startup:1.0"
CAPABILITY_XPATH = _CAP + "xpath:1.0"
CAPABILITY_WITH_DEFAULTS = _CAP + "with-defaults:1.0?basic-mode=explicit&also-supported=report-all,trim"
CAPABILITY_NOTIFICATION = _CAP + "notification:1.0"
CAPABILITY_INTERLEAVE = _CAP + "interleave:1.0"
CAPABILITY_MONITORING = MONITORING_NS + "?module=ietf-netconf-monitoring"

DATASTORES = ("running", "candidate", "startup")
STREAM = "NETCONF"
REPLAY_LOG_SIZE = 100
DEFAULT_CONFIRM_TIMEOUT = 600
WITH_DEFAULTS_MODES = ("explicit", "report-all", "trim")
