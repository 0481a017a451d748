"""Everything at once: a few dozen jobs on four hosts, every fault, three kinds of credentials."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobherald.config import load
from jobherald.service import Daemon
from jobherald.sources.simulator import (
    Answer,
    SimJob,
    Simulator,
    failed,
    http_error,
    running,
    succeeded,
)
from tests.conftest import Receiver, wait_for
from tests.fakes import FakeIam, sdk_signature_check

REASONS = [
    {"resource_type": "task", "resource_name": "t", "error_code": "ROMA.1", "error_msg": "bad"}
]
SECRETS = ("sim-token", "iam-s3cret", "sk-s3cret", "iam-token-1", "iam-token-2")


@pytest.fixture
async def hosts() -> AsyncIterator[dict[str, Simulator]]:
    sims = {name: Simulator() for name in ("tok", "iam", "aksk", "down")}
    for sim in sims.values():
        await sim.start()
    yield sims
    for sim in sims.values():
        await sim.stop()


def script(hosts: dict[str, Simulator]) -> dict[str, str]:
    """Add every job to its host; return the state each should end in."""
    expected: dict[str, str] = {}
    tok = hosts["tok"]
    for i in range(8):
        tok.add(SimJob(f"ok{i}", [running(0.2), running(0.6), succeeded()], archive_id=f"a{i}"))
        expected[f"ok{i}"] = "succeeded"
    for i in range(6):
        tok.add(SimJob(f"bad{i}", [running(0.3), failed()], reasons=REASONS))
        expected[f"bad{i}"] = "failed"
    for i in range(4):
        tok.add(SimJob(f"gone{i}", [running(0.3), http_error(404, "ROMA.00110006", "gone")]))
        expected[f"gone{i}"] = "lost"
        tok.add(
            SimJob(
                f"burst{i}",
                [running(0.1)] + [http_error(500, "APIG.9999", "x")] * 3 + [succeeded()],
            )
        )
        expected[f"burst{i}"] = "succeeded"
        tok.add(
            SimJob(
                f"slow{i}",
                [http_error(429, "APIG.0308", "throttled", retry_after=1), succeeded("Success")],
            )
        )
        expected[f"slow{i}"] = "succeeded"
        tok.add(
            SimJob(
                f"junk{i}", [Answer(raw_body=b"<html>proxy</html>")] * 2 + [succeeded("Finished")]
            )
        )
        expected[f"junk{i}"] = "succeeded"
    for i in range(2):
        tok.add(SimJob(f"hang{i}", [Answer(status="RUNNING", delay=1.0)] * 2 + [succeeded()]))
        expected[f"hang{i}"] = "succeeded"
    for i in range(6):
        hosts["iam"].add(SimJob(f"iam{i}", [running(0.1)] * 14 + [succeeded()]))
        expected[f"iam{i}"] = "succeeded"
    for i in range(4):
        hosts["aksk"].add(SimJob(f"signed{i}", [running(0.5), succeeded()]))
        expected[f"signed{i}"] = "succeeded"
        hosts["down"].add(SimJob(f"down{i}", [http_error(503, "APIG.9999", "down")]))
        expected[f"down{i}"] = "pending"
    return expected


def write_config(
    folder: Path, hosts: dict[str, Simulator], iam: FakeIam, receiver: Receiver
) -> Path:
    (folder / "iam.password").write_text("iam-s3cret\n")
    (folder / "roma.sk").write_text("sk-s3cret\n")
    jobs = [(job_id, name) for name, sim in hosts.items() for job_id in sim.jobs]
    text = f"""
[daemon]
database = "sqlite:///soak.db"
poll_interval = "300ms"
error_after = "4s"
retries = 1
host_concurrency = 4
shutdown_timeout = "3s"

[http]
listen = ""  # no fixed port: a jobherald may run on this machine

[sources.tok]
type = "roma-connect"
endpoint = "{hosts["tok"].url}"
project_id = "sim-project"
instance_id = "sim-instance"
token = "sim-token"
timeout = "500ms"

