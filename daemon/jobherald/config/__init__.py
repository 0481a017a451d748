"""The TOML configuration: read once, validated, frozen.

Every problem becomes one line naming the file, the key path and what is wrong
(``config.toml: jobs[2].source: unknown source 'prod-exports' (known: exports)``).
This is the only package that reads the environment.

- ``sections``: the TOML shape (pydantic models); each source type's table is its own
  (``sources.sections``), the vocabulary they share is ``jobherald.fields``.
- ``model``: the resolved, frozen configuration the daemon uses.
- ``sources``: source tables resolved: credentials and secrets (``jobherald.auth``).
- ``files``: reading the TOML files and drop-ins, ``${VAR}``.
- ``problems``: validation, one line per problem.
- ``jobs``: the ``[[jobs]]`` tables, one at a time, and each job's key.
- ``loading``: all of it, in order, into one frozen Config.
"""

from __future__ import annotations

from jobherald.auth import BasicAuth, NoAuth, TokenAuth, read_secret
from jobherald.config.loading import (
    SERVICE_CONFIG_DIR,
    SERVICE_STATE_DIR,
    _state_folder,
    config_path,
    load,
)
from jobherald.config.model import (
    AuthConfig,
    Config,
    Notifier,
    Report,
    Source,
    SystemdEnvironment,
    WatchedJob,
    systemd_environment,
)
from jobherald.config.sections import (
    DEFAULT_CONFIG_PATH,
    DaemonSection,
    DropInFile,
    Event,
    JobSection,
    MainFile,
    NotifierSection,
)
from jobherald.fields import (
    Duration,
    DurationOrOff,
    Endpoint,
    RuleFields,
    parse_duration,
    parse_duration_or_off,
)
from jobherald.sources.http_json_config import HttpJsonSettings
from jobherald.sources.sections import SOURCE_TYPES, SourceSection

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "SERVICE_CONFIG_DIR",
    "SERVICE_STATE_DIR",
    "SOURCE_TYPES",
    "AuthConfig",
    "BasicAuth",
    "Config",
    "DaemonSection",
    "DropInFile",
    "Duration",
    "DurationOrOff",
    "Endpoint",
    "Event",
    "HttpJsonSettings",
    "JobSection",
    "MainFile",
    "NoAuth",
    "Notifier",
    "NotifierSection",
    "Report",
    "RuleFields",
    "Source",
    "SourceSection",
    "SystemdEnvironment",
    "TokenAuth",
    "WatchedJob",
    "_state_folder",
    "config_path",
    "load",
    "parse_duration",
    "parse_duration_or_off",
    "read_secret",
    "systemd_environment",
]
