from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from jobherald.config import Source, TokenAuth, WatchedJob
from jobherald.errors import FetchError
from jobherald.fetch import Fetcher
from jobherald.model import Reason, Snapshot, State
from jobherald.sources.roma import RomaConnect, parse_job
from jobherald.sources.simulator import (
    Answer,
    SimJob,
    Simulator,
    failed,
    http_error,
    running,
    succeeded,
)

REASONS = [
    {
        "resource_type": "application",
        "resource_name": "orders-app",
        "error_code": "ROMA.1",
        "error_msg": "exists",
    },
    {
        "resource_type": "task",
        "resource_name": "sync",
        "error_code": "ROMA.2",
        "error_msg": "no source",
    },
]


def source_for(sim: Simulator, **overrides: object) -> RomaConnect:
    values: dict[str, object] = {
        "name": "roma",
        "endpoint": sim.url,
        "project_id": sim.project_id,
        "instance_id": next(iter(sim.instances)),
        "auth": TokenAuth(SecretStr(sim.token), None),
        "timeout": 2.0,
        "verify_tls": True,
        "type": "roma-connect",
    }
    values.update(overrides)
    return RomaConnect(Source(**values))  # type: ignore[arg-type]


def watched(job_id: str, instance_id: str = "sim-instance") -> WatchedJob:
    return WatchedJob(job_id, job_id, "roma", instance_id, (), 1.0, "test")


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    async with Fetcher(4) as f:
        yield f


async def poll(sim: Simulator, fetcher: Fetcher, answer: Answer, **job: object) -> Snapshot:
    sim.add(SimJob(id="j1", script=[answer], **job))  # type: ignore[arg-type]
    return await source_for(sim).poll(fetcher, watched("j1"))


async def poll_error(sim: Simulator, fetcher: Fetcher, answer: Answer) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await poll(sim, fetcher, answer)
    return caught.value


@pytest.mark.parametrize(
    ("answer", "state"),
    [
        (running(0.35), State.RUNNING),
        (running(0.35, "Running"), State.RUNNING),
        (succeeded("SUCCEEDED"), State.SUCCEEDED),
        (succeeded("Success"), State.SUCCEEDED),
        (succeeded("Finished"), State.SUCCEEDED),
        (failed("FAILED"), State.FAILED),
        (failed("Failed"), State.FAILED),
        (Answer(status="Queued"), State.UNKNOWN),
    ],
)
async def test_every_status_vocabulary_is_read(
    sim: Simulator, fetcher: Fetcher, answer: Answer, state: State
) -> None:
    snap = await poll(sim, fetcher, answer)
    assert snap.state is state
    assert snap.raw_status == answer.status


async def test_a_running_job_reads_progress_type_and_begin_time(
    sim: Simulator, fetcher: Fetcher
) -> None:
    begin = datetime(2019, 12, 6, 6, 49, 4, tzinfo=UTC)
    snap = await poll(sim, fetcher, running(0.35), type="importAsset", begin_time=begin)
    assert snap.progress == 0.35
    assert snap.type == "importAsset"
    assert snap.begin_time == begin
    assert snap.end_time is None


async def test_a_finished_export_carries_its_archive_id(sim: Simulator, fetcher: Fetcher) -> None:
    snap = await poll(sim, fetcher, succeeded(), archive_id="arch-1")
    assert snap.archive_id == "arch-1"
    assert snap.end_time is not None


@pytest.mark.parametrize("key", ["reasons", "reason"])
async def test_failure_reasons_are_read_under_either_key(
    sim: Simulator, fetcher: Fetcher, key: str
) -> None:
    snap = await poll(sim, fetcher, failed(reasons_key=key), reasons=REASONS)
    assert snap.reasons == (
        Reason("application", "orders-app", "ROMA.1", "exists"),
        Reason("task", "sync", "ROMA.2", "no source"),
    )


async def test_the_token_is_sent_and_the_job_instance_overrides_the_source(
    sim: Simulator, fetcher: Fetcher
) -> None:
    sim.instances.add("other-instance")
    sim.add(SimJob(id="j1", script=[running(0.1)]))
    await source_for(sim).poll(fetcher, watched("j1", instance_id="other-instance"))
    path, headers = sim.requests[-1]
    assert path == f"/v2/{sim.project_id}/instances/other-instance/assets/jobs/j1"
    assert headers["X-Auth-Token"] == sim.token
    assert headers["User-Agent"].startswith("jobherald/")


