"""ROMA Connect's calls that start asset jobs (export, import, delete) and that download an
export's archive, with the credentials and error shape of the ROMA Connect source.

``POST {endpoint}/v2/{project_id}/instances/{instance_id}/assets/export|import|delete``
answer ``{"job_id": ...}``; ``GET .../assets/archives/{archive_id}`` is the archive, a zip
that can be downloaded once.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from jobherald.errors import FetchError
from jobherald.fetch import Fetcher, Response
from jobherald.sources.base import http_error, json_body, request_id
from jobherald.sources.huawei import HuaweiApi
from jobherald.sources.huawei_auth import error_fields, rejects_credentials, send_with_credentials

# The multipart field ROMA Connect reads the package from.
IMPORT_FIELD = "ImportAssetRequestBody"
IMPORT_MODES = ("AddNew", "Merge")


@dataclass(frozen=True, slots=True)
class Upload:
    """An asset package to import: its file name and bytes, and how to import it."""

    filename: str
    data: bytes
    mode: str | None = None
    prefix: str | None = None
    datasource_overwrite: bool = False


class RomaAssets:
    """One ROMA Connect source's asset calls."""

    def __init__(self, source: HuaweiApi) -> None:
        self.source = source
        self.config = source.config

    def base(self, instance_id: str) -> str:
        c = self.config
        return (
            f"{c.endpoint}/v2/{quote(c.project_id, safe='')}/instances/"
            f"{quote(instance_id, safe='')}/assets"
        )

    def archive_url(self, instance_id: str, archive_id: str) -> str:
        return f"{self.base(instance_id)}/archives/{quote(archive_id, safe='')}"

    async def export(
        self, fetcher: Fetcher, instance_id: str, apps: Sequence[str], tasks: Sequence[str]
    ) -> str:
        """Start an export of these applications and tasks; the new job's id."""
        return await self._start_with_ids(fetcher, instance_id, "export", apps, tasks)

    async def delete(
        self, fetcher: Fetcher, instance_id: str, apps: Sequence[str], tasks: Sequence[str]
    ) -> str:
        """Start deleting these applications and tasks; the new job's id."""
        return await self._start_with_ids(fetcher, instance_id, "delete", apps, tasks)

    async def import_(self, fetcher: Fetcher, instance_id: str, upload: Upload) -> str:
        """Start an import of a package; the new job's id."""
        from aiohttp import MultipartWriter

        query: dict[str, str] = {}
        if upload.mode:
            query["type"] = upload.mode
        if upload.prefix:
            query["prefix"] = upload.prefix
        if upload.datasource_overwrite:
            query["datasource_overwrite"] = "true"
        url = f"{self.base(instance_id)}/import"
        if query:
            url += "?" + urlencode(query, quote_via=quote)
        writer = MultipartWriter("form-data")
        part = writer.append(upload.data, {"Content-Type": "application/zip"})
        part.set_content_disposition("form-data", name=IMPORT_FIELD, filename=upload.filename)
        body = await writer.as_bytes()
        return await self._start(
            fetcher, url, body, f"multipart/form-data; boundary={writer.boundary}"
        )

    async def _start_with_ids(
        self,
        fetcher: Fetcher,
        instance_id: str,
        call: str,
        apps: Sequence[str],
        tasks: Sequence[str],
    ) -> str:
        payload: dict[str, Any] = {}
        if apps:
            payload["apps"] = [{"id": a} for a in apps]
        if tasks:
            payload["tasks"] = [{"id": t} for t in tasks]
        body = json.dumps(payload).encode()
        url = f"{self.base(instance_id)}/{call}"
        return await self._start(fetcher, url, body, "application/json;charset=utf8")

    async def _start(self, fetcher: Fetcher, url: str, body: bytes, content_type: str) -> str:
        """POST a call that starts a job, once (a timeout must not start two jobs)."""
        response = await send_with_credentials(
            fetcher,
            self.source.credentials,
            url,
            self.config,
            self.source.refused,
            method="POST",
            headers={"Content-Type": content_type},
            body=body,
            retry=False,
        )
        if response.status not in (200, 201, 202):
            raise self._refused_error(response)
        answer = json_body(response)
        job_id = answer.get("job_id") if isinstance(answer, dict) else None
        if not isinstance(job_id, str) or not job_id:
            raise FetchError("body", "the answer has no job_id", request_id=request_id(response))
        return job_id

    async def download(
        self,
        fetcher: Fetcher,
        instance_id: str,
        archive_id: str,
        sink: Callable[[bytes], Awaitable[None]],
        on_headers: Callable[[Mapping[str, str]], None] | None = None,
    ) -> Response:
        """Stream an export's archive into ``sink`` (``on_headers`` sees the answer's
        headers first); FetchError if it is not given."""
        response = await send_with_credentials(
            fetcher,
            self.source.credentials,
            self.archive_url(instance_id, archive_id),
            self.config,
            self.source.refused,
            sink=sink,
            on_headers=on_headers,
        )
        if response.status != 200:
            raise self._refused_error(response)
        return response

    def _refused_error(self, response: Response) -> FetchError:
        code, message = error_fields(response.body)
        return http_error(
            response,
            code,
            message,
            not_found=response.status in (404, 410) or code in self.source.not_found_codes,
            source_wide=rejects_credentials(response, self.source.auth_codes),
        )
