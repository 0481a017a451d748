"""Huawei Cloud's shared job API (`type = "huawei-job"`): the shape, the words, the daemon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobherald import config as config_module
from jobherald.errors import ConfigError
from jobherald.model import Reason, State
from jobherald.service import Daemon
from jobherald.sources import registry
from jobherald.sources.huawei_job import parse_job
from jobherald.sources.simulator import SimJob, Simulator, failed, http_error, running, succeeded
from tests.conftest import Clock, ConfigWriter, Receiver, jobherald

# An answer of ShowJob as Huawei Cloud's API reference gives it (ECS, batch creation).
ECS_FAILED = {
    "job_id": "ff808082739334d80173943ec9b42130",
    "job_type": "createServers",
    "begin_time": "2020-07-30T09:25:35.573Z",
    "end_time": "2020-07-30T09:27:06.099Z",
    "status": "FAIL",
    "error_code": "Ecs.0000",
    "fail_reason": "request error",
    "entities": {
        "sub_jobs_total": 2,
        "sub_jobs": [
            {
                "job_id": "ff80808273933aa9017394412c4a0001",
                "job_type": "createSingleServer",
                "status": "SUCCESS",
                "entities": {"server_id": "a2ac7ec2-6c4a-4e0b-b7ea-2f3fc13ceb8c"},
                "begin_time": "2020-07-30T09:25:36.123Z",
                "end_time": "2020-07-30T09:26:59.019Z",
            },
            {
                "job_id": "ff80808273933aa9017394412c4a0002",
                "job_type": "createSingleServer",
                "status": "FAIL",
                "entities": {"server_id": "5f1b1a8e-5f3b-4b0e-9d3a-2c0e3b8c1f7d"},
                "error_code": "Ecs.0013",
                "fail_reason": "Insufficient EIP quota.",
            },
        ],
    },
}


def _fields(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON answer: "entities.sub_jobs[].status" and so on."""
    out: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}{key}"
            out.add(path)
            out |= _fields(item, f"{path}.")
    elif isinstance(value, list):
        for item in value:
            out |= _fields(item, prefix.rstrip(".") + "[].")
    return out


def test_the_fields_read_are_those_of_the_official_sdk_model() -> None:
    from huaweicloudsdkecs.v2 import JobEntities, ShowJobResponse, SubJob, SubJobEntities

    models = {
        "": ShowJobResponse,
        "entities.": JobEntities,
        "entities.sub_jobs[].": SubJob,
        "entities.sub_jobs[].entities.": SubJobEntities,
    }
    for path in _fields(ECS_FAILED):
        prefix, _, name = path.rpartition(".")
        model = models[prefix + "." if prefix else ""]
        assert name in model.attribute_map, f"{path} is not in {model.__name__}"


def test_a_failed_job_gives_its_reason_and_each_failed_sub_job() -> None:
    snap = parse_job(ECS_FAILED)
    assert (snap.state, snap.raw_status, snap.type, snap.progress) == (
        State.FAILED,
        "FAIL",
        "createServers",
        1.0,
    )
    assert snap.reasons == (
        Reason("createServers", None, "Ecs.0000", "request error"),
        Reason(
            "createSingleServer",
            "5f1b1a8e-5f3b-4b0e-9d3a-2c0e3b8c1f7d",
            "Ecs.0013",
            "Insufficient EIP quota.",
        ),
    )
    assert snap.begin_time is not None and snap.end_time is not None
    assert (snap.end_time - snap.begin_time).total_seconds() == pytest.approx(90.526)


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("SUCCESS", State.SUCCEEDED),
        ("FAIL", State.FAILED),
        ("RUNNING", State.RUNNING),
        ("INIT", State.RUNNING),
        ("running", State.RUNNING),
        ("PENDING_PAYMENT", State.UNKNOWN),
    ],
)
def test_status_words(status: str, state: State) -> None:
    assert parse_job({"status": status, "job_type": "x"}).state is state


def test_progress_is_finished_sub_jobs_over_the_total_when_given() -> None:
    body = json.loads(json.dumps(ECS_FAILED))
    body["status"] = "RUNNING"
    body["entities"]["sub_jobs"][1]["status"] = "RUNNING"
    body["entities"]["sub_jobs_total"] = 4
    assert parse_job(body).progress == 0.25
    assert parse_job({"status": "RUNNING"}).progress is None  # no total: no progress
    with pytest.raises(ValueError, match="no 'status' field"):
        parse_job({"job_id": "x"})


