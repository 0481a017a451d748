"""Huawei Cloud ROMA Connect asset jobs: the URL, the status words, the error codes, advice.

``GET {endpoint}/v2/{project_id}/instances/{instance_id}/assets/jobs/{job_id}``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

from jobherald.config import WatchedJob
from jobherald.fetch import Fetcher, Response
from jobherald.model import Reason, Snapshot, State
from jobherald.sources.base import Advice, shorter, status_of, text, time_of
from jobherald.sources.huawei import HuaweiApi
from jobherald.sources.huawei_auth import GATEWAY_AUTH_CODES, credentials_advice

# Answers that say the credentials are bad (not that they lack a permission).
AUTH_CODES = GATEWAY_AUTH_CODES | {"ROMA.1000", "ROMA.1002"}
# Answers that say the job does not exist.
NOT_FOUND_CODES = frozenset({"ROMA.00110006"})

# ROMA Connect editions disagree on the words; compare case-insensitively.
STATUS_WORDS: dict[str, State] = {
    "running": State.RUNNING,
    "succeeded": State.SUCCEEDED,
    "success": State.SUCCEEDED,
    "finished": State.SUCCEEDED,
    "failed": State.FAILED,
}

ADVICE = Advice(
    console="the ROMA Connect console",
    api="ROMA Connect's job API",
    forbidden="Check that the account may read this instance's asset jobs.",
    not_found="Check the job's id and instance_id.",
    credentials=credentials_advice,
)


def state_from_status(raw: str) -> State:
    """Map a status word to a canonical state (``unknown`` if new to us)."""
    return STATUS_WORDS.get(raw.strip().lower(), State.UNKNOWN)


class RomaConnect(HuaweiApi):
    """Huawei Cloud ROMA Connect asset jobs (``check_asset_job_status``)."""

    advice = ADVICE
    auth_codes = AUTH_CODES
    not_found_codes = NOT_FOUND_CODES

    async def download_archive(
        self,
        fetcher: Fetcher,
        job: WatchedJob,
        archive_id: str,
        sink: Callable[[bytes], Awaitable[None]],
        on_headers: Callable[[Mapping[str, str]], None] | None = None,
    ) -> Response:
        """An export's archive (see ``ArchiveSource``); ROMA Connect gives it once."""
        from jobherald.sources.roma_assets import RomaAssets

        return await RomaAssets(self).download(
            fetcher, job.instance_id, archive_id, sink, on_headers=on_headers
        )

    def make_url(self, job: WatchedJob) -> str:
        c = self.config
        return (
            f"{c.endpoint}/v2/{quote(c.project_id, safe='')}/instances/"
            f"{quote(job.instance_id, safe='')}/assets/jobs/{quote(job.upstream_id, safe='')}"
        )

    def parse(self, body: Any) -> Snapshot:
        return parse_job(body)


def parse_job(body: Any) -> Snapshot:
    """Read a 200 body of "Obtaining Job Progress" into a Snapshot; ValueError if it is not one."""
    body, raw_status = status_of(body)
    reasons_raw = body.get("reasons")
    if reasons_raw is None:
        reasons_raw = body.get("reason")
    return Snapshot(
        state=state_from_status(raw_status),
        raw_status=raw_status.strip(),
        progress=_progress(body.get("progress_percent")),
        type=text(body.get("type")),
        archive_id=text(body.get("archive_id")),
        reasons=_reasons(reasons_raw),
        begin_time=time_of(body.get("begin_time")),
        end_time=time_of(body.get("end_time")),
    )


def _progress(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"progress_percent {shorter(value)} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"progress_percent {shorter(value)} is out of range")
    if number > 1.0:
        # Some answers give a percentage (35 for 35 %); the schema says 0..1.
        number = number / 100.0 if number <= 100.0 else 1.0
    return number


def _reasons(value: Any) -> tuple[Reason, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("'reasons' is not a list")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(Reason(None, None, None, item))
        elif isinstance(item, dict):
            out.append(
                Reason(
                    resource_type=text(item.get("resource_type")),
                    resource_name=text(item.get("resource_name")),
                    error_code=text(item.get("error_code")),
                    error_msg=text(item.get("error_msg")),
                )
            )
    return tuple(out)
