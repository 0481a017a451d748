"""Transient upstream faults inside one poll: retries, backoff, Retry-After, caps in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from jobherald.config import Source, TokenAuth, WatchedJob
from jobherald.errors import FetchError
from jobherald.fetch import Fetcher, RetryPolicy, parse_retry_after
from jobherald.model import State
from jobherald.sources.roma import RomaConnect
from jobherald.sources.simulator import Answer, SimJob, Simulator, http_error, running


class Sleeps:
    """Injected sleep: records what the fetcher waited, waits for nothing."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def fetcher(sleeps: Sleeps) -> AsyncIterator[Fetcher]:
    policy = RetryPolicy(retries=2, backoff=0.5, max_backoff=5.0, max_retry_after=10.0)
    async with Fetcher(16, 4, policy, sleep=sleeps) as f:
        yield f


def source(sim: Simulator, timeout: float = 2.0) -> RomaConnect:
    auth = TokenAuth(SecretStr(sim.token), None)
    return RomaConnect(
        Source("roma", sim.url, sim.project_id, "sim-instance", auth, timeout, True, "roma-connect")
    )


def job(job_id: str = "j1") -> WatchedJob:
    return WatchedJob(job_id, job_id, "roma", "sim-instance", (), 1.0, "test")


async def test_a_burst_of_server_errors_is_ridden_out_with_growing_waits(
    sim: Simulator, fetcher: Fetcher, sleeps: Sleeps
) -> None:
    sim.add(SimJob("j1", [http_error(500), http_error(502), running(0.4)]))
    snap = await source(sim).poll(fetcher, job())
    assert snap.state is State.RUNNING
    assert sim.polls("j1") == 3
    first, second = sleeps.calls
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 1.5


async def test_retries_are_bounded(sim: Simulator, fetcher: Fetcher, sleeps: Sleeps) -> None:
    sim.add(SimJob("j1", [http_error(503, "APIG.9999", "busy")]))
    with pytest.raises(FetchError) as caught:
        await source(sim).poll(fetcher, job())
    assert (caught.value.status, caught.value.retryable) == (503, True)
    assert sim.polls("j1") == 3
    assert len(sleeps.calls) == 2


async def test_retry_after_is_honoured(sim: Simulator, fetcher: Fetcher, sleeps: Sleeps) -> None:
    sim.add(SimJob("j1", [http_error(429, "APIG.0308", "throttled", retry_after=3), running(0.4)]))
    await source(sim).poll(fetcher, job())
    assert sleeps.calls == [3.0]


async def test_a_long_retry_after_ends_the_poll_and_is_passed_on(
    sim: Simulator, fetcher: Fetcher, sleeps: Sleeps
) -> None:
    sim.add(
        SimJob("j1", [http_error(429, "APIG.0308", "throttled", retry_after=120), running(0.4)])
    )
    with pytest.raises(FetchError) as caught:
        await source(sim).poll(fetcher, job())
    assert caught.value.retry_after == 120.0
    assert sim.polls("j1") == 1
    assert sleeps.calls == []


async def test_a_timeout_is_retried(sim: Simulator, fetcher: Fetcher, sleeps: Sleeps) -> None:
    sim.add(SimJob("j1", [Answer(status="RUNNING", delay=1.0), running(0.4)]))
    snap = await source(sim, timeout=0.2).poll(fetcher, job())
    assert snap.progress == 0.4
    assert len(sleeps.calls) == 1


@pytest.mark.parametrize(
    "answer",
    [
        http_error(404, "ROMA.00110006"),
        http_error(403, "ROMA.00000101"),
        Answer(raw_body=b"<html>"),
    ],
)
async def test_answers_a_retry_cannot_mend_are_not_retried(
    sim: Simulator, fetcher: Fetcher, sleeps: Sleeps, answer: Answer
) -> None:
    sim.add(SimJob("j1", [answer, running(0.4)]))
    with pytest.raises(FetchError):
        await source(sim).poll(fetcher, job())
    assert sim.polls("j1") == 1
    assert sleeps.calls == []


async def test_no_such_job_is_marked_as_such(sim: Simulator, fetcher: Fetcher) -> None:
    with pytest.raises(FetchError) as caught:
        await source(sim).poll(fetcher, job("never-heard-of"))
    assert caught.value.not_found
    assert not caught.value.source_wide


async def test_requests_to_one_host_are_capped(sim: Simulator, sleeps: Sleeps) -> None:
    for i in range(12):
        sim.add(SimJob(f"j{i}", [Answer(status="RUNNING", delay=0.1)]))
    async with Fetcher(16, 3, sleep=sleeps) as capped:
        await asyncio.gather(*(source(sim).poll(capped, job(f"j{i}")) for i in range(12)))
    assert sim.max_in_flight == 3


async def test_requests_in_flight_are_capped_overall(sim: Simulator, sleeps: Sleeps) -> None:
    for i in range(12):
        sim.add(SimJob(f"j{i}", [Answer(status="RUNNING", delay=0.1)]))
    async with Fetcher(2, 0, sleep=sleeps) as capped:
        await asyncio.gather(*(source(sim).poll(capped, job(f"j{i}")) for i in range(12)))
    assert sim.max_in_flight == 2


def test_retry_after_reads_seconds_and_dates() -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Sat, 28 Nov 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Sat, 28 Nov 2026 11:00:00 GMT", now) is None  # past: no pause
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
