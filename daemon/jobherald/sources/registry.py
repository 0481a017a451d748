"""Every source type by its config name, and a source made from its config."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from jobherald.config import Source
from jobherald.sources.base import JobSource, SourceFactory
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
