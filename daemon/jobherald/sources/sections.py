"""Every source type's table in the config file, told apart by its ``type``: what the
config's ``[sources.NAME]`` validates against (each type declares its own table)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from jobherald import auth
from jobherald.sources import http_json_config, huawei_config
from jobherald.sources.http_json_config import HttpJsonSource
from jobherald.sources.huawei_config import (
    AUTH_METHODS,
    HTTP_AUTH_METHODS,
    HuaweiJobSource,
    RomaConnectSource,
)

__all__ = [
    "AUTH_METHODS",
    "HTTP_AUTH_METHODS",
    "SOURCE_TYPES",
    "WITH_INSTANCES",
    "WITH_PARAMS",
    "SourceSection",
    "SourceTable",
    "tables",
]

SourceSection = Annotated[
    RomaConnectSource | HuaweiJobSource | HttpJsonSource, Field(discriminator="type")
]
SOURCE_TYPES = ("roma-connect", "huawei-job", "http-json")
SourceTable = RomaConnectSource | HuaweiJobSource | HttpJsonSource
_BY_TYPE: dict[str, type[RomaConnectSource | HuaweiJobSource | HttpJsonSource]] = dict(
    zip(SOURCE_TYPES, (RomaConnectSource, HuaweiJobSource, HttpJsonSource), strict=True)
)
# The types whose jobs may name an instance of their own, and those whose jobs take params.
WITH_INSTANCES = tuple(t for t, table in _BY_TYPE.items() if table.instances)
WITH_PARAMS = tuple(t for t, table in _BY_TYPE.items() if table.params)


def tables() -> list[type[BaseModel]]:
    """Every table a source may hold (whose keys an unknown key is compared with)."""
    return [
        model
        for module in (auth, huawei_config, http_json_config)
        for model in vars(module).values()
        if isinstance(model, type) and issubclass(model, BaseModel)
    ]
