"""The TOML configuration: read once, validated, frozen.

Every problem becomes one line naming the file, the key path and what is wrong
(``config.toml: jobs[2].source: unknown source 'roma-prd' (known: roma-prod)``).
This is the only package that reads the environment.

- ``sections``: the TOML shape (pydantic models) and durations.
- ``model``: the resolved, frozen configuration the daemon uses.
- ``sources``: source tables resolved: credentials, secrets, http-json expressions.
- ``loading``: files, drop-ins, ``${VAR}``, validation, one line per problem.
"""

from __future__ import annotations

from jobherald.config.loading import (
    SERVICE_CONFIG_DIR,
    SERVICE_STATE_DIR,
    _state_folder,
    config_path,
    load,
)
from jobherald.config.model import (
    AkSkAuth,
    AuthConfig,
    BasicAuth,
    Config,
    HttpJsonSettings,
    NoAuth,
    Notifier,
    PasswordAuth,
    Source,
    SystemdEnvironment,
    TokenAuth,
    WatchedJob,
    systemd_environment,
)
from jobherald.config.sections import (
    AUTH_METHODS,
    DEFAULT_CONFIG_PATH,
    HTTP_AUTH_METHODS,
    SOURCE_TYPES,
    AkSkAuthSection,
    AuthSection,
    BasicAuthSection,
    BearerAuthSection,
    DaemonSection,
    DropInFile,
    Duration,
    DurationOrOff,
    Endpoint,
    Event,
    HttpAuthSection,
    HttpJsonSource,
    HuaweiJobSource,
    HuaweiSource,
    JobSection,
    MainFile,
    NotifierSection,
    PasswordAuthSection,
    RomaConnectSource,
    RuleFields,
    SourceSection,
    TokenAuthSection,
    parse_duration,
    parse_duration_or_off,
)
from jobherald.config.sources import (
    read_secret,
)

__all__ = [
    "AUTH_METHODS",
    "DEFAULT_CONFIG_PATH",
    "HTTP_AUTH_METHODS",
    "SERVICE_CONFIG_DIR",
    "SERVICE_STATE_DIR",
    "SOURCE_TYPES",
    "AkSkAuth",
    "AkSkAuthSection",
    "AuthConfig",
    "AuthSection",
    "BasicAuth",
    "BasicAuthSection",
    "BearerAuthSection",
    "Config",
    "DaemonSection",
    "DropInFile",
    "Duration",
    "DurationOrOff",
    "Endpoint",
    "Event",
    "HttpAuthSection",
    "HttpJsonSettings",
    "HttpJsonSource",
    "HuaweiJobSource",
    "HuaweiSource",
    "JobSection",
    "MainFile",
    "NoAuth",
    "Notifier",
    "NotifierSection",
    "PasswordAuth",
    "PasswordAuthSection",
    "RomaConnectSource",
    "RuleFields",
    "Source",
    "SourceSection",
    "SystemdEnvironment",
    "TokenAuth",
    "TokenAuthSection",
    "WatchedJob",
    "_state_folder",
    "config_path",
    "load",
    "parse_duration",
    "parse_duration_or_off",
    "read_secret",
    "systemd_environment",
]
