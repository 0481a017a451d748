"""Credentials: token files that change, IAM password tokens, AK/SK signatures."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from jobherald.config import AuthConfig, Source, TokenAuth, WatchedJob
from jobherald.errors import FetchError
from jobherald.fetch import Fetcher
from jobherald.sources.huawei_auth import sign
from jobherald.sources.huawei_config import AkSkAuth, PasswordAuth
from jobherald.sources.roma import RomaConnect
from jobherald.sources.simulator import SimJob, Simulator, running
from tests.conftest import Clock
from tests.fakes import FakeIam, sdk_signature_check


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    async with Fetcher(64, 0) as f:
        yield f


@pytest.fixture
async def iam(sim: Simulator) -> AsyncIterator[FakeIam]:
    fake = FakeIam(sim)
    await fake.start()
    yield fake
    await fake.stop()


def source(sim: Simulator, auth: AuthConfig, clock: Clock | None = None) -> RomaConnect:
    config = Source(
        "roma", sim.url, sim.project_id, "sim-instance", auth, 2.0, True, "roma-connect"
    )
    return RomaConnect(config, clock)


def job(job_id: str = "j1") -> WatchedJob:
    return WatchedJob(job_id, job_id, "roma", "sim-instance", (), 1.0, "test")


def password_auth(iam: FakeIam, password: str = "iam-s3cret") -> PasswordAuth:
    return PasswordAuth(iam.url, "ops-bot", SecretStr(password), "acct", "cn-north-4", None)


def write_token(path: Path, token: str, bump: int) -> None:
    path.write_text(token + "\n")
    stamp = 1_700_000_000 + bump
    os.utime(path, (stamp, stamp))


async def test_a_token_file_is_read_again_when_it_changes(
    sim: Simulator, fetcher: Fetcher, tmp_path: Path
) -> None:
    sim.add(SimJob("j1", [running(0.2)]))
    token_file = tmp_path / "roma.token"
    write_token(token_file, "old-token", 0)
    sim.tokens = {"old-token"}
    roma = source(sim, TokenAuth(None, token_file))
    await roma.poll(fetcher, job())
    write_token(token_file, "new-token", 1)
    sim.tokens = {"new-token"}
    await roma.poll(fetcher, job())
    assert [h["X-Auth-Token"] for _, h in sim.requests] == ["old-token", "new-token"]


async def test_a_rejected_fixed_token_is_a_source_wide_error_that_hides_the_token(
    sim: Simulator, fetcher: Fetcher
) -> None:
    sim.add(SimJob("j1", [running(0.2)]))
    with pytest.raises(FetchError) as caught:
        await source(sim, TokenAuth(SecretStr("expired-token"), None)).poll(fetcher, job())
    assert caught.value.source_wide
    assert caught.value.status == 401
    assert "expired-token" not in caught.value.detail
    assert sim.polls("j1") == 1


async def test_a_hundred_polls_share_one_iam_token(
    sim: Simulator, fetcher: Fetcher, iam: FakeIam
) -> None:
    for i in range(100):
        sim.add(SimJob(f"j{i}", [running(0.2)]))
    roma = source(sim, password_auth(iam))
    await asyncio.gather(*(roma.poll(fetcher, job(f"j{i}")) for i in range(100)))
    assert iam.fetches == 1
    (body,) = iam.bodies
    assert body["auth"]["scope"] == {"project": {"name": "cn-north-4"}}
    assert {h["X-Auth-Token"] for _, h in sim.requests} == {"iam-token-1"}


async def test_a_revoked_iam_token_is_replaced_with_one_fetch(
    sim: Simulator, fetcher: Fetcher, iam: FakeIam
) -> None:
    for i in range(20):
        sim.add(SimJob(f"j{i}", [running(0.2)]))
    roma = source(sim, password_auth(iam))
    await roma.poll(fetcher, job("j0"))
    sim.tokens.clear()  # a password change revokes every token
    await asyncio.gather(*(roma.poll(fetcher, job(f"j{i}")) for i in range(20)))
    assert iam.fetches == 2
    assert sim.tokens == {"iam-token-2"}


async def test_an_iam_token_is_fetched_again_before_it_expires(
    sim: Simulator, fetcher: Fetcher, iam: FakeIam, clock: Clock
) -> None:
    sim.add(SimJob("j1", [running(0.2)]))
    roma = source(sim, password_auth(iam), clock)
    await roma.poll(fetcher, job())
    clock.advance(timedelta(hours=23, minutes=45).total_seconds())
    await roma.poll(fetcher, job())
    assert iam.fetches == 1
    clock.advance(timedelta(minutes=10).total_seconds())
    await roma.poll(fetcher, job())
    assert iam.fetches == 2


async def test_a_wrong_password_is_one_fetch_for_many_polls_and_never_echoed(
    sim: Simulator, fetcher: Fetcher, iam: FakeIam
) -> None:
    for i in range(30):
        sim.add(SimJob(f"j{i}", [running(0.2)]))
    roma = source(sim, password_auth(iam, "wrong-pass"))
    results = await asyncio.gather(
        *(roma.poll(fetcher, job(f"j{i}")) for i in range(30)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, FetchError)]
    assert len(errors) == 30
    assert iam.fetches == 1
    error = errors[0]
    assert error.source_wide
    assert error.summary == (
        "HTTP 401: IAM refused the token request: The username or password is wrong."
    )
    assert "wrong-pass" not in error.detail
    assert sim.requests == []


async def test_an_unreachable_iam_is_a_retryable_source_wide_error(
    sim: Simulator, fetcher: Fetcher
) -> None:
    sim.add(SimJob("j1", [running(0.2)]))
    auth = PasswordAuth("http://127.0.0.1:9", "u", SecretStr("p"), "d", None, "project-id")
    with pytest.raises(FetchError) as caught:
        await source(sim, auth).poll(fetcher, job())
    assert caught.value.source_wide and caught.value.retryable
    assert caught.value.summary.startswith("auth: cannot reach IAM: cannot connect to 127.0.0.1:9")


async def test_aksk_requests_verify_against_the_sdk_signer(
    sim: Simulator, fetcher: Fetcher
) -> None:
    sim.verify_signature = sdk_signature_check({"AK-TEST": "sk-s3cret"})
    sim.add(SimJob("j1", [running(0.2)]))
    roma = source(sim, AkSkAuth("AK-TEST", SecretStr("sk-s3cret"), None))
    snap = await roma.poll(fetcher, job())
    assert snap.progress == 0.2
    assert sim.signed_requests == 1
    _, headers = sim.requests[0]
    assert "X-Auth-Token" not in headers
    assert headers["X-Project-Id"] == sim.project_id
    assert "sk-s3cret" not in str(headers)


async def test_a_wrong_secret_key_is_rejected(sim: Simulator, fetcher: Fetcher) -> None:
    sim.verify_signature = sdk_signature_check({"AK-TEST": "sk-s3cret"})
    sim.add(SimJob("j1", [running(0.2)]))
    with pytest.raises(FetchError) as caught:
        await source(sim, AkSkAuth("AK-TEST", SecretStr("not-it"), None)).poll(fetcher, job())
    assert caught.value.source_wide
    assert sim.polls("j1") == 1


@pytest.mark.parametrize(
    ("method", "url", "headers", "body"),
    [
        (
            "GET",
            "https://roma.cn-north-4.myhuaweicloud.com/v2/p1/instances/i1/assets/jobs/j1",
            {},
            b"",
        ),
        (
            "GET",
            "http://127.0.0.1:8443/v2/p 1/jobs/a%2Fb?b=2&a=1&c=x y",
            {"X-Project-Id": "p1"},
            b"",
        ),
        (
            "GET",
            "https://example.com/v2/x/",
            {"X-Security-Token": "st", "Content-Type": "application/json"},
            b"",
        ),
        (
            "POST",
            "https://roma.cn-north-4.myhuaweicloud.com/v2/p1/instances/i1/assets/export",
            {"Content-Type": "application/json;charset=utf8"},
            b'{"apps": [{"id": "a1"}], "tasks": []}',
        ),
    ],
)
def test_signatures_match_the_sdk_signer(
    method: str, url: str, headers: dict[str, str], body: bytes
) -> None:
    from urllib.parse import parse_qsl, urlsplit

    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

    now = datetime(2026, 11, 28, 12, 34, 56, tzinfo=UTC)
    ours = sign("AK1", "SK1", method, url, headers, body, now)
    parts = urlsplit(url)
    request = SdkRequest(
        method=method,
        schema=parts.scheme,
        host=parts.netloc,
        resource_path=parts.path,
        query_params=parse_qsl(parts.query),
        header_params={**headers, "X-Sdk-Date": ours["X-Sdk-Date"]},
        body=body,
    )
    theirs = Signer(BasicCredentials("AK1", "SK1")).sign(request)
    assert ours["X-Sdk-Date"] == "20261128T123456Z"
    assert ours["Authorization"] == theirs.header_params["Authorization"]
