"""What the Huawei Cloud source types share: credentials, one GET retried once with fresh
credentials when they were refused, and the error shape of Huawei Cloud's APIs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from typing import Any

from jobherald.config import Source, WatchedJob
from jobherald.errors import FetchError
from jobherald.fetch import Fetcher, Response
from jobherald.model import Snapshot
from jobherald.sources.base import http_error, json_body, request_id
from jobherald.sources.huawei_auth import (
    GATEWAY_AUTH_CODES,
    error_fields,
    make_credentials,
    rejects_credentials,
    send_with_credentials,
)


class HuaweiApi(ABC):
    """A job API of Huawei Cloud; a type says where a job is and how to read its answer."""

    # Codes meaning "bad credentials", and codes meaning "no such job" (beside a 404).
    auth_codes: frozenset[str] = GATEWAY_AUTH_CODES
    not_found_codes: frozenset[str] = frozenset()

    def __init__(self, config: Source, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.credentials = make_credentials(
            config.auth, config.project_id, config.timeout, *([clock] if clock else [])
        )

    def url_for(self, job: WatchedJob) -> str:
        # Made for each poll (under a microsecond): kept for 100,000 jobs, 20 MB.
        return self.make_url(job)

    @abstractmethod
    def make_url(self, job: WatchedJob) -> str:
        """Where the job is asked about."""

    @abstractmethod
    def parse(self, body: Any) -> Snapshot:
        """A 200 answer's JSON as a Snapshot; ValueError or TypeError if it is not one."""

    async def poll(self, fetcher: Fetcher, job: WatchedJob) -> Snapshot:
        """One job's snapshot; with fresh credentials once more if the service rejected them."""
        response = await send_with_credentials(
            fetcher, self.credentials, self.url_for(job), self.config, self.refused
        )
        return self.read(response)

    def refused(self, response: Response) -> bool:
        return rejects_credentials(response, self.auth_codes)

    def read(self, response: Response) -> Snapshot:
        if response.status != 200:
            code, message = error_fields(response.body)
            raise http_error(
                response,
                code,
                message,
                not_found=response.status == 404 or code in self.not_found_codes,
                source_wide=rejects_credentials(response, self.auth_codes),
            )
        body = json_body(response)
        try:
            return self.parse(body)
        except (ValueError, TypeError) as exc:
            raise FetchError(
                "body", f"unexpected answer: {exc}", request_id=request_id(response)
            ) from None
