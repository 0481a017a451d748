"""Job sources, one module per type, and the registry the rest of jobherald goes through.

- ``base``: what a source is (the ``JobSource`` protocol) and shared HTTP/JSON helpers.
- ``huawei_auth``: Huawei Cloud credentials (token, IAM password, AK/SK) and error shape.
- ``huawei``: what Huawei Cloud's job APIs share (credentials, a refused-credentials retry).
- ``roma``: ROMA Connect asset jobs (``type = "roma-connect"``).
- ``huawei_job``: Huawei Cloud's shared job API (``type = "huawei-job"``).
- ``http_json``: any JSON job API, read with JMESPath (``type = "http-json"``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from jobherald.config import Source
from jobherald.sources.base import Advice, JobSource, SourceFactory
from jobherald.sources.http_json import HttpJson
from jobherald.sources.huawei_job import HuaweiJob
from jobherald.sources.roma import RomaConnect

# Every source type by its config name.
SOURCE_TYPES: dict[str, SourceFactory] = {
    "roma-connect": RomaConnect,
    "huawei-job": HuaweiJob,
    "http-json": HttpJson,
}


def make_source(config: Source, clock: Callable[[], datetime] | None = None) -> JobSource:
    return SOURCE_TYPES[config.type](config, clock)


__all__ = [
    "SOURCE_TYPES",
    "Advice",
    "HttpJson",
    "HuaweiJob",
    "JobSource",
    "RomaConnect",
    "make_source",
]
