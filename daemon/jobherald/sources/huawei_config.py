"""Huawei Cloud sources in the config file: their tables (ROMA Connect's asset jobs, the
shared job API), the credentials they take (a token, an IAM password, AK/SK signing),
and what each resolves to. Nothing of jobherald's config package is imported here: the
config imports this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr

from jobherald.auth import (
    BasicAuthSection,
    BearerAuthSection,
    Credentials,
    Secrets,
    TokenAuthSection,
)
from jobherald.fields import ArchiveSize, Duration, Endpoint, PathSegment, Section, SourceFields

# The [auth] methods of a Huawei Cloud source.
AUTH_METHODS = ("token", "password", "aksk")


@dataclass(frozen=True, slots=True)
class PasswordAuth:
    """An IAM token fetched with a password, and fetched again before it expires."""

    iam_endpoint: str
    user: str
    password: SecretStr
    domain: str
    project: str | None
    project_id: str | None
    method: str = "password"


@dataclass(frozen=True, slots=True)
class AkSkAuth:
    """Every request signed with an access key and secret key (SDK-HMAC-SHA256)."""

    ak: str
    sk: SecretStr
    security_token: SecretStr | None
    method: str = "aksk"


class PasswordAuthSection(Section):
    method: Literal["password"]
    iam_endpoint: Endpoint
    user: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None
    domain: str = Field(min_length=1)
    project: str | None = None
    project_id: str | None = None

    def resolve(self, secrets: Secrets, where: str) -> Credentials | None:
        password = secrets.get("password", self.password, self.password_file)
        if (self.project is None) == (self.project_id is None):
            secrets.problems.append(f"{where}: give one of project and project_id")
            return None
        if password is None:
            return None
        return PasswordAuth(
            self.iam_endpoint, self.user, password, self.domain, self.project, self.project_id
        )


class AkSkAuthSection(Section):
    method: Literal["aksk"]
    ak: str = Field(min_length=1)
    sk: SecretStr | None = None
    sk_file: Path | None = None
    security_token: SecretStr | None = None
    security_token_file: Path | None = None

    def resolve(self, secrets: Secrets, where: str) -> Credentials | None:
        sk = secrets.get("sk", self.sk, self.sk_file)
        security_token = secrets.get(
            "security_token", self.security_token, self.security_token_file, required=False
        )
        return None if sk is None else AkSkAuth(self.ak, sk, security_token)


AuthSection = Annotated[
    TokenAuthSection | PasswordAuthSection | AkSkAuthSection, Field(discriminator="method")
]
# What an http-json source may sign with: the neutral methods and Huawei Cloud's.
HttpAuthSection = Annotated[
    BearerAuthSection | BasicAuthSection | PasswordAuthSection | AkSkAuthSection,
    Field(discriminator="method"),
]
HTTP_AUTH_METHODS = ("bearer", "basic", "password", "aksk")


class HuaweiSource(SourceFields):
    """What every Huawei Cloud source has: an endpoint, a project, and one of three auths."""

    endpoint: Endpoint
    project_id: PathSegment
    token: SecretStr | None = None
    token_file: Path | None = None
    auth: AuthSection | None = None

    def source_fields(self, where: str, problems: list[str]) -> dict[str, Any] | None:
        """What the resolved source holds beyond the common keys (None: a problem)."""
        return {"endpoint": self.endpoint, "project_id": self.project_id, "instance_id": None}


class RomaConnectSource(HuaweiSource):
    instances: ClassVar[bool] = True

    type: Literal["roma-connect"]
    instance_id: PathSegment | None = None
    # Where the archives of this source's export jobs are kept (none: not downloaded).
    archive_dir: Path | None = None
    # The longest one download may take, and the largest archive kept.
    archive_timeout: Duration = Field(default=1800.0, ge=1.0)
    max_archive_size: ArchiveSize = 2 * 2**30

    def source_fields(self, where: str, problems: list[str]) -> dict[str, Any] | None:
        if self.archive_dir is not None and not self.archive_dir.is_absolute():
            problems.append(
                f"{where}.archive_dir: {str(self.archive_dir)!r} must be an absolute path"
            )
        return {
            "endpoint": self.endpoint,
            "project_id": self.project_id,
            "instance_id": self.instance_id,
            "archive_dir": self.archive_dir,
            "archive_timeout": self.archive_timeout,
            "max_archive_size": self.max_archive_size,
        }


class HuaweiJobSource(HuaweiSource):
    """Huawei Cloud's shared job API (ECS, EVS, IMS, BMS, VPC...)."""

    type: Literal["huawei-job"]
