"""Huawei Cloud's shared job API: the jobs of ECS, EVS, IMS, BMS, VPC and others.

``GET {endpoint}/v1/{project_id}/jobs/{job_id}`` (``ShowJob``); the field names follow
the official SDK's model (``huaweicloudsdkecs``: ShowJobResponse, JobEntities, SubJob).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from jobherald.config import Source, WatchedJob
from jobherald.errors import FetchError
from jobherald.fetch import Fetcher, Response
from jobherald.model import Reason, Snapshot, State
from jobherald.sources.base import Advice, http_error, json_body, request_id, text, time_of
from jobherald.sources.huawei_auth import (
    GATEWAY_AUTH_CODES,
    error_fields,
    get_with_credentials,
    make_credentials,
    rejects_credentials,
)

STATUS_WORDS: dict[str, State] = {
    "SUCCESS": State.SUCCEEDED,
    "FAIL": State.FAILED,
    "RUNNING": State.RUNNING,
    "INIT": State.RUNNING,
}
_FINISHED = ("SUCCESS", "FAIL")

ADVICE = Advice(
    console="the Huawei Cloud console (the service's task or job list)",
    api="Huawei Cloud's job API (GET /v1/{project_id}/jobs/{job_id})",
    forbidden="Check that the account may read this project's jobs.",
    not_found="Check the job's id, and the source's endpoint (the service's region) and project_id.",
)


class HuaweiJob:
    """A job of Huawei Cloud's shared job API (``type = "huawei-job"``)."""

    advice = ADVICE

    def __init__(self, config: Source, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.credentials = make_credentials(
            config.auth, config.project_id, config.timeout, *([clock] if clock else [])
        )
        self._urls: dict[str, str] = {}

    def url_for(self, job: WatchedJob) -> str:
        url = self._urls.get(job.id)
        if url is None:
            c = self.config
            url = self._urls[job.id] = (
                f"{c.endpoint}/v1/{quote(c.project_id, safe='')}/jobs/{quote(job.id, safe='')}"
            )
        return url

    def forget(self, job: WatchedJob) -> None:
        self._urls.pop(job.id, None)

    async def poll(self, fetcher: Fetcher, job: WatchedJob) -> Snapshot:
        url = self.url_for(job)
        response = await get_with_credentials(
            fetcher, self.credentials, url, self.config, GATEWAY_AUTH_CODES
        )
        return parse_response(response)


def parse_response(response: Response) -> Snapshot:
    if response.status != 200:
        code, message = error_fields(response.body)
        raise http_error(
            response,
            code,
            message,
            not_found=response.status == 404,
            source_wide=rejects_credentials(response),
        )
    body = json_body(response)
    try:
        return parse_job(body)
    except (ValueError, TypeError) as exc:
        raise FetchError(
            "body", f"unexpected answer: {exc}", request_id=request_id(response)
        ) from None


def parse_job(body: Any) -> Snapshot:
    """Read a ShowJob answer into a Snapshot; ValueError if it is not one."""
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    raw_status = body.get("status")
    if not isinstance(raw_status, str) or not raw_status.strip():
        raise ValueError("no 'status' field")
    word = raw_status.strip().upper()
    entities = body.get("entities")
    if not isinstance(entities, dict):
        entities = {}
    sub_jobs = [s for s in entities.get("sub_jobs") or () if isinstance(s, dict)]
    reasons = []
    if body.get("fail_reason") or body.get("error_code"):
        reasons.append(
            Reason(
                resource_type=text(body.get("job_type")),
                resource_name=None,
                error_code=text(body.get("error_code")),
                error_msg=text(body.get("fail_reason")),
            )
        )
    for sub in sub_jobs:
        if str(sub.get("status", "")).upper() == "FAIL":
            reasons.append(
                Reason(
                    resource_type=text(sub.get("job_type")),
                    resource_name=_resource(sub.get("entities")),
                    error_code=text(sub.get("error_code")),
                    error_msg=text(sub.get("fail_reason")),
                )
            )
    return Snapshot(
        state=STATUS_WORDS.get(word, State.UNKNOWN),
        raw_status=raw_status.strip(),
        progress=_progress(entities.get("sub_jobs_total"), sub_jobs, word),
        type=text(body.get("job_type")),
        archive_id=None,
        reasons=tuple(reasons),
        begin_time=time_of(body.get("begin_time")),
        end_time=time_of(body.get("end_time")),
    )


def _progress(total: Any, sub_jobs: list[dict[str, Any]], word: str) -> float | None:
    """Finished sub jobs over ``sub_jobs_total``, when the answer gives a total."""
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        return 1.0 if word in _FINISHED and total is not None else None
    done = sum(1 for s in sub_jobs if str(s.get("status", "")).upper() in _FINISHED)
    return min(done / total, 1.0)


def _resource(entities: Any) -> str | None:
    """What a sub job worked on: its server, volume, image... id."""
    if not isinstance(entities, dict):
        return None
    for key in ("server_id", "volume_id", "image_id", "nic_id", "publicip_id", "vpc_id"):
        if entities.get(key):
            return str(entities[key])
    ids = [str(v) for k, v in entities.items() if k.endswith("_id") and v]
    return ids[0] if ids else None
