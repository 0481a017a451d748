"""Credentials any source may use, whatever its vendor: a token (sent as a header, or as
a bearer token), HTTP basic, none; their tables in the config file; and reading secrets
from ``key`` / ``key_file`` pairs. A source type with credentials of its own declares
them beside it (``sources/``), on the same ``Credentials`` shape."""

from __future__ import annotations

import errno
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field, SecretStr

from jobherald.fields import Section

# A secret file is small: more than this is some other file named by mistake (/dev/zero).
MAX_SECRET = 64 * 1024

# False while a command that needs no secret (status, history...) reads the config:
# secrets are then neither read from their files nor checked.
READ_SECRETS: ContextVar[bool] = ContextVar("read_secrets", default=True)
UNREAD = SecretStr("(not read)")
SECRET_KEYS = frozenset({"token", "password", "sk", "security_token", "heartbeat_url"})


class Credentials(Protocol):
    """What a source signs its requests with; ``method`` names it as the config does."""

    @property
    def method(self) -> str: ...


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """A fixed token, inline or from a file re-read whenever it changes: sent in the
    source's own header (``token``), or as a bearer token (http-json)."""

    token: SecretStr | None
    token_file: Path | None
    method: str = "token"
    bearer: bool = False


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """HTTP basic authentication."""

    user: str
    password: SecretStr
    method: str = "basic"


@dataclass(frozen=True, slots=True)
class NoAuth:
    """No credentials at all (an open API, or one reached through a local proxy)."""

    method: str = "none"


def read_secret(path: Path) -> SecretStr:
    """A secret file's content, without surrounding white space; OSError if unreadable."""
    with path.open("rb") as handle:
        data = handle.read(MAX_SECRET + 1)
    if len(data) > MAX_SECRET:
        raise OSError(errno.EFBIG, f"larger than {MAX_SECRET // 1024} KB (not a secret)")
    try:
        return SecretStr(data.decode("utf-8").strip())
    except UnicodeDecodeError:
        raise OSError(errno.EILSEQ, "not UTF-8 text") from None


class Secrets:
    """Reads `key` / `key_file` pairs of one section, collecting problems."""

    def __init__(self, where: str, base: Path, problems: list[str]) -> None:
        self.where = where
        self.base = base
        self.problems = problems

    def path(self, path: Path) -> Path:
        return path if path.is_absolute() else self.base / path

    def get(
        self, key: str, inline: SecretStr | None, file: Path | None, *, required: bool = True
    ) -> SecretStr | None:
        if not READ_SECRETS.get():
            return UNREAD if inline is not None or file is not None else None
        if inline is not None and file is not None:
            self.problems.append(f"{self.where}: give one of {key} and {key}_file, not both")
            return None
        if inline is None and file is None:
            if required:
                self.problems.append(f"{self.where}: give one of {key} and {key}_file")
            return None
        secret = inline
        if file is not None:
            try:
                secret = read_secret(self.path(file))
            except OSError as exc:
                self.problems.append(
                    f"{self.where}.{key}_file: cannot read {self.path(file)}: {exc.strerror}"
                )
                return None
        assert secret is not None
        if not secret.get_secret_value():
            self.problems.append(f"{self.where}.{key}{'_file' if file else ''}: is empty")
            return None
        return secret


class AuthTable(Protocol):
    """An ``[auth]`` table: what it resolves to once its secrets are read."""

    def resolve(self, secrets: Secrets, where: str) -> Credentials | None: ...


def _token(
    secrets: Secrets, token: SecretStr | None, file: Path | None, bearer: bool
) -> Credentials | None:
    if secrets.get("token", token, file) is None:
        return None
    path = secrets.path(file) if file else None
    return TokenAuth(token, path, "bearer" if bearer else "token", bearer)


class TokenAuthSection(Section):
    method: Literal["token"]
    token: SecretStr | None = None
    token_file: Path | None = None

    def resolve(self, secrets: Secrets, where: str, bearer: bool = False) -> Credentials | None:
        return _token(secrets, self.token, self.token_file, bearer)


class BearerAuthSection(Section):
    method: Literal["bearer"]
    token: SecretStr | None = None
    token_file: Path | None = None

    def resolve(self, secrets: Secrets, where: str) -> Credentials | None:
        return _token(secrets, self.token, self.token_file, bearer=True)


class BasicAuthSection(Section):
    method: Literal["basic"]
    user: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None

    def resolve(self, secrets: Secrets, where: str) -> Credentials | None:
        password = secrets.get("password", self.password, self.password_file)
        return None if password is None else BasicAuth(self.user, password)


class Authenticated(Protocol):
    """A source table that takes ``token`` / ``token_file`` or an ``[auth]`` table."""

    @property
    def token(self) -> SecretStr | None: ...
    @property
    def token_file(self) -> Path | None: ...
    @property
    def auth(self) -> AuthTable | None: ...


def resolve_auth(
    section: Authenticated, where: str, base: Path, problems: list[str], *, bearer: bool
) -> Credentials | None:
    """A source's credentials: its ``[auth]`` table, else its token (a bearer token when
    ``bearer``, which may then be left out: no credentials)."""
    auth = section.auth
    if auth is not None and (section.token is not None or section.token_file is not None):
        problems.append(f"{where}: give token/token_file or an [auth] table, not both")
        return None
    if auth is None:
        if bearer and section.token is None and section.token_file is None:
            return NoAuth()
        token = TokenAuthSection(method="token", token=section.token, token_file=section.token_file)
        return token.resolve(Secrets(where, base, problems), where, bearer)
    return auth.resolve(Secrets(f"{where}.auth", base, problems), f"{where}.auth")
