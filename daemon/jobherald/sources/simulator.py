"""A ROMA Connect simulator: an aiohttp app answering "Obtaining Job Progress", and the
calls that start asset jobs (export, import, delete) and download an export's archive.

It serves the demo and the tests. Each job plays a script of answers, one per
poll, repeating the last one; an answer can be a status, an error in one of the
shapes the real service uses, a body that is not JSON, or a slow answer. A job
started through the API runs for ``run_for`` seconds, then succeeds; an export's
archive can be downloaded once, after which the job reads Finished.
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
# The simulator's answer to a second export (or import) while one of the user's runs.
BUSY = ("ROMA.00110040", "An asset job of this user is running: one at a time.")
BAD_REQUEST = "ROMA.00110001"


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
    retry_after: float | str | None = None,
) -> Answer:
    """An error answer; ``retry_after`` seconds, or the header's text as given (a date)."""
    shown = f"{retry_after:g}" if isinstance(retry_after, int | float) else retry_after
    headers = {"Retry-After": shown} if shown is not None else {}
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
    # An export whose archive was downloaded: it reads Finished, without its archive_id.
    downloaded: bool = False

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
        if word in ("succeeded", "success") and self.downloaded:
            body["status"] = "Finished"
        elif word in ("succeeded", "success") and self.archive_id:
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
        self.verify_signature: Callable[[web.Request, bytes], bool] | None = None
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
        assets = "/v2/{project_id}/instances/{instance_id}/assets"
        self.app.router.add_post(f"{assets}/export", self._export)
        self.app.router.add_post(f"{assets}/import", self._import)
        self.app.router.add_post(f"{assets}/delete", self._delete)
        self.app.router.add_get(f"{assets}/archives/{{archive_id}}", self._archive)
        # Export archives by id (made when an export is started, or given by a test); each
        # can be downloaded once, whole: a download cut off midway leaves it downloadable.
        self.archives: dict[str, bytes] = {}
        self.downloaded: list[str] = []
        self.download_attempts: list[str] = []
        self.archive_chunk = 64 * 1024
        self.archive_chunk_delay = 0.0
        # Archives sent a byte at a time, this many seconds apart; archives that are an
        # endless stream of zeros without a Content-Length.
        self.trickling_archives: dict[str, float] = {}
        self.endless_archives: set[str] = set()
        # Archives whose answer's head trickles: a byte every this many seconds, for ever.
        self.trickling_heads: dict[str, float] = {}
        # The next this many downloads are answered 503 (a service having a bad moment).
        self.archive_errors = 0
        # Jobs started through the API: how long they run, and what each call asked for.
        self.run_for = 1.0
        self.started: list[dict[str, Any]] = []
        self.uploads: dict[str, bytes] = {}
        self._running: dict[tuple[str, str], SimJob] = {}
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

    def archive_for(self, job: SimJob) -> bytes:
        """The archive of an export job (made up once, from its id, if not given)."""
        assert job.archive_id is not None
        if job.archive_id not in self.archives:
            self.archives[job.archive_id] = make_archive({"job": job.id}, 2048)
        return self.archives[job.archive_id]

    def _user(self, request: web.Request) -> str:
        """Whose call it is: the token, or the access key of a signed request."""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("SDK-HMAC-SHA256 "):
            return auth.split("Access=", 1)[-1].split(",", 1)[0]
        return request.headers.get("X-Auth-Token", "")

    def _refusal(
        self, request: web.Request, headers: dict[str, str], body: bytes = b""
    ) -> web.Response | None:
        """The answer to a call with bad credentials, project or instance; None if fine."""
        if not self._authorised(request, body):
            return _error(401, "APIG.1002", "Incorrect token or token resolution failed", headers)
        if request.match_info["project_id"] != self.project_id:
            return _error(403, "ROMA.00000101", "No permission for this project", headers)
        if request.match_info["instance_id"] not in self.instances:
            return _error(500, "ROMA.00110002", "The instance does not exist.", headers)
        return None

    def _start(
        self, request: web.Request, kind: str, asked: dict[str, Any], archive: bool
    ) -> SimJob | web.Response:
        """A new job of this kind, or ROMA's refusal when one of the user's is running."""
        headers = {"X-Request-Id": uuid.uuid4().hex}
        key = (self._user(request), kind)
        running_job = self._running.get(key)
        if (
            kind != "deleteAsset"
            and running_job is not None
            and running_job.finish_at is not None
            and time.monotonic() < running_job.finish_at
        ):
            return _error(400, *BUSY, headers)
        job_id = uuid.uuid4().hex
        job = SimJob(
            job_id,
            [running(0.4), succeeded()],
            type=kind,
            archive_id=uuid.uuid4().hex if archive else None,
            begin_time=datetime.now(UTC),
            duration=timedelta(seconds=self.run_for),
            finish_at=time.monotonic() + self.run_for,
        )
        if archive:
            self.archives[job.archive_id or ""] = make_archive(asked, 4096)
        self.add(job)
        self._running[key] = job
        self.started.append({"kind": kind, "job_id": job_id, **asked})
        return job

    async def _export(self, request: web.Request) -> web.Response:
        return await self._start_with_ids(request, "exportAsset", archive=True)

    async def _delete(self, request: web.Request) -> web.Response:
        return await self._start_with_ids(request, "deleteAsset", archive=False)

    async def _start_with_ids(self, request: web.Request, kind: str, archive: bool) -> web.Response:
        self.requests.append((request.path, dict(request.headers)))
        headers = {"X-Request-Id": uuid.uuid4().hex}
        body = await request.read()
        refusal = self._refusal(request, headers, body)
        if refusal is not None:
            return refusal
        asked = _asset_ids(body, headers)
        if isinstance(asked, web.Response):
            return asked
        job = self._start(request, kind, asked, archive)
        if isinstance(job, web.Response):
            return job
        return web.json_response({"job_id": job.id}, headers=headers)

    async def _import(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers)))
        headers = {"X-Request-Id": uuid.uuid4().hex}
        body = await request.read()
        refusal = self._refusal(request, headers, body)
        if refusal is not None:
            return refusal
        if request.query.get("type", "AddNew") not in ("AddNew", "Merge"):
            return _error(400, BAD_REQUEST, "type must be AddNew or Merge.", headers)
        if not request.content_type.startswith("multipart/"):
            return _error(400, BAD_REQUEST, "Expected a multipart upload.", headers)
        name, data = _upload(request.headers["Content-Type"], body)
        if not data or not _is_zip(data):
            return _error(
                400, BAD_REQUEST, "ImportAssetRequestBody is not an asset package.", headers
            )
        asked = {
            "file": name,
            "type": request.query.get("type", "AddNew"),
            "prefix": request.query.get("prefix"),
            "datasource_overwrite": request.query.get("datasource_overwrite", "false"),
        }
        job = self._start(request, "importAsset", asked, archive=False)
        if isinstance(job, web.Response):
            return job
        self.uploads[job.id] = data
        return web.json_response({"job_id": job.id}, headers=headers)

    async def _archive(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers)))
        headers = {"X-Request-Id": uuid.uuid4().hex}
        refusal = self._refusal(request, headers)
        if refusal is not None:
            return refusal
        archive_id = request.match_info["archive_id"]
        self.download_attempts.append(archive_id)
        job = next((j for j in self.jobs.values() if j.archive_id == archive_id), None)
        if job is not None and job.archive_id not in self.archives:
            self.archive_for(job)
        data = self.archives.get(archive_id)
        if data is None or archive_id in self.downloaded:
            return _error(404, *NOT_FOUND, headers)
        if self.archive_errors > 0:
            self.archive_errors -= 1
            return _error(503, "APIG.0201", "Backend unavailable", headers)
        response = web.StreamResponse(
            headers={
                **headers,
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{archive_id}.zip"',
            }
        )
        endless = archive_id in self.endless_archives
        if not endless:
            response.content_length = len(data)
        if (pace := self.trickling_heads.get(archive_id)) is not None and request.transport:
            # Written by hand under aiohttp: a status line, then a header a byte at a time.
            request.transport.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not request.transport.is_closing():
                await asyncio.sleep(pace)
                request.transport.write(b"x")
            raise ConnectionResetError("the client gave up on the head")
        await response.prepare(request)
        if endless:  # zeros, without a length, until the client gives up
            while True:
                await response.write(bytes(self.archive_chunk))
                await asyncio.sleep(0)
        trickle = self.trickling_archives.get(archive_id)
        chunk = 1 if trickle is not None else self.archive_chunk
        for start in range(0, len(data), chunk):
            if trickle is not None or self.archive_chunk_delay:
                await asyncio.sleep(trickle if trickle is not None else self.archive_chunk_delay)
            await response.write(data[start : start + chunk])
        await response.write_eof()
        # Sent whole: it cannot be downloaded again, and its job reads Finished.
        self.downloaded.append(archive_id)
        if job is not None:
            job.downloaded = True
        return response

    def _authorised(self, request: web.Request, body: bytes = b"") -> bool:
        if request.headers.get("Authorization", "").startswith("SDK-HMAC-SHA256 "):
            self.signed_requests += 1
            return self.verify_signature is not None and self.verify_signature(request, body)
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