async def test_a_config_mixing_roma_and_huawei_jobs_tells_each_finish_once(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("exp", [running(0.5), succeeded()], archive_id="arch-1"))
    sim.add(SimJob("vm-ok", [running(0.5), succeeded()], type="createServers", sub_jobs_total=4))
    sim.add(
        SimJob(
            "vm-bad",
            [running(0.5), failed()],
            type="createServers",
            sub_jobs_total=2,
            reasons=[{"error_code": "Ecs.0013", "error_msg": "Insufficient EIP quota."}],
        )
    )
    sim.add(SimJob("vm-gone", [http_error(404, None, "job not found")]))
    configs.extra = [
        "[sources.ecs]",
        'type = "huawei-job"',
        f'endpoint = "{sim.url}"',
        f'project_id = "{sim.project_id}"',
        f'token = "{sim.token}"',
        "lost_after = 1",
    ]
    cfg = configs.load(
        [
            "exp",
            {"id": "vm-ok", "source": "ecs", "name": "web servers"},
            {"id": "vm-bad", "source": "ecs"},
            {"id": "vm-gone", "source": "ecs"},
        ]
    )
    await Daemon(cfg, clock).run_once()
    code, out, _ = await jobherald("status", "--json", "-c", str(cfg.path))
    assert code == 0
    running_now = {s["id"]: s for s in json.loads(out)}
    assert (running_now["vm-ok"]["status"], running_now["vm-ok"]["progress"]) == ("running", 0.5)
    assert running_now["vm-bad"]["progress"] == 0.5  # 1 of 2 sub jobs done
    for _ in range(2):
        clock.advance(60)
        await Daemon(cfg, clock).run_once()
    code, out, _ = await jobherald("status", "--json", "-c", str(cfg.path))
    assert code == 0
    status = {s["id"]: s for s in json.loads(out)}
    assert {k: s["status"] for k, s in status.items()} == {
        "exp": "succeeded",
        "vm-ok": "succeeded",
        "vm-bad": "failed",
        "vm-gone": "lost",
    }
    assert status["vm-bad"]["reasons"] == [
        {
            "resource_type": "createSingleServer",
            "resource_name": "server-1",
            "error_code": "Ecs.0013",
            "error_msg": "Insufficient EIP quota.",
        }
    ]
    assert receiver.titles() == [
        "exp succeeded",
        "vm-bad failed",
        "vm-gone lost",
        "web servers succeeded",
    ]
    bad = next(m for m in receiver.messages if m["title"] == "vm-bad failed")
    assert "Insufficient EIP quota." in bad["message"]
    assert any(p.startswith(f"/v1/{sim.project_id}/jobs/") for p, _ in sim.requests)


def test_source_types_are_the_same_in_the_config_and_the_registry() -> None:
    assert set(config_module.SOURCE_TYPES) == set(registry.SOURCE_TYPES)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            '[sources.s]\ntype = "gitlab"\nendpoint = "https://e"\n',
            "sources.s.type: unknown source type 'gitlab' (known: roma-connect, huawei-job, http-json)",
        ),
        (
            '[sources.s]\nendpoint = "https://e"\n',
            "sources.s: required key 'type' is missing (roma-connect, huawei-job, http-json)",
        ),
        (
            '[sources.s]\ntype = "huawei-job"\nendpoint = "https://e"\nproject_id = "p"\n'
            'token = "t"\ninstance_id = "i"\n',
            "sources.s.instance_id: unknown key",
        ),
        (
            '[sources.s]\ntype = "huawei-job"\nendpoint = "https://e"\nproject_id = "p"\n'
            'token = "t"\n\n[[jobs]]\nid = "j"\nsource = "s"\ninstance_id = "i"\n',
            "jobs[0] (id 'j').instance_id: only for roma-connect sources ('s' is huawei-job)",
        ),
        (
            '[sources.s]\ntype = "huawei-job"\nendpoint = "https://e"\ntoken = "t"\n',
            "sources.s.project_id: required key is missing",
        ),
    ],
)
def test_bad_source_sections_are_one_line_each(tmp_path: Path, snippet: str, expected: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(snippet, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert caught.value.problems == [f"{path}: {expected}"]