@pytest.mark.parametrize(
    ("answer", "status", "code", "retryable"),
    [
        (http_error(403, "ROMA.00000101", "no permission"), 403, "ROMA.00000101", False),
        (
            http_error(404, "ROMA.00110006", "The resource does not exist."),
            404,
            "ROMA.00110006",
            False,
        ),
        (http_error(500, "APIG.9999", "internal"), 500, "APIG.9999", True),
        (http_error(503), 503, None, True),
        (http_error(429, "APIG.0308", "throttled"), 429, "APIG.0308", True),
        (
            Answer(
                http_status=401, json_body={"error": {"code": "APIG.1002", "message": "bad token"}}
            ),
            401,
            "APIG.1002",
            False,
        ),
    ],
)
async def test_error_answers_become_typed_errors(
    sim: Simulator, fetcher: Fetcher, answer: Answer, status: int, code: str | None, retryable: bool
) -> None:
    error = await poll_error(sim, fetcher, answer)
    assert error.kind == "http"
    assert error.status == status
    assert error.error_code == code
    assert error.retryable is retryable
    assert error.request_id and len(error.request_id) == 32
    assert error.request_id in error.detail
    assert sim.token not in error.detail


async def test_a_bad_token_is_an_error_that_does_not_echo_it(
    sim: Simulator, fetcher: Fetcher
) -> None:
    sim.add(SimJob(id="j1", script=[running(0.1)]))
    with pytest.raises(FetchError) as caught:
        await source_for(sim, auth=TokenAuth(SecretStr("wrong-secret"), None)).poll(
            fetcher, watched("j1")
        )
    assert caught.value.status == 401
    assert caught.value.error_code == "APIG.1002"
    assert "wrong-secret" not in caught.value.detail


async def test_an_html_body_is_a_body_error_with_a_preview(
    sim: Simulator, fetcher: Fetcher
) -> None:
    error = await poll_error(sim, fetcher, Answer(raw_body=b"<html>gateway says hi</html>"))
    assert error.kind == "body"
    assert "<html>gateway says hi</html>" in error.message
    assert not error.retryable


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "unexpected answer: expected a JSON object, got list"),
        ({"id": "j1"}, "unexpected answer: no 'status' field"),
        (
            {"status": "RUNNING", "progress_percent": "lots"},
            "unexpected answer: progress_percent 'lots' is not a number",
        ),
    ],
)
async def test_json_that_is_not_a_job_is_a_body_error(
    sim: Simulator, fetcher: Fetcher, body: object, message: str
) -> None:
    error = await poll_error(sim, fetcher, Answer(json_body=body))
    assert (error.kind, error.message) == ("body", message)


async def test_a_slow_answer_is_a_timeout(sim: Simulator, fetcher: Fetcher) -> None:
    sim.add(SimJob(id="j1", script=[Answer(status="RUNNING", delay=2.0)]))
    with pytest.raises(FetchError) as caught:
        await source_for(sim, timeout=0.2).poll(fetcher, watched("j1"))
    assert caught.value.kind == "timeout"
    assert caught.value.retryable


async def test_a_closed_port_is_a_connection_error(fetcher: Fetcher) -> None:
    source = RomaConnect(
        Source(
            "roma",
            "http://127.0.0.1:9",
            "p",
            "i",
            TokenAuth(SecretStr("t"), None),
            1.0,
            True,
            "roma-connect",
        )
    )
    with pytest.raises(FetchError) as caught:
        await source.poll(fetcher, watched("j1"))
    assert caught.value.kind == "connection"
    assert "127.0.0.1:9" in caught.value.message


def test_a_percentage_progress_is_read_as_a_fraction() -> None:
    assert parse_job({"status": "RUNNING", "progress_percent": 35}).progress == 0.35
    assert parse_job({"status": "RUNNING", "progress_percent": 0.35}).progress == 0.35
    assert parse_job({"status": "RUNNING"}).progress is None
