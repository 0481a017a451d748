"""Any JSON job API (`type = "http-json"`): the examples of config.example.toml, as written,
against fakes serving the real shapes of GitHub Actions, Google operations and Kubernetes."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from jobherald import config as config_module
from jobherald.errors import ConfigError
from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, failed, running, succeeded
from tests.conftest import Clock, LocalApp, Receiver, jobherald

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"

T0 = "2026-12-02T10:00:00Z"
T1 = "2026-12-02T10:04:30Z"

# What each fake answers, poll after poll (the last answer repeats).
GITHUB: dict[str, list[dict[str, Any]]] = {
    "101": [
        {"status": "queued", "conclusion": None},
        {"status": "in_progress", "conclusion": None},
        {"status": "completed", "conclusion": "success"},
    ],
    "102": [
        {"status": "in_progress", "conclusion": None},
        {"status": "completed", "conclusion": "failure"},
    ],
}
OPERATIONS: dict[str, list[dict[str, Any]]] = {
    "op-a": [
        {"done": False, "metadata": {"progressPercent": 40, "createTime": T0}},
        {"done": True, "metadata": {"progressPercent": 100, "createTime": T0, "endTime": T1}},
    ],
    "op-b": [
        {
            "done": True,
            "metadata": {"createTime": T0, "endTime": T1},
            "error": {"code": 9, "message": "Quota 'CPUS' exceeded."},
        }
    ],
}
K8S: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("batch", "nightly-etl"): [
        {"status": {"active": 1, "startTime": T0}},
        {
            "status": {
                "succeeded": 1,
                "startTime": T0,
                "completionTime": T1,
                "conditions": [{"type": "Complete", "status": "True"}],
            }
        },
    ],
    ("batch", "reindex"): [
        {
            "status": {
                "failed": 4,
                "startTime": T0,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    }
                ],
            }
        }
    ],
}


class Fakes(LocalApp):
    """GitHub's, Google's and Kubernetes' job endpoints, with their own auth checks."""

    def __init__(self) -> None:
        super().__init__()
        self.polls: dict[str, int] = {}
        self.refused = 0
        self.app.router.add_get("/repos/acme/app/actions/runs/{id}", self._github)
        self.app.router.add_get("/v1/projects/my-project/operations/{id}", self._operation)
        self.app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs/{id}", self._k8s)

    def _next(self, key: str, script: list[dict[str, Any]]) -> dict[str, Any]:
        n = self.polls[key] = self.polls.get(key, 0) + 1
        return script[min(n, len(script)) - 1]

    def _bearer(self, request: web.Request, token: str) -> bool:
        ok = request.headers.get("Authorization") == f"Bearer {token}"
        self.refused += not ok
        return ok

    async def _github(self, request: web.Request) -> web.Response:
        run = request.match_info["id"]
        if not self._bearer(request, "gh-token") or "vnd.github" not in request.headers["Accept"]:
            return web.json_response({"message": "Bad credentials"}, status=401)
        if run not in GITHUB:
            return web.json_response({"message": "Not Found"}, status=404)
        answer = self._next(run, GITHUB[run])
        return web.json_response(
            {
                "id": int(run),
                "name": "CI",
                **answer,
                "run_started_at": T0,
                "updated_at": T1,
                "html_url": f"https://github.com/acme/app/actions/runs/{run}",
            }
        )

    async def _operation(self, request: web.Request) -> web.Response:
        name = request.match_info["id"]
        if not self._bearer(request, "gcp-token"):
            return web.json_response({"error": {"code": 401, "message": "no"}}, status=401)
        answer = self._next(name, OPERATIONS[name])
        return web.json_response({"name": f"projects/my-project/operations/{name}", **answer})

    async def _k8s(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["id"])
        if not self._bearer(request, "k8s-token"):
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        answer = self._next("/".join(key), K8S[key])
        return web.json_response(
            {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": key[1]}, **answer}
        )


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    app = Fakes()
    await app.start()
    yield app
    await app.stop()


def example(name: str) -> str:
    """The commented `[sources.NAME]` block of config.example.toml, uncommented."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    block = []
    for line in lines[lines.index(f"# [sources.{name}]") :]:
        if not line.startswith("# "):
            break  # a bare "#" or the end of the comment ends the block
        block.append(line[2:])
    return "\n".join(block) + "\n"


def pointed(block: str, base: str, tokens: Path) -> str:
    """An example block aimed at the fakes, with its token file in a test folder."""
    block = re.sub(r'url = "https://[^/"]+', f'url = "{base}', block)
    name = re.search(r"\[sources\.([\w-]+)\]", block)
    assert name is not None
    token_file = tokens / f"{name[1]}.token"
    token_file.write_text({"gcp-ops": "gcp-token", "k8s": "k8s-token"}.get(name[1], ""))
    return re.sub(r'token_file = "[^"]+"', f'token_file = "{token_file}"', block)


async def test_the_examples_watch_real_shapes_and_tell_each_finish_once(
    fakes: Fakes,
    sim: Simulator,
    receiver: Receiver,
    tmp_path: Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """All three source types in one config: ROMA Connect and Huawei Cloud's job API on
    the simulator, and the three http-json examples on their fakes."""
    monkeypatch.setenv("GITHUB_TOKEN", "gh-token")
    sim.add(SimJob("exp", [running(0.5), succeeded()], archive_id="arch-1"))
    sim.add(SimJob("vm", [running(0.5), failed()], type="createServers", sub_jobs_total=2))
    text = '[daemon]\ndatabase = "sqlite:///jobherald.db"\nlost_after = 1\n\n'
    text += (
        f'[sources.roma]\ntype = "roma-connect"\nendpoint = "{sim.url}"\n'
        f'project_id = "{sim.project_id}"\ninstance_id = "{next(iter(sim.instances))}"\n'
        f'token = "{sim.token}"\n\n'
        f'[sources.ecs]\ntype = "huawei-job"\nendpoint = "{sim.url}"\n'
        f'project_id = "{sim.project_id}"\ntoken = "{sim.token}"\n\n'
    )
    for name in ("github", "gcp-ops", "k8s"):
        text += pointed(example(name), fakes.base_url, tmp_path) + "\n"
    text += f'[notifiers.ops]\nurls = ["{receiver.url()}"]\non = ["succeeded", "failed", "lost"]\n'
    text += "digest_after = 0\n"  # one message per finish: each is checked by its title
    jobs = [
        ("exp", "roma", None),
        ("vm", "ecs", None),
        ("101", "github", None),
        ("102", "github", None),
        ("999", "github", None),
        ("op-a", "gcp-ops", None),
        ("op-b", "gcp-ops", None),
        ("nightly-etl", "k8s", "batch"),
        ("reindex", "k8s", "batch"),
    ]
    for job_id, source, namespace in jobs:
        text += f'\n[[jobs]]\nid = "{job_id}"\nsource = "{source}"\n'
        if namespace:
            text += f'params = {{ namespace = "{namespace}" }}\n'
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    cfg = config_module.load(path)

    await Daemon(cfg, clock).run_once()
    code, out, _ = await jobherald("status", "--json", "-c", str(path))
    assert code == 0
    first = {s["id"]: s for s in json.loads(out)}
    assert (first["101"]["status"], first["101"]["raw_status"]) == ("running", "queued")
    assert (first["op-a"]["status"], first["op-a"]["progress"]) == ("running", 0.4)
    assert first["nightly-etl"]["raw_status"] == "Running"
    for _ in range(3):
        clock.advance(60)
        await Daemon(cfg, clock).run_once()

    code, out, _ = await jobherald("status", "--json", "-c", str(path))
    status = {s["id"]: s for s in json.loads(out)}
    assert {k: (s["status"], s["raw_status"]) for k, s in status.items()} == {
        "exp": ("succeeded", "SUCCEEDED"),
        "vm": ("failed", "FAIL"),
        "101": ("succeeded", "success"),
        "102": ("failed", "failure"),
        "999": ("lost", None),
        "op-a": ("succeeded", "succeeded"),
        "op-b": ("failed", "failed"),
        "nightly-etl": ("succeeded", "Complete"),
        "reindex": ("failed", "Failed"),
    }
    assert status["101"]["link"] == "https://github.com/acme/app/actions/runs/101"
    assert status["op-a"]["progress"] == 1.0
    assert status["op-b"]["reasons"] == [
        {
            "resource_type": None,
            "resource_name": None,
            "error_code": "9",
            "error_msg": "Quota 'CPUS' exceeded.",
        }
    ]
    assert status["reindex"]["reasons"][0]["error_code"] == "BackoffLimitExceeded"
    assert receiver.titles() == [
        "101 succeeded",
        "102 failed",
        "999 lost",
        "exp succeeded",
        "nightly-etl succeeded",
        "op-a succeeded",
        "op-b failed",
        "reindex failed",
        "vm failed",
    ]
    reindex = next(m for m in receiver.messages if m["title"] == "reindex failed")
    assert "Job has reached the specified backoff limit" in reindex["message"]
    assert fakes.refused == 0  # every request carried its source's credentials
    code, out, _ = await jobherald("history", "101", "--json", "-c", str(path))
    assert [h["to"] for h in json.loads(out)] == ["running", "succeeded"]


async def test_basic_auth_templates_and_a_custom_not_found(
    receiver: Receiver, tmp_path: Path, clock: Clock
) -> None:
    seen: list[tuple[str, str | None]] = []

    async def run(request: web.Request) -> web.Response:
        seen.append((request.raw_path, request.headers.get("Authorization")))
        if request.match_info["id"] == "gone":
            return web.json_response({"detail": "expired"}, status=410)
        return web.json_response({"state": {"phase": "DONE"}, "pct": 1})

    app = LocalApp()
    app.app.router.add_get("/pipelines/{team}/runs/{id}", run)
    await app.start()
    try:
        path = tmp_path / "config.toml"
        path.write_text(
            '[daemon]\ndatabase = "sqlite:///jobherald.db"\nlost_after = 1\n\n'
            "[sources.ci]\n"
            'type = "http-json"\n'
            f'url = "{app.base_url}/pipelines/{{team}}/runs/{{job_id}}"\n'
            'status = "state.phase"\nsucceeded = ["done"]\nfailed = ["error"]\n'
            'progress = "pct"\nnot_found = [404, 410]\n\n'
            "[sources.ci.auth]\n"
            'method = "basic"\nuser = "bot"\npassword = "s3cret"\n\n'
            f'[notifiers.ops]\nurls = ["{receiver.url()}"]\non = ["succeeded", "lost"]\n\n'
            '[[jobs]]\nid = "a:b.c"\nsource = "ci"\nname = "deploy"\n'
            'params = { team = "web/ops dev" }\n\n'
            '[[jobs]]\nid = "gone"\nsource = "ci"\nparams = { team = "web" }\n',
            encoding="utf-8",
        )
        cfg = config_module.load(path)
        await Daemon(cfg, clock).run_once()
    finally:
        await app.stop()
    basic = "Basic " + base64.b64encode(b"bot:s3cret").decode()
    # Every part built from a job is URL-quoted: a slash in an id cannot change the path.
    assert ("/pipelines/web%2Fops%20dev/runs/a:b.c", basic) in seen
    assert receiver.titles() == ["deploy succeeded", "gone lost"]


@pytest.mark.parametrize("pct", ["1e999", "-1e999", "NaN", "inf"])
async def test_a_progress_that_is_no_fraction_is_refused_alike(
    tmp_path: Path, clock: Clock, pct: str
) -> None:
    async def run(request: web.Request) -> web.Response:
        return web.json_response({"phase": "RUNNING", "pct": pct})

    app = LocalApp()
    app.app.router.add_get("/runs/{id}", run)
    await app.start()
    try:
        path = tmp_path / "config.toml"
        path.write_text(
            '[daemon]\ndatabase = "sqlite:///jobherald.db"\n\n'
            f'[sources.ci]\ntype = "http-json"\nurl = "{app.base_url}/runs/{{job_id}}"\n'
            'status = "phase"\nsucceeded = ["done"]\nfailed = ["error"]\nrunning = ["running"]\n'
            'progress = "pct"\n\n[http]\nlisten = ""\n\n[[jobs]]\nid = "r1"\nsource = "ci"\n',
            encoding="utf-8",
        )
        await Daemon(config_module.load(path), clock).run_once()
    finally:
        await app.stop()
    code, out, _ = await jobherald("status", "--json", "-c", str(path))
    assert code == 0
    (row,) = json.loads(out)
    assert (row["progress"], row["status"]) == (None, "pending")
    assert row["error"] == f"body: unexpected answer: progress {pct!r} is not a number"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            'status = "status ==="',
            "sources.s.status: bad JMESPath 'status ===': ",
        ),
        (
            'status = "s"\nsucceeded = ["done"]\nfailed = ["Done"]',
            "sources.s.failed[0]: 'Done' is also in succeeded",
        ),
        (
            'status = "s"\nprogress = "a[?"',
            "sources.s.progress: bad JMESPath 'a[?': ",
        ),
        (
            'status = "s"\nurl = "ftp://h/{job_id}"',
            "sources.s.url: 'ftp://h/{job_id}' must start with https:// or http://host",
        ),
        (
            'status = "s"\nurl = "https://h/{job_id!r}"',
            "sources.s.url: bad placeholder {job_id}: use {name}",
        ),
        (  # a password in the url would reach messages and the database: never echoed
            'status = "s"\nurl = "http://bob:s3cret@h/{job_id}"',
            "sources.s.url: 'http://***@h/{job_id}' holds a user name or password: give them "
            'in [sources.s.auth] with method = "basic", user and password_file instead',
        ),
        (
            'status = "s"\n\n[sources.s.auth]\nmethod = "token"\ntoken = "t"',
            "sources.s.auth.method: unknown method 'token' (known: bearer, basic, password, aksk)",
        ),
    ],
)
def test_bad_http_json_sources_are_one_line_each(tmp_path: Path, lines: str, expected: str) -> None:
    body = lines if "url =" in lines else f'url = "https://h/runs/{{job_id}}"\n{lines}'
    if "succeeded" not in body:
        body = body.replace("\n\n[", '\nsucceeded = ["ok"]\nfailed = ["ko"]\n\n[', 1)
        if "succeeded" not in body:
            body += '\nsucceeded = ["ok"]\nfailed = ["ko"]'
    path = tmp_path / "config.toml"
    path.write_text(f'[sources.s]\ntype = "http-json"\n{body}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.problems[0].startswith(f"{path}: {expected}")


def test_a_placeholder_the_job_cannot_fill_and_params_elsewhere_are_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[sources.k]\ntype = "http-json"\nurl = "https://h/ns/{namespace}/jobs/{job_id}"\n'
        'status = "s"\nsucceeded = ["ok"]\nfailed = ["ko"]\n\n'
        '[sources.r]\ntype = "roma-connect"\nendpoint = "https://r"\nproject_id = "p"\n'
        'instance_id = "i"\ntoken = "t"\n\n'
        '[[jobs]]\nid = "a"\nsource = "k"\n\n'
        '[[jobs]]\nid = "b"\nsource = "r"\nparams = { x = "y" }\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert caught.value.problems == [
        f"{path}: jobs[0] (id 'a').params: source 'k' has {{namespace}} in its url: "
        "give namespace in this job's params",
        f"{path}: jobs[1] (id 'b').params: only for http-json sources ('r' is roma-connect)",
    ]


async def test_watch_gives_an_http_json_job_its_params(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[daemon]\ninclude = ["jobs.d/*.toml"]\n\n'
        '[sources.k8s]\ntype = "http-json"\n'
        'url = "https://k.example.com/apis/batch/v1/namespaces/{namespace}/jobs/{job_id}"\n'
        'status = "s"\nsucceeded = ["Complete"]\nfailed = ["Failed"]\n',
        encoding="utf-8",
    )
    code, _, err = await jobherald("watch", "etl", "--source", "k8s", "-c", str(path))
    assert (code, err) == (
        2,
        "jobs.d/etl.toml: jobs[0] (id 'etl').params: source 'k8s' has {namespace} in its url: "
        "give namespace in this job's params\n",
    )
    assert not (tmp_path / "jobs.d" / "etl.toml").exists()
    code, _, err = await jobherald(
        "watch", "etl", "--source", "k8s", "--param", "namespace=batché", "-c", str(path)
    )
    assert code == 0, err
    cfg = config_module.load(path)
    (job,) = cfg.jobs
    assert job.params == (("namespace", "batché"),)
    code, _, err = await jobherald("watch", "x", "-s", "k8s", "--param", "oops", "-c", str(path))
    assert (code, err) == (2, "jobherald: --param 'oops': give KEY=VALUE\n")


async def test_the_simulator_serves_the_github_example_too(
    sim: Simulator,
    receiver: Receiver,
    tmp_path: Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", sim.token)
    sim.add(SimJob("7001", [running(0.3), succeeded()]))
    path = tmp_path / "config.toml"
    path.write_text(
        '[daemon]\ndatabase = "sqlite:///jobherald.db"\n\n'
        + pointed(example("github"), sim.url, tmp_path)
        + f'\n[notifiers.ops]\nurls = ["{receiver.url()}"]\n\n'
        '[[jobs]]\nid = "7001"\nsource = "github"\nname = "release build"\n',
        encoding="utf-8",
    )
    cfg = config_module.load(path)
    for _ in range(2):
        await Daemon(cfg, clock).run_once()
        clock.advance(60)
    assert receiver.titles() == ["release build succeeded"]
    code, out, _ = await jobherald("status", "--json", "-c", str(path))
    (row,) = json.loads(out)
    assert (code, row["status"], row["link"]) == (
        0,
        "succeeded",
        "https://github.com/acme/app/actions/runs/7001",
    )


async def test_one_id_in_two_namespaces_is_two_jobs_and_the_first_keeps_its_history(
    fakes: Fakes, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(K8S, ("prod", "nightly-etl"), [{"status": {"active": 1, "startTime": T0}}])
    head = '[daemon]\ndatabase = "sqlite:///jobherald.db"\n\n'
    head += pointed(example("k8s"), fakes.base_url, tmp_path) + "\n"
    job = '\n[[jobs]]\nid = "nightly-etl"\nsource = "k8s"\nparams = {{ namespace = "{}" }}\n'
    path = tmp_path / "config.toml"
    path.write_text(head + job.format("batch"), encoding="utf-8")
    await Daemon(config_module.load(path), clock).run_once()
    code, out, _ = await jobherald("status", "--json", "-c", str(path))
    (alone,) = json.loads(out)
    assert (alone["id"], alone["key"], alone["status"]) == ("nightly-etl", "nightly-etl", "running")

    # The same job again is refused; the same id in another namespace is another job.
    path.write_text(head + job.format("batch") * 2, encoding="utf-8")
    with pytest.raises(ConfigError, match="duplicate job id 'nightly-etl'"):
        config_module.load(path)
    path.write_text(head + job.format("batch") + job.format("prod"), encoding="utf-8")
    cfg = config_module.load(path)
    batch, prod = "k8s/nightly-etl?namespace=batch", "k8s/nightly-etl?namespace=prod"
    assert [(j.id, j.upstream_id) for j in cfg.jobs] == [
        (batch, "nightly-etl"),
        (prod, "nightly-etl"),
    ]
    clock.advance(60)
    await Daemon(cfg, clock).run_once()
    assert fakes.polls == {"batch/nightly-etl": 2, "prod/nightly-etl": 1}
    code, out, _ = await jobherald("status", "--json", "-c", str(path))
    rows = {r["key"]: r for r in json.loads(out)}
    assert sorted(rows) == [batch, prod]  # the first job's row moved to its key: no third
    assert {r["id"] for r in rows.values()} == {"nightly-etl"}
    assert rows[batch]["status"] == "succeeded" and rows[prod]["status"] == "running"

    # An id two jobs have is ambiguous on the command line; a key or source/id is not.
    code, _, err = await jobherald("history", "nightly-etl", "-c", str(path))
    assert (code, err) == (
        2,
        f"jobherald: 'nightly-etl' is the id of 2 jobs: give one of {batch}, {prod} "
        "(the key that status --json shows)\n",
    )
    code, out, err = await jobherald("history", batch, "--json", "-c", str(path))
    assert code == 0, err
    assert [(t["from"], t["to"]) for t in json.loads(out)] == [
        (None, "running"),
        ("running", "succeeded"),
    ], "its history from before the second job came is kept"