def _asset_ids(raw: bytes, headers: dict[str, str]) -> dict[str, Any] | web.Response:
    """The application and task ids of an export or delete call, or ROMA's refusal."""
    try:
        body = json.loads(raw)
        apps = [str(a["id"]) for a in body.get("apps") or []]
        tasks = [str(t["id"]) for t in body.get("tasks") or []]
    except (ValueError, TypeError, KeyError, AttributeError):
        return _error(400, BAD_REQUEST, "The request body is not valid.", headers)
    if not apps and not tasks:
        return _error(400, BAD_REQUEST, "No application or task given.", headers)
    if len(apps) + len(tasks) > 100:
        return _error(400, BAD_REQUEST, "At most 100 applications and tasks.", headers)
    return {"apps": apps, "tasks": tasks}


def _upload(content_type: str, raw: bytes) -> tuple[str | None, bytes]:
    """The file name and bytes of a multipart body's ImportAssetRequestBody part."""
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    if not message.is_multipart():
        return None, b""
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "ImportAssetRequestBody":
            payload = part.get_payload(decode=True)
            return part.get_filename(), payload if isinstance(payload, bytes) else b""
    return None, b""


def make_archive(contents: dict[str, Any], size: int) -> bytes:
    """A zip like an asset package: a manifest of what it holds, and some bulk."""
    import io
    import os
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(contents, sort_keys=True))
        archive.writestr("assets.bin", os.urandom(size))
    return buffer.getvalue()


def _is_zip(data: bytes) -> bool:
    import io
    import zipfile

    return zipfile.is_zipfile(io.BytesIO(data))


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
