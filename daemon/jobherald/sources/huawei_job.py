"""Huawei Cloud's shared job API: the jobs of ECS, EVS, IMS, BMS, VPC and others.

``GET {endpoint}/v1/{project_id}/jobs/{job_id}`` (``ShowJob``); the field names follow
the official SDK's model (``huaweicloudsdkecs``: ShowJobResponse, JobEntities, SubJob).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from jobherald.config import WatchedJob
from jobherald.model import Reason, Snapshot, State
from jobherald.sources.base import Advice, status_of, text, time_of
from jobherald.sources.huawei import HuaweiApi
from jobherald.sources.huawei_auth import credentials_advice

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
    credentials=credentials_advice,
)


class HuaweiJob(HuaweiApi):
    """A job of Huawei Cloud's shared job API (``type = "huawei-job"``)."""

    advice = ADVICE

    def make_url(self, job: WatchedJob) -> str:
        c = self.config
        return (
            f"{c.endpoint}/v1/{quote(c.project_id, safe='')}/jobs/{quote(job.upstream_id, safe='')}"
        )

    def parse(self, body: Any) -> Snapshot:
        return parse_job(body)


def parse_job(body: Any) -> Snapshot:
    """Read a ShowJob answer into a Snapshot; ValueError if it is not one."""
    body, raw_status = status_of(body)
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
