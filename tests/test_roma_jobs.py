"""`jobherald roma export | import | delete` against the simulator: the calls, the drop-in
files, the refusals, and AK/SK signatures over JSON and multipart bodies."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from jobherald import config as config_module
from jobherald.sources.simulator import Simulator
from tests.conftest import ConfigWriter, jobherald
from tests.fakes import sdk_signature_check


def make_zip(path: Path, files: dict[str, str] | None = None) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in (files or {"manifest.json": '{"apps": ["a1"]}'}).items():
            archive.writestr(name, text)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture
def config(configs: ConfigWriter) -> Path:
    return configs.write([], daemon={"include": ["jobs.d/*.toml"]})


def dropins(config: Path) -> list[Path]:
    return (
        sorted((config.parent / "jobs.d").glob("*")) if (config.parent / "jobs.d").exists() else []
    )


async def test_export_prints_the_job_id_alone_and_registers_the_job(
    sim: Simulator, config: Path
) -> None:
    code, out, err = await jobherald(
        "roma", "export", "-c", str(config), "--source", "roma",
        "--app", "app-1", "--app", "app-2", "--task", "task-9",
    )  # fmt: skip
    assert code == 0, err
    job_id = out.strip()
    assert out == f"{job_id}\n"
    assert sim.started == [
        {"kind": "exportAsset", "job_id": job_id, "apps": ["app-1", "app-2"], "tasks": ["task-9"]}
    ]
    assert sim.jobs[job_id].type == "exportAsset"
    dropin = config.parent / "jobs.d" / f"{job_id}.toml"
    assert dropins(config) == [dropin], "one drop-in file and no staging left behind"
    assert f"wrote {dropin}" in err
    watched = {j.id: j for j in config_module.load(config).jobs}
    assert watched[job_id].name == "export of 2 apps, 1 task"
    assert (watched[job_id].source, watched[job_id].instance_id) == ("roma", "sim-instance")
    (request_path, headers) = sim.requests[-1]
    assert request_path == "/v2/sim-project/instances/sim-instance/assets/export"
    assert headers["X-Auth-Token"] == "sim-token"


async def test_a_second_export_while_one_runs_exits_1_with_romas_code(
    sim: Simulator, config: Path
) -> None:
    sim.run_for = 30.0
    first = await jobherald("roma", "export", "-c", str(config), "-s", "roma", "--app", "a")
    assert first[0] == 0, first[2]
    code, out, err = await jobherald(
        "roma", "export", "-c", str(config), "-s", "roma", "--app", "b", "--name", "second"
    )
    assert (code, out) == (1, "")
    assert err.startswith(
        "jobherald: ROMA Connect refused the export (roma): HTTP 400 ROMA.00110040"
    )
    assert "one at a time" in err and "(request " in err
    assert len(err.splitlines()) == 1
    assert len(dropins(config)) == 1, "the refused job is not registered"
    # A delete is not held back by a running export.
    code, out, err = await jobherald(
        "roma", "delete", "-c", str(config), "-s", "roma", "--task", "t"
    )
    assert code == 0, err
    assert sim.jobs[out.strip()].type == "deleteAsset"


async def test_import_sends_the_zip_as_multipart_with_its_options(
    sim: Simulator, config: Path, tmp_path: Path
) -> None:
    package = make_zip(tmp_path / "assets.zip")
    code, out, err = await jobherald(
        "roma", "import", str(package), "-c", str(config), "-s", "roma",
        "--merge", "--prefix", "prod_", "--overwrite-datasources",
    )  # fmt: skip
    assert code == 0, err
    job_id = out.strip()
    assert sim.uploads[job_id] == package.read_bytes()
    assert sim.started[-1] == {
        "kind": "importAsset",
        "job_id": job_id,
        "file": "assets.zip",
        "type": "Merge",
        "prefix": "prod_",
        "datasource_overwrite": "true",
    }
    (job,) = config_module.load(config).jobs
    assert (job.id, job.name) == (job_id, "import of assets.zip")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"PK\x03\x04 not really a zip", "not a zip file"),
        (b"", "not a zip file"),
        (None, "cannot read it: No such file or directory"),
    ],
)
async def test_a_package_that_is_not_a_readable_zip_is_refused_before_any_request(
    sim: Simulator, config: Path, tmp_path: Path, content: bytes | None, says: str
) -> None:
    package = tmp_path / "assets.zip"
    if content is not None:
        package.write_bytes(content)
    code, out, err = await jobherald(
        "roma", "import", str(package), "-c", str(config), "-s", "roma"
    )
    assert (code, out) == (2, "")
    assert err.startswith(f"jobherald: {package}: {says}") and len(err.splitlines()) == 1
    assert sim.requests == [] and dropins(config) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["export", "-s", "roma"], "give at least one --app or --task"),
        (["delete", "-s", "roma", "--app", " "], "an --app or --task is empty"),
        (["export", "-s", "romaa", "--app", "a"], "--source: unknown source 'romaa' (known: roma)"),
    ],
)
async def test_bad_arguments_exit_2_without_a_request(
    sim: Simulator, config: Path, args: list[str], says: str
) -> None:
    code, out, err = await jobherald("roma", *args, "-c", str(config))
    assert (code, out) == (2, ""), err
    assert says in err, err
    assert sim.requests == [] and dropins(config) == []


async def test_a_source_of_another_type_or_without_instance_is_refused(
    sim: Simulator, configs: ConfigWriter
) -> None:
    configs.extra = [
        '[sources.gh]\ntype = "http-json"\nurl = "http://127.0.0.1:9/{job_id}"\n'
        'status = "status"\nsucceeded = ["ok"]\nfailed = ["bad"]\n',
        f'[sources.bare]\ntype = "roma-connect"\nendpoint = "{sim.url}"\n'
        'project_id = "sim-project"\ntoken = "sim-token"\n',
    ]
    config = configs.write([], daemon={"include": ["jobs.d/*.toml"]})
    code, _, err = await jobherald("roma", "export", "-c", str(config), "-s", "gh", "--app", "a")
    assert (code, err) == (2, "jobherald: --source: gh is a http-json source, not roma-connect\n")
    code, _, err = await jobherald("roma", "export", "-c", str(config), "-s", "bare", "--app", "a")
    assert (code, err) == (2, "jobherald: --source: bare has no instance_id: give --instance-id\n")
    code, out, err = await jobherald(
        "roma", "export", "-c", str(config), "-s", "bare", "--app", "a",
        "--instance-id", "sim-instance",
    )  # fmt: skip
    assert code == 0, err
    (job,) = config_module.load(config).jobs
    assert (job.id, job.instance_id) == (out.strip(), "sim-instance")


async def test_without_a_drop_in_folder_nothing_is_started(
    sim: Simulator, configs: ConfigWriter
) -> None:
    config = configs.write([])
    code, out, err = await jobherald(
        "roma", "export", "-c", str(config), "-s", "roma", "--app", "a"
    )
    assert (code, out) == (2, "")
    assert "daemon.include is empty" in err
    assert sim.requests == []


async def test_a_rejected_token_exits_1_with_the_gateways_code_and_no_secret(
    sim: Simulator, configs: ConfigWriter
) -> None:
    sim.tokens = {"another-token"}
    config = configs.write([], daemon={"include": ["jobs.d/*.toml"]})
    code, out, err = await jobherald(
        "roma", "delete", "-c", str(config), "-s", "roma", "--app", "a"
    )
    assert (code, out) == (1, "")
    assert "HTTP 401 APIG.1002: Incorrect token" in err
    assert "sim-token" not in err
    assert dropins(config) == []


async def test_aksk_signs_the_json_and_multipart_bodies_as_the_sdk_does(
    sim: Simulator, configs: ConfigWriter, tmp_path: Path
) -> None:
    sim.verify_signature = sdk_signature_check({"AK-TEST": "sk-s3cret"})
    (tmp_path / "sk").write_text("sk-s3cret\n")
    configs.extra = [
        f'[sources.signed]\ntype = "roma-connect"\nendpoint = "{sim.url}"\n'
        'project_id = "sim-project"\ninstance_id = "sim-instance"\n'
        '[sources.signed.auth]\nmethod = "aksk"\nak = "AK-TEST"\nsk_file = "sk"\n',
    ]
    config = configs.write([], daemon={"include": ["jobs.d/*.toml"]})
    code, out, err = await jobherald(
        "roma", "export", "-c", str(config), "-s", "signed", "--app", "a", "--task", "t"
    )
    assert code == 0, err
    package = make_zip(tmp_path / "release 7.zip")
    code, out, err = await jobherald(
        "roma", "import", str(package), "-c", str(config), "-s", "signed", "--prefix", "v7 "
    )
    assert code == 0, err
    assert sim.uploads[out.strip()] == package.read_bytes()
    assert sim.signed_requests == 2
    # A signature made with another secret key is refused.
    sim.verify_signature = sdk_signature_check({"AK-TEST": "another-secret"})
    code, _, err = await jobherald(
        "roma", "delete", "-c", str(config), "-s", "signed", "--app", "a"
    )
    assert code == 1 and "APIG.1002" in err


async def test_an_archive_downloads_once_then_its_export_reads_finished(
    sim: Simulator, configs: ConfigWriter
) -> None:
    import asyncio

    from jobherald.config import WatchedJob
    from jobherald.errors import FetchError
    from jobherald.fetch import Fetcher
    from jobherald.sources.registry import make_source
    from jobherald.sources.roma import RomaConnect
    from jobherald.sources.roma_assets import RomaAssets

    sim.run_for = 0.2
    cfg = configs.load([])
    roma = make_source(cfg.sources["roma"])
    assert isinstance(roma, RomaConnect)
    assets = RomaAssets(roma)
    async with Fetcher(4) as fetcher:
        job_id = await assets.export(fetcher, "sim-instance", ["crm"], [])
        await asyncio.sleep(0.3)
        watched = WatchedJob(job_id, job_id, "roma", "sim-instance", (), 1.0, "test")
        done = await roma.poll(fetcher, watched)
        assert (done.raw_status, done.type) == ("SUCCEEDED", "exportAsset")
        assert done.archive_id is not None
        received = bytearray()

        async def sink(chunk: bytes) -> None:
            received.extend(chunk)

        await assets.download(fetcher, "sim-instance", done.archive_id, sink)
        assert bytes(received) == sim.archives[done.archive_id]
        with zipfile.ZipFile(io.BytesIO(received)) as archive:
            assert "manifest.json" in archive.namelist()
        after = await roma.poll(fetcher, watched)
        assert (after.raw_status, after.state.value, after.archive_id) == (
            "Finished",
            "succeeded",
            None,
        )
        with pytest.raises(FetchError) as refused:
            await assets.download(fetcher, "sim-instance", done.archive_id, sink)
        assert (refused.value.status, refused.value.error_code, refused.value.not_found) == (
            404,
            "ROMA.00110006",
            True,
        )
