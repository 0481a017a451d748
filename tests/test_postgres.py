"""The same daemon on a real PostgreSQL: migrations, one message per finished job, restarts."""

from __future__ import annotations

import json

import asyncpg

from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, failed, http_error, running, succeeded
from jobherald.store import Store, head_revision
from tests.conftest import Clock, ConfigWriter, Receiver, jobherald
from tests.test_store import listed_times_are_written_as_json_shows_them


async def test_migrations_build_the_schema_on_an_empty_postgres_database(postgres: str) -> None:
    url = postgres.replace("postgresql://", "postgresql+asyncpg://")
    store = await Store.open(url)
    await store.close()
    store = await Store.open(url)  # current: nothing to do
    await store.close()
    conn = await asyncpg.connect(postgres)
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch("select tablename from pg_tables where schemaname = 'public'")
        }
        version = await conn.fetchval("select version_num from alembic_version")
    finally:
        await conn.close()
    assert tables == {
        "alembic_version",
        "jobs",
        "transitions",
        "events",
        "deliveries",
        "archives",
        "source_health",
        "replicas",
        "lanes",
        "durations",
        "pruned_jobs",
        "silences",
        "report_runs",
    }
    assert version == head_revision()


async def test_listed_times_are_written_as_json_shows_them_on_postgres(postgres: str) -> None:
    url = postgres.replace("postgresql://", "postgresql+asyncpg://")
    await listed_times_are_written_as_json_shows_them(url)


async def test_the_daemon_on_postgres_tells_once_and_not_again_after_a_restart(
    postgres: str, sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("exp", [running(0.5), succeeded()], archive_id="arch-1"))
    sim.add(SimJob("imp", [running(0.5), failed()], type="importAsset"))
    sim.add(SimJob("gone", [http_error(404, "ROMA.00110006", "gone")]))
    sim.add(SimJob("slow", [running(0.2), running(0.3)]))
    cfg = configs.load(
        ["exp", "imp", "gone", "slow"], daemon={"database": postgres, "lost_after": 2}
    )
    assert cfg.database_url.startswith("postgresql+asyncpg://")
    for _ in range(4):
        await Daemon(cfg, clock).run_once()
        clock.advance(60)
    assert receiver.titles() == ["exp succeeded", "gone lost", "imp failed"]
    assert sim.polls("exp") == 2
    code, out, _ = await jobherald("status", "--json", "-c", str(cfg.path))
    assert code == 0
    status = {s["id"]: s for s in json.loads(out)}
    assert (status["exp"]["status"], status["exp"]["archive_id"]) == ("succeeded", "arch-1")
    assert status["gone"]["status"] == "lost"
    assert status["slow"]["progress"] == 0.3
    code, out, _ = await jobherald("history", "imp", "--json", "-c", str(cfg.path))
    assert [(h["from"], h["to"]) for h in json.loads(out)] == [
        (None, "running"),
        ("running", "failed"),
    ]


async def test_long_texts_from_an_upstream_or_a_person_fit_on_postgres(
    postgres: str, sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    from jobherald.sources.simulator import Answer

    long_status = "Running-" + "r" * 300
    sim.add(SimJob("a", [running(0.5, status=long_status), succeeded()], archive_id="z" * 900))
    sim.add(SimJob("b", [Answer(json_body={"status": "SUCCESS", "type": "t" * 500})]))
    name = "a name of many words " * 20
    cfg = configs.load([{"id": "a", "name": name}, "b"], daemon={"database": postgres})
    for _ in range(2):
        await Daemon(cfg).run_once()
    code, out, err = await jobherald("status", "--json", "-c", str(cfg.path))
    assert code == 0, err
    status = {s["id"]: s for s in json.loads(out)}
    assert (status["a"]["status"], status["a"]["name"]) == ("succeeded", name)
    assert status["a"]["archive_id"] == "z" * 900
    assert status["b"]["status"] == "succeeded"
    assert status["a"]["error"] is None and status["b"]["error"] is None
    assert sorted(receiver.titles()) == [f"{name} succeeded", "b succeeded"]
    code, out, err = await jobherald("history", "a", "--json", "-c", str(cfg.path))
    assert next(h["raw_status"] for h in json.loads(out)) == long_status