[sources.iam]
type = "roma-connect"
endpoint = "{hosts["iam"].url}"
project_id = "sim-project"
instance_id = "sim-instance"
[sources.iam.auth]
method = "password"
iam_endpoint = "{iam.url}"
user = "ops-bot"
password_file = "iam.password"
domain = "acct"
project = "cn-north-4"

[sources.aksk]
type = "roma-connect"
endpoint = "{hosts["aksk"].url}"
project_id = "sim-project"
instance_id = "sim-instance"
[sources.aksk.auth]
method = "aksk"
ak = "AK-SOAK"
sk_file = "roma.sk"

[sources.down]
type = "roma-connect"
endpoint = "{hosts["down"].url}"
project_id = "sim-project"
instance_id = "sim-instance"
token = "sim-token"

[notifiers.ops]
urls = ["{receiver.url()}"]
digest_after = 0  # one message per event: each is counted by its title below
"""
    for job_id, source in jobs:
        text += f'\n[[jobs]]\nid = "{job_id}"\nsource = "{source}"\n'
    path = folder / "config.toml"
    path.write_text(text)
    return path


@pytest.mark.timeout(120)
async def test_the_daemon_rides_out_everything_at_once(
    hosts: dict[str, Simulator],
    receiver: Receiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    iam = FakeIam(hosts["iam"])
    await iam.start()
    hosts["aksk"].verify_signature = sdk_signature_check({"AK-SOAK": "sk-s3cret"})
    expected = script(hosts)
    cfg = load(write_config(tmp_path, hosts, iam, receiver))
    daemon = Daemon(cfg)
    started = time.monotonic()
    task = asyncio.create_task(daemon.run())
    try:
        iam_host = hosts["iam"]
        await wait_for(
            lambda: all(j.polls >= 2 for j in iam_host.jobs.values()), 30, "IAM jobs polled"
        )
        iam_host.tokens.clear()  # a password change revokes the token in use
        finishing = sum(1 for state in expected.values() if state != "pending")
        down_errors = 4
        await wait_for(
            lambda: len(receiver.messages) >= finishing + down_errors, 60, "every message"
        )
        await asyncio.sleep(2.0)  # time for anything that should not come
        assert not task.done(), "the daemon stopped by itself"
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)
        await iam.stop()
    elapsed = time.monotonic() - started

    with sqlite3.connect(tmp_path / "soak.db") as conn:
        states = dict(conn.execute("select id, state from jobs").fetchall())
        down_errors_text = [
            r[0] for r in conn.execute("select error from jobs where id like 'down%'")
        ]
    assert states == expected
    assert all(e.startswith("HTTP 503 APIG.9999: down (request ") for e in down_errors_text)

    titles = Counter(m["title"].rsplit(" ", 1)[1] for m in receiver.messages)
    assert titles == {"succeeded": 32, "failed": 6, "lost": 4, "error": 4}
    assert sorted(m["title"] for m in receiver.messages if m["title"].endswith(" error")) == [
        f"down{i} error" for i in range(4)
    ]
    assert len({m["message"].rsplit("event ", 1)[1] for m in receiver.messages}) == len(
        receiver.messages
    )

    assert iam.fetches == 2, "a revoked IAM token is replaced with a single fetch"
    assert hosts["aksk"].signed_requests >= 8
    assert all(
        h["Authorization"].startswith("SDK-HMAC-SHA256 Access=AK-SOAK")
        for _, h in hosts["aksk"].requests
    )

    # The failing host: without backoff each of its jobs would be asked about every
    # 0.3 s plus the poll's own retry (about 1 s a poll); backed off, no more than
    # once every 3 s after the first few polls.
    down = hosts["down"].request_times
    late = [t for t in down if t > started + elapsed / 2]
    rate_per_job = len(late) / 4 / (elapsed / 2)
    assert rate_per_job < 1.0, f"{rate_per_job:.2f} requests/s per job on the failing host"

    for stored in tmp_path.glob("soak.db*"):
        data = stored.read_bytes()
        assert not [s for s in SECRETS if s.encode() in data]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not [s for s in SECRETS if s in logged]
