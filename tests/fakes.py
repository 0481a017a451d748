"""Fakes that speak Huawei Cloud's protocols: IAM tokens, and an AK/SK signature oracle."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from jobherald.sources.simulator import Simulator
from tests.conftest import LocalApp


class FakeIam(LocalApp):
    """``POST /v3/auth/tokens``: checks the password body, counts tokens, lets the simulator accept them."""

    def __init__(
        self,
        sim: Simulator,
        user: str = "ops-bot",
        password: str = "iam-s3cret",
        domain: str = "acct",
    ) -> None:
        super().__init__()
        self.sim = sim
        self.user, self.password, self.domain = user, password, domain
        self.fetches = 0
        self.bodies: list[dict[str, Any]] = []
        self.lifetime = timedelta(hours=24)
        self.down = False
        self.app.router.add_post("/v3/auth/tokens", self._tokens)

    @property
    def url(self) -> str:
        return self.base_url

    async def _tokens(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.down:
            return web.Response(status=503, text="IAM is down")
        body = await request.json()
        self.bodies.append(body)
        try:
            identity = body["auth"]["identity"]
            user = identity["password"]["user"]
            ok = (
                identity["methods"] == ["password"]
                and user["name"] == self.user
                and user["password"] == self.password
                and user["domain"]["name"] == self.domain
                and body["auth"]["scope"]["project"]
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            return web.Response(
                status=401,
                text=json.dumps(
                    {
                        "error": {
                            "code": 401,
                            "message": "The username or password is wrong.",
                            "title": "Unauthorized",
                        }
                    }
                ),
                content_type="application/json",
            )
        token = f"iam-token-{self.fetches}"
        self.sim.tokens.add(token)
        now = datetime.now(UTC)
        payload = {
            "token": {
                "issued_at": now.isoformat().replace("+00:00", "Z"),
                "expires_at": (now + self.lifetime).isoformat().replace("+00:00", "Z"),
            }
        }
        return web.Response(
            status=201,
            text=json.dumps(payload),
            headers={"X-Subject-Token": token},
            content_type="application/json",
        )


def sdk_signature_check(keys: dict[str, str]):  # type: ignore[no-untyped-def]
    """A verifier for the simulator built on huaweicloudsdkcore's own Signer (the oracle)."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

    def verify(request: web.Request, body: bytes) -> bool:
        authorization = request.headers["Authorization"]
        fields = dict(
            part.strip().split("=", 1) for part in authorization.split(" ", 1)[1].split(",")
        )
        sk = keys.get(fields["Access"])
        if sk is None:
            return False
        signed = fields["SignedHeaders"].split(";")
        headers = {name: request.headers[name] for name in signed}
        sdk_request = SdkRequest(
            method=request.method,
            schema="http",
            host=request.host,
            resource_path=request.raw_path.split("?", 1)[0],
            query_params=sorted(request.query.items()),
            header_params=headers,
            body=body,
        )
        expected = Signer(BasicCredentials(fields["Access"], sk)).sign(sdk_request)
        return bool(expected.header_params["Authorization"] == authorization)

    return verify


class FakeNtfy(LocalApp):
    """An ntfy server's publish API: ``POST /`` with a JSON message naming its topic."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app.router.add_post("/", self._publish)

    def url(self, topic: str) -> str:
        return f"ntfy://127.0.0.1:{self.port}/{topic}"

    async def _publish(self, request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        self.messages.append(message)
        self.headers.append(dict(request.headers))
        return web.json_response(
            {"id": f"m{len(self.messages)}", "event": "message", "topic": message.get("topic")}
        )


class Mailbox:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it is sent."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.server: Any = None
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        from email import message_from_bytes, policy

        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"

    async def start(self) -> None:
        import asyncio

        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: SMTP(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def url(self, to: str = "ops@example.com") -> str:
        return f"mailto://127.0.0.1:{self.port}?mode=insecure&from=jobherald@example.com&to={to}"
