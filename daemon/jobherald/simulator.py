"""A ROMA Connect simulator: an aiohttp app answering "Obtaining Job Progress".

It serves the demo and the tests. Each job plays a script of answers, one per
poll, repeating the last one; an answer can be a status, an error in one of the
shapes the real service uses, a body that is not JSON, or a slow answer.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

NOT_FOUND = ("ROMA.00110006", "The resource does not exist.")


@dataclass
class Answer:
    """One answer to one poll."""

    status: str | None = None
    progress: float | None = None
    http_status: int = 200
    error_code: str | None = None
    error_msg: str | None = None
    raw_body: bytes | None = None
    json_body: Any = None
    delay: float = 0.0
    reasons_key: str = "reasons"
    headers: dict[str, str] = field(default_factory=dict)


def running(progress: float, status: str = "RUNNING") -> Answer:
    return Answer(status=status, progress=progress)


def succeeded(status: str = "SUCCEEDED") -> Answer:
    return Answer(status=status, progress=1.0)


def failed(status: str = "FAILED", reasons_key: str = "reasons") -> Answer:
    return Answer(status=status, progress=1.0, reasons_key=reasons_key)


def http_error(
    status: int,
    code: str | None = None,
    message: str | None = None,
    retry_after: float | None = None,
) -> Answer:
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return Answer(http_status=status, error_code=code, error_msg=message, headers=headers)


@dataclass
class SimJob:
    id: str
    script: list[Answer]
    type: str = "exportAsset"
    archive_id: str | None = None
    reasons: list[dict[str, str]] = field(default_factory=list)
    begin_time: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(minutes=3))
    duration: timedelta = timedelta(minutes=4, seconds=12)
    polls: int = 0
    # For Huawei Cloud's job API (GET /v1/{project}/jobs/{id}): how many sub jobs it has.
    sub_jobs_total: int | None = None
    # When set (a time.monotonic() value): the first answer until then, the last one after,
    # however many pollers ask (the script then follows the clock, not the polls).
    finish_at: float | None = None

    def next_answer(self) -> Answer:
        if self.finish_at is not None:
            self.polls += 1
            return self.script[-1] if time.monotonic() >= self.finish_at else self.script[0]
        answer = self.script[min(self.polls, len(self.script) - 1)]
        self.polls += 1
        return answer

    def body(self, answer: Answer) -> dict[str, Any]:
        assert answer.status is not None
        body: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "status": answer.status,
            "begin_time": _iso(self.begin_time),
        }
        if answer.progress is not None:
            body["progress_percent"] = answer.progress
        word = answer.status.lower()
        if word in ("succeeded", "success", "finished", "failed"):
            body["end_time"] = _iso(self.begin_time + self.duration)
        if word in ("succeeded", "success") and self.archive_id:
            body["archive_id"] = self.archive_id
        if word == "failed":
            body[answer.reasons_key] = self.reasons
        return body

    def huawei_body(self, answer: Answer) -> dict[str, Any]:
        """The answer in the shape of Huawei Cloud's ShowJob (ECS, EVS, IMS...)."""
        assert answer.status is not None
        word = {"succeeded": "SUCCESS", "success": "SUCCESS", "failed": "FAIL"}.get(
            answer.status.lower(), answer.status.upper()
        )
        body: dict[str, Any] = {
            "job_id": self.id,
            "job_type": self.type,
            "status": word,
            "begin_time": _iso(self.begin_time),
        }
        if word in ("SUCCESS", "FAIL"):
            body["end_time"] = _iso(self.begin_time + self.duration)
        if self.sub_jobs_total is None:
            return body
        total = self.sub_jobs_total
        done = total if word in ("SUCCESS", "FAIL") else round((answer.progress or 0) * total)
        subs = []
        for i in range(total):
            sub: dict[str, Any] = {
                "job_id": f"{self.id}-{i}",
                "job_type": "createSingleServer",
                "status": "SUCCESS" if i < done else "RUNNING",
                "entities": {"server_id": f"server-{i}"},
                "begin_time": _iso(self.begin_time),
            }
            if word == "FAIL" and i == total - 1:
                reason = self.reasons[0] if self.reasons else {}
                sub.update(
                    status="FAIL",
                    error_code=reason.get("error_code", "Ecs.0000"),
                    fail_reason=reason.get("error_msg", "request error"),
                )
            subs.append(sub)
        body["entities"] = {"sub_jobs_total": total, "sub_jobs": subs}
        return body


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Simulator:
    """The fake service; ``await start()`` serves it on 127.0.0.1 and returns its base URL."""

    def __init__(
        self,
        project_id: str = "sim-project",
        instance_id: str = "sim-instance",
        token: str = "sim-token",
    ) -> None:
        self.project_id = project_id
        self.instances = {instance_id}
        self.token = token
        self.tokens = {token}
        # When set, requests signed with AK/SK are accepted if this says the signature is good.
        self.verify_signature: Callable[[web.Request], bool] | None = None
        self.signed_requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        # Requests in flight for one job at once (a poller must never overlap its own polls).
        self.job_in_flight: dict[str, int] = {}
        self.max_job_in_flight = 0
        self.jobs: dict[str, SimJob] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.request_times: list[float] = []
        self.request_wall_times: list[float] = []
        self.app = web.Application()
        self.app.router.add_get(
            "/v2/{project_id}/instances/{instance_id}/assets/jobs/{job_id}", self._job
        )
        # Huawei Cloud's shared job API, served from the same jobs in its own shape.
        self.app.router.add_get("/v1/{project_id}/jobs/{job_id}", self._job)
        # A GitHub Actions run (for http-json sources), from the same jobs again.
        self.app.router.add_get("/repos/{owner}/{repo}/actions/runs/{job_id}", self._job)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def add(self, job: SimJob) -> SimJob:
        self.jobs[job.id] = job
        return job

    def polls(self, job_id: str) -> int:
        return sum(1 for path, _ in self.requests if path.endswith(f"/jobs/{job_id}"))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1]
        self.url = f"http://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _authorised(self, request: web.Request) -> bool:
        if request.headers.get("Authorization", "").startswith("SDK-HMAC-SHA256 "):
            self.signed_requests += 1
            return self.verify_signature is not None and self.verify_signature(request)
        return request.headers.get("X-Auth-Token") in self.tokens

    async def _job(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers)))
        self.request_times.append(time.monotonic())
        self.request_wall_times.append(time.time())
        job_id = request.match_info["job_id"]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        overlap = self.job_in_flight[job_id] = self.job_in_flight.get(job_id, 0) + 1
        self.max_job_in_flight = max(self.max_job_in_flight, overlap)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1
            self.job_in_flight[job_id] -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        headers = {"X-Request-Id": uuid.uuid4().hex}
        if "repo" in request.match_info:
            return self._github(request, headers)
        if not self._authorised(request):
            return _error(401, "APIG.1002", "Incorrect token or token resolution failed", headers)
        if request.match_info["project_id"] != self.project_id:
            return _error(403, "ROMA.00000101", "No permission for this project", headers)
        huawei = "instance_id" not in request.match_info
        if not huawei and request.match_info["instance_id"] not in self.instances:
            return _error(500, "ROMA.00110002", "The instance does not exist.", headers)
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return _error(404, *NOT_FOUND, headers)
        answer = job.next_answer()
        headers.update(answer.headers)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.raw_body is not None:
            return web.Response(
                status=answer.http_status,
                body=answer.raw_body,
                headers=headers,
                content_type="text/html",
            )
        if answer.json_body is not None:
            return web.json_response(answer.json_body, status=answer.http_status, headers=headers)
        if answer.http_status != 200:
            return _error(answer.http_status, answer.error_code, answer.error_msg, headers)
        return web.json_response(
            job.huawei_body(answer) if huawei else job.body(answer), headers=headers
        )

    def _github(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        """The job as a GitHub Actions workflow run (bearer token: the simulator's token)."""
        if request.headers.get("Authorization") not in {f"Bearer {t}" for t in self.tokens}:
            return web.json_response({"message": "Bad credentials"}, status=401, headers=headers)
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return web.json_response({"message": "Not Found"}, status=404, headers=headers)
        answer = job.next_answer()
        word = (answer.status or "").lower()
        status, conclusion = {
            "succeeded": ("completed", "success"),
            "success": ("completed", "success"),
            "failed": ("completed", "failure"),
        }.get(word, ("in_progress", None))
        owner, repo = request.match_info["owner"], request.match_info["repo"]
        return web.json_response(
            {
                "id": job.id,
                "status": status,
                "conclusion": conclusion,
                "run_started_at": _iso(job.begin_time),
                "updated_at": _iso(job.begin_time + job.duration),
                "html_url": f"https://github.com/{owner}/{repo}/actions/runs/{job.id}",
            },
            headers=headers,
        )


def _error(
    status: int, code: str | None, message: str | None, headers: dict[str, str]
) -> web.Response:
    body: dict[str, Any] = {"request_id": headers["X-Request-Id"]}
    if code is not None:
        body["error_code"] = code
    if message is not None:
        body["error_msg"] = message
    return web.Response(
        status=status, text=json.dumps(body), headers=headers, content_type="application/json"
    )
