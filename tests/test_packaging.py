"""The wheel carries the migrations, and an installed copy migrates a database by itself."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import zipfile
from pathlib import Path

import pytest

from jobherald.store import head_revision

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    asyncio.run(
        _run(
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        )
    )
    (built,) = out.glob("jobherald-*.whl")
    return built


async def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0, out.decode()
    return out.decode()


@pytest.mark.timeout(300)
def test_the_wheel_contains_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "jobherald/migrations/env.py",
        "jobherald/migrations/script.py.mako",
        "jobherald/migrations/versions/0001_initial.py",
        "jobherald/py.typed",
    } <= names
    assert not any(n.startswith(("tests/", "migrations/")) for n in names)
    # Every module of the package is in the wheel (a new sub-package must be listed).
    package = Path(__file__).parent.parent / "daemon" / "jobherald"
    modules = {f"jobherald/{p.relative_to(package)}" for p in package.rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    migrations = Path(__file__).parent.parent / "migrations"
    revisions = {
        f"jobherald/migrations/{p.relative_to(migrations)}" for p in migrations.rglob("*.py")
    }
    assert revisions <= names, sorted(revisions - names)


@pytest.mark.timeout(300)
async def test_an_installed_wheel_migrates_a_new_database_without_alembic_ini(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    await _run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--target",
        str(target),
        str(wheel),
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    (workdir / "config.toml").write_text(
        '[daemon]\ndatabase = "sqlite:///state.db"\n'
        '[sources.s]\ntype = "roma-connect"\nendpoint = "http://127.0.0.1:9"\nproject_id = "p"\ntoken = "t"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import jobherald, sys; print(jobherald.__file__)"
    where = await _run(sys.executable, "-c", code, cwd=workdir, env=env)
    assert where.startswith(str(target))
    await _run(
        sys.executable,
        "-m",
        "jobherald",
        "run",
        "--once",
        "-c",
        "config.toml",
        cwd=workdir,
        env=env,
    )
    with sqlite3.connect(workdir / "state.db") as conn:
        assert conn.execute("select version_num from alembic_version").fetchall() == [
            (head_revision(),)
        ]
