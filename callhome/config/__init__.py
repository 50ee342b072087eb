"""
The configuration: the data (:mod:`callhome.config.model`) and the YAML
reader (:mod:`callhome.config.reader`), under the names the rest of
callhome (and plugin authors) use: ``from callhome import config``,
``config.load(path)``, ``config.Device``.
"""

from callhome.config.model import (
    DEFAULT_API_LISTEN,
    DEFAULT_STEP_TIMEOUT,
    DEVICE_NAME,
    MAX_WORKERS,
    AdmissionSettings,
    ApiSettings,
    ClusterSettings,
    Config,
    ConfigError,
    Credentials,
    Device,
    NetconfSettings,
    Profile,
    SSHSettings,
    StepSpec,
    StoreSettings,
    TlsIdentity,
    TlsSettings,
)
from callhome.config.reader import load, loads, parse_step
from callhome.config.service import is_loopback_endpoint

__all__ = [
    "DEFAULT_API_LISTEN", "DEFAULT_STEP_TIMEOUT", "DEVICE_NAME", "MAX_WORKERS",
    "AdmissionSettings", "ApiSettings", "ClusterSettings", "Config", "ConfigError", "Credentials", "Device",
    "NetconfSettings", "Profile", "SSHSettings", "StepSpec", "StoreSettings", "TlsIdentity", "TlsSettings",
    "is_loopback_endpoint", "load", "loads", "parse_step",
]
