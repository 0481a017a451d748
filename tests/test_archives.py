"""Export archives kept in archive_dir: started from the command line, downloaded once,
whole or not at all, across kill -9; retried, given up, announced; checked by check-config."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobherald.config.paths import sandbox_problem, unit_problem
from jobherald.errors import ArchiveProblem
from jobherald.schedule.archiver import Transfer, _zip_problem, archive_file_name
from jobherald.sources.simulator import SimJob, Simulator, make_archive, running, succeeded
from tests.conftest import ConfigWriter, Receiver, jobherald, spawn_daemon, wait_for


class Daemons:
    """`jobherald run` processes of one test, each killed at the end if still running."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.procs: list[asyncio.subprocess.Process] = []
        self.log = config.parent / "daemon.log"

    async def start(self) -> asyncio.subprocess.Process:
        starts = self.output().count("watching ")
        proc = await spawn_daemon(self.config, self.log)
        self.procs.append(proc)
        await wait_for(lambda: self.output().count("watching ") > starts, 30, "the daemon's start")
        return proc

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    async def stop(self, proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> int:
        proc.send_signal(sig)
        return await asyncio.wait_for(proc.wait(), 20)

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def archive_dir(tmp_path: Path) -> Path:
    return tmp_path / "archives"


def write_config(configs: ConfigWriter, archive_dir: Path | None, **daemon: str) -> Path:
    source = {"archive_dir": str(archive_dir)} if archive_dir else {}
    settings = {"include": ["jobs.d/*.toml"], "poll_interval": "300ms", **daemon}
    return configs.write([], daemon=settings, source=source)


@pytest.fixture
async def daemons(configs: ConfigWriter) -> AsyncIterator[Daemons]:
    d = Daemons(configs.folder / "config.toml")
    yield d
    await d.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archived(receiver: Receiver) -> list[dict[str, str]]:
    return [m for m in receiver.messages if m["title"].endswith(" archived")]


async def status_of(config: Path, job_id: str) -> dict[str, object]:
    code, out, err = await jobherald("status", "--json", "-c", str(config))
    assert code == 0, err
    return next(j for j in json.loads(out) if j["id"] == job_id)


async def test_an_export_started_here_is_watched_and_its_archive_kept_once(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    archive_dir: Path,
    daemons: Daemons,
) -> None:
    sim.run_for = 1.0
    config = write_config(configs, archive_dir)
    daemon = await daemons.start()
    code, out, err = await jobherald(
        "roma", "export", "-c", str(config), "-s", "roma", "--app", "crm", "--name", "nightly"
    )
    assert code == 0, err
    job_id = out.strip()
    daemon.send_signal(signal.SIGHUP)  # what --reload has systemd do
    await wait_for(lambda: len(archived(receiver)) == 1, 30, "the archived message")
    archive_id = sim.jobs[job_id].archive_id
    assert archive_id is not None
    data = sim.archives[archive_id]
    kept = archive_dir / f"nightly-{archive_id}.zip"
    assert sorted(p.name for p in archive_dir.iterdir()) == [kept.name]
    assert kept.read_bytes() == data
    assert sim.downloaded == [archive_id]
    assert receiver.titles() == ["nightly archived", "nightly succeeded"]
    (message,) = archived(receiver)
    assert f"archive: {kept}" in message["message"]
    assert f"sha256: {sha256(data)}" in message["message"]
    assert (
        f"size: {len(data)} bytes" in message["message"]
        or f"({len(data)} bytes)" in message["message"]
    )

    row = await status_of(config, job_id)
    assert row["status"] == "succeeded"
    assert (row["archive_state"], row["archive_path"]) == ("kept", str(kept))
    assert (row["archive_size"], row["archive_sha256"]) == (len(data), sha256(data))
    code, out, err = await jobherald("history", job_id, "--json", "-c", str(config))
    last = json.loads(out)[-1]
    assert (last["event"], last["archive_path"], last["archive_sha256"]) == (
        "archived",
        str(kept),
        sha256(data),
    )
    code, out, _ = await jobherald("history", job_id, "-c", str(config))
    assert "archived " in out and str(kept) in out

    # A restart neither downloads nor announces it again.
    assert await daemons.stop(daemon) == 0
    await daemons.start()
    await asyncio.sleep(1.5)
    assert sim.download_attempts == [archive_id]
    assert len(archived(receiver)) == 1
    assert "Traceback" not in daemons.output()
    assert sim.token not in daemons.output()


async def test_kill_9_during_the_download_ends_with_one_whole_archive_and_one_message(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    archive_dir: Path,
    daemons: Daemons,
) -> None:
    data = make_archive({"apps": ["big"]}, 3_000_000)
    sim.archives["arch-big"] = data
    sim.archive_chunk_delay = 0.05  # about 2.5 s for the whole archive
    sim.add(SimJob("exp1", [running(0.5), succeeded()], archive_id="arch-big"))
    sim.add(SimJob("other", [running(0.2)]))
    write_config(configs, archive_dir)
    (configs.folder / "jobs.d").mkdir()
    (configs.folder / "jobs.d" / "exp1.toml").write_text(
        '[[jobs]]\nid = "exp1"\nsource = "roma"\nname = "big export"\n'
        '[[jobs]]\nid = "other"\nsource = "roma"\n'
    )
    first = await daemons.start()
    partial = archive_dir / ".big export-arch-big.zip.part"

    await wait_for(
        lambda: partial.exists() and partial.stat().st_size > 200_000, 30, "a download under way"
    )
    # The download holds up no poll: the other job is polled on, every 300 ms.
    polled = sim.polls("other")
    await wait_for(lambda: sim.polls("other") >= polled + 3, 3, "polls during the download")
    assert partial.stat().st_size < len(data), "the download is still under way"
    assert await daemons.stop(first, signal.SIGKILL) == -signal.SIGKILL
    assert not (archive_dir / "big export-arch-big.zip").exists()
    assert 0 < partial.stat().st_size < len(data)
    assert sim.downloaded == [] and archived(receiver) == []

    sim.archive_chunk_delay = 0.0
    await daemons.start()
    await wait_for(lambda: len(archived(receiver)) == 1, 30, "the archived message")
    kept = archive_dir / "big export-arch-big.zip"
    assert sorted(p.name for p in archive_dir.iterdir()) == [kept.name], "no part file is left"
    assert kept.read_bytes() == data
    assert sim.downloaded == ["arch-big"]
    assert sim.download_attempts == ["arch-big", "arch-big"]
    await asyncio.sleep(1.0)
    assert [t for t in receiver.titles() if t.startswith("big")] == [
        "big export archived",
        "big export succeeded",
    ]


async def test_a_whole_download_left_before_its_rename_is_kept_without_a_second_download(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    archive_dir: Path,
    daemons: Daemons,
) -> None:
    # The transfer finished (ROMA Connect counts the archive as downloaded) and the daemon
    # died before renaming the file: the next start must keep that file, not fetch again.
    data = make_archive({"apps": ["x"]}, 10_000)
    sim.archives["arch-x"] = data
    sim.downloaded.append("arch-x")
    sim.add(SimJob("exp2", [succeeded()], archive_id="arch-x"))
    config = write_config(configs, archive_dir)
    (configs.folder / "jobs.d").mkdir()
    (configs.folder / "jobs.d" / "exp2.toml").write_text('[[jobs]]\nid = "exp2"\nsource = "roma"\n')
    archive_dir.mkdir()
    (archive_dir / ".exp2-arch-x.zip.part").write_bytes(data)
    await daemons.start()
    await wait_for(lambda: len(archived(receiver)) == 1, 30, "the archived message")
    assert sorted(p.name for p in archive_dir.iterdir()) == ["exp2-arch-x.zip"]
    assert sim.download_attempts == []
    row = await status_of(config, "exp2")
    assert row["archive_sha256"] == sha256(data)


async def test_a_failing_download_is_retried_and_raises_one_error_after_error_after(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    archive_dir: Path,
    daemons: Daemons,
) -> None:
    sim.archive_errors = 4
    sim.add(SimJob("exp3", [running(0.5), succeeded()], archive_id="arch-3"))
    write_config(configs, archive_dir, error_after="2s", poll_interval="500ms")
    (configs.folder / "jobs.d").mkdir()
    (configs.folder / "jobs.d" / "exp3.toml").write_text('[[jobs]]\nid = "exp3"\nsource = "roma"\n')
    await daemons.start()
    await wait_for(lambda: len(archived(receiver)) == 1, 40, "the archived message")
    assert receiver.titles() == ["exp3 archived", "exp3 error", "exp3 succeeded"]
    error = next(m for m in receiver.messages if m["title"] == "exp3 error")
    assert error["message"].startswith(
        "Keeping the archive of job exp3 fails: cannot download archive arch-3: HTTP 503 APIG.0201"
    )
    assert len(sim.download_attempts) == 5
    assert (archive_dir / "exp3-arch-3.zip").read_bytes() == sim.archives["arch-3"]
    output = daemons.output()
    assert output.count("cannot download archive arch-3") == 4
    assert "Traceback" not in output


async def test_an_archive_taken_elsewhere_is_given_up_with_one_error(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    archive_dir: Path,
    daemons: Daemons,
) -> None:
    sim.archives["arch-4"] = make_archive({}, 100)
    sim.downloaded.append("arch-4")  # someone downloaded it with the console
    sim.add(SimJob("exp4", [succeeded()], archive_id="arch-4"))
    config = write_config(configs, archive_dir, poll_interval="200ms")
    (configs.folder / "jobs.d").mkdir()
    (configs.folder / "jobs.d" / "exp4.toml").write_text('[[jobs]]\nid = "exp4"\nsource = "roma"\n')
    await daemons.start()
    await wait_for(lambda: "exp4 error" in receiver.titles(), 30, "the error message")
    error = next(m for m in receiver.messages if m["title"] == "exp4 error")
    assert "HTTP 404 ROMA.00110006" in error["message"]
    assert "can be downloaded once" in error["message"] and "given up" in error["message"]
    assert len(sim.download_attempts) == 3
    row = await status_of(config, "exp4")
    assert row["archive_state"] == "failed" and "HTTP 404" in str(row["archive_error"])
    assert not any(archive_dir.iterdir())
    await asyncio.sleep(1.0)
    assert len(sim.download_attempts) == 3, "given up: not tried again"


async def test_without_archive_dir_nothing_is_downloaded(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: Daemons
) -> None:
    sim.add(SimJob("exp5", [running(0.5), succeeded()], archive_id="arch-5"))
    config = write_config(configs, None)
    (configs.folder / "jobs.d").mkdir()
    (configs.folder / "jobs.d" / "exp5.toml").write_text('[[jobs]]\nid = "exp5"\nsource = "roma"\n')
    await daemons.start()
    await wait_for(lambda: receiver.titles() == ["exp5 succeeded"], 30, "the success")
    await asyncio.sleep(0.5)
    assert sim.download_attempts == []
    row = await status_of(config, "exp5")
    assert (row["archive_id"], row["archive_state"]) == ("arch-5", None)
    assert "archive_id: arch-5" in receiver.messages[0]["message"]


async def test_run_once_keeps_the_archive_of_an_export_that_just_succeeded(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, archive_dir: Path
) -> None:
    sim.add(SimJob("exp6", [succeeded()], archive_id="arch-6"))
    config = configs.write(["exp6"], source={"archive_dir": str(archive_dir)})
    code, _, err = await jobherald("run", "--once", "-c", str(config))
    assert code == 0, err
    assert (archive_dir / "exp6-arch-6.zip").read_bytes() == sim.archives["arch-6"]
    assert receiver.titles() == ["exp6 archived", "exp6 succeeded"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("archives", "sources.roma.archive_dir: 'archives' must be an absolute path"),
        ("{file}/archives", "sources.roma.archive_dir: {file} is not a folder"),
    ],
)
async def test_check_config_refuses_an_archive_dir_it_cannot_use(
    configs: ConfigWriter, tmp_path: Path, value: str, says: str
) -> None:
    file = tmp_path / "plain-file"
    file.write_text("x")
    config = configs.write([], source={"archive_dir": value.format(file=file)})
    code, out, err = await jobherald("check-config", "-c", str(config))
    assert (code, out) == (2, "")
    assert err == f"{config}: {says.format(file=file)}\n"
    code, _, err = await jobherald("run", "--once", "-c", str(config))
    assert code == 2 and says.format(file=file) in err


async def test_check_config_accepts_a_folder_it_will_make(
    configs: ConfigWriter, tmp_path: Path
) -> None:
    config = configs.write([], source={"archive_dir": str(tmp_path / "a" / "b")})
    code, out, err = await jobherald("check-config", "-c", str(config))
    assert code == 0, err
    assert out.endswith(": ok (0 jobs, 1 source, 1 notifier)\n")
    assert not (tmp_path / "a").exists(), "checking makes nothing"


def test_the_units_sandbox_decides_what_the_service_can_write() -> None:
    unit = {
        "protect_system": "strict",
        "protect_home": "yes",
        "state_directories": ["jobherald"],
        "read_write_paths": ["-/srv/exports"],
    }
    assert unit_problem(Path("/var/lib/jobherald/archives"), **unit) is None  # type: ignore[arg-type]
    assert unit_problem(Path("/srv/exports/roma"), **unit) is None  # type: ignore[arg-type]
    problem = unit_problem(Path("/srv/backups"), **unit)  # type: ignore[arg-type]
    assert problem == (
        "/srv/backups is read-only for jobherald.service (ProtectSystem=strict): use a folder "
        "under /var/lib/jobherald, or add ReadWritePaths=/srv/backups with "
        "`systemctl edit jobherald`"
    )
    assert unit_problem(Path("/home/ops/x"), **{**unit, "protect_system": "no"}) is not None  # type: ignore[arg-type]
    assert unit_problem(Path("/srv/x"), **{**unit, "protect_system": "full"}) is None  # type: ignore[arg-type]


def test_without_systemd_the_installed_unit_files_say_what_the_service_can_write(
    tmp_path: Path,
) -> None:
    """Where no systemd runs (a container, a chroot), the shipped unit and a drop-in of
    `systemctl edit` are read as systemd would read them: the check is still made."""
    shipped = Path(__file__).parent.parent / "systemd" / "jobherald.service"
    (tmp_path / "jobherald.service").write_text(shipped.read_text(encoding="utf-8"))
    assert sandbox_problem(Path("/srv/exports/roma"), tmp_path) == (
        "/srv/exports/roma is read-only for jobherald.service (ProtectSystem=strict): use a "
        "folder under /var/lib/jobherald, or add ReadWritePaths=/srv/exports/roma with "
        "`systemctl edit jobherald`"
    )
    assert sandbox_problem(Path("/var/lib/jobherald/archives"), tmp_path) is None
    (tmp_path / "jobherald.service.d").mkdir()
    (tmp_path / "jobherald.service.d" / "override.conf").write_text(
        "[Service]\nReadWritePaths=-/srv/exports\n"
    )
    assert sandbox_problem(Path("/srv/exports/roma"), tmp_path) is None
    assert sandbox_problem(Path("/home/ops/x"), tmp_path) is not None
    # No unit installed there: nothing to say.
    assert sandbox_problem(Path("/srv/backups"), tmp_path / "none") is None


@pytest.mark.parametrize(
    ("name", "archive_id", "file"),
    [
        ("nightly export", "ab12", "nightly export-ab12.zip"),
        ("../../etc/passwd", "x/y", "_.._etc_passwd-x_y.zip"),
        (".hidden", "a", "hidden-a.zip"),
        ("export of 2 apps, 1 task", "f00", "export of 2 apps, 1 task-f00.zip"),
    ],
)
def test_archive_file_names_stay_inside_the_folder(name: str, archive_id: str, file: str) -> None:
    assert archive_file_name(name, archive_id) == file


async def test_two_replicas_on_postgres_download_each_archive_once(
    postgres: str, sim: Simulator, receiver: Receiver, configs: ConfigWriter, archive_dir: Path
) -> None:
    ids = [f"exp{i}" for i in range(6)]
    for job_id in ids:
        sim.add(SimJob(job_id, [running(0.5), running(0.8), succeeded()], archive_id=f"a-{job_id}"))
    sim.archive_chunk_delay = 0.02
    config = configs.write(
        ids,
        daemon={"database": postgres, "poll_interval": "300ms", "lease": "4s"},
        source={"archive_dir": str(archive_dir)},
        # One message per event, each checked by its title (downloads run side by side,
        # and their events due together would otherwise be one digest).
        notifiers={"ops": {"urls": [receiver.url()], "digest_after": 0}},
    )
    log = configs.folder / "replicas.log"
    procs = [await spawn_daemon(config, log) for _ in range(2)]
    try:
        await wait_for(lambda: len(archived(receiver)) == len(ids), 60, "every archived message")
        await asyncio.sleep(1.0)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(proc.wait(), 20) for proc in procs]
    assert codes == [0, 0], log.read_text()[-3000:]
    assert sorted(sim.download_attempts) == sorted(f"a-{j}" for j in ids)
    assert sorted(m["title"] for m in archived(receiver)) == sorted(f"{j} archived" for j in ids)
    assert sorted(p.name for p in archive_dir.iterdir()) == sorted(f"{j}-a-{j}.zip" for j in ids)
    for job_id in ids:
        assert (archive_dir / f"{job_id}-a-{job_id}.zip").read_bytes() == sim.archives[
            f"a-{job_id}"
        ]
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("planted", ["final", "part"])
async def test_a_symlink_in_archive_dir_is_never_followed_nor_kept(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, archive_dir: Path, planted: str
) -> None:
    # Someone plants a link to a zip outside archive_dir, at the archive's name or at its
    # .part name: it must not become the kept archive, nor be renamed into place.
    outside = configs.folder / "elsewhere.zip"
    outside.write_bytes(make_archive({"apps": ["other"]}, 1_000))
    before = outside.read_bytes()
    sim.add(SimJob("exp7", [succeeded()], archive_id="arch-7"))
    config = configs.write(
        ["exp7"],
        source={"archive_dir": str(archive_dir)},
        notifiers={"ops": {"urls": [receiver.url()], "on": ["archived", "error"]}},
    )
    archive_dir.mkdir()
    name = "exp7-arch-7.zip" if planted == "final" else ".exp7-arch-7.zip.part"
    (archive_dir / name).symlink_to(outside)
    code, _, err = await jobherald("run", "--once", "-c", str(config))
    assert code == 0, err
    row = await status_of(config, "exp7")
    assert row["archive_state"] != "kept" and row["archive_sha256"] is None
    assert f"{archive_dir / name} is a symlink: refused" in str(row["archive_error"])
    assert receiver.titles() == ["exp7 error"]
    assert f"{archive_dir / name} is a symlink" in receiver.messages[0]["message"]
    assert (archive_dir / name).is_symlink() and outside.read_bytes() == before
    assert sim.download_attempts == []  # nothing fetched into a place it cannot trust


def write_jobs(configs: ConfigWriter, *job_ids: str) -> None:
    folder = configs.folder / "jobs.d"
    folder.mkdir(exist_ok=True)
    for job_id in job_ids:
        (folder / f"{job_id}.toml").write_text(f'[[jobs]]\nid = "{job_id}"\nsource = "roma"\n')


async def test_a_trickling_download_holds_up_no_other_and_ends_at_archive_timeout(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    archive_dir: Path,
    daemons: Daemons,
) -> None:
    sim.archives["arch-slow"] = make_archive({"apps": ["slow"]}, 2_000)
    sim.trickling_archives["arch-slow"] = 0.2  # a byte every 0.2 s: 7 minutes for it all
    sim.add(SimJob("slow", [succeeded()], archive_id="arch-slow"))
    sim.add(SimJob("later", [running(0.5), running(0.6), succeeded()], archive_id="arch-later"))
    sim.add(SimJob("other", [running(0.5), succeeded()], archive_id="arch-other"))
    source = {"archive_dir": str(archive_dir), "archive_timeout": "4s"}
    settings = {"include": ["jobs.d/*.toml"], "poll_interval": "300ms"}
    one_each = {"ops": {"urls": [receiver.url()], "digest_after": 0}}  # titles checked
    config = configs.write([], daemon=settings, source=source, notifiers=one_each)
    write_jobs(configs, "slow", "later", "other")
    await daemons.start()
    # The exports that succeeded later are kept while the first one still trickles.
    await wait_for(lambda: len(archived(receiver)) == 2, 30, "the two later archives")
    assert sorted(m["title"] for m in archived(receiver)) == ["later archived", "other archived"]
    assert (archive_dir / ".slow-arch-slow.zip.part").exists(), "the slow one is under way"
    await wait_for(lambda: "archive_timeout" in daemons.output(), 30, "the slow one given up")
    assert "the download took longer than archive_timeout (4s): given up" in daemons.output()
    assert not (archive_dir / ".slow-arch-slow.zip.part").exists()
    row = await status_of(config, "slow")
    assert row["archive_state"] == "pending" and "archive_timeout" in str(row["archive_error"])
    # A transfer that cost this much is not tried again at the poll interval.
    await asyncio.sleep(1.0)
    assert sim.download_attempts.count("arch-slow") == 1
    assert "Traceback" not in daemons.output()


async def test_an_archive_whose_answer_s_head_does_not_come_is_given_up_early(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    archive_dir: Path,
    daemons: Daemons,
) -> None:
    """The rate rule counts body bytes, and no read waits long for a head that trickles a
    byte at a time: the head is bounded by a tenth of archive_timeout (at least 5 s), and
    the download given up then, not after archive_timeout."""
    sim.archives["arch-late"] = make_archive({"apps": ["late"]}, 2_000)
    sim.trickling_heads["arch-late"] = 0.5  # a byte every half second: no read waits long
    sim.add(SimJob("late", [succeeded()], archive_id="arch-late"))
    source = {"archive_dir": str(archive_dir), "archive_timeout": "50s"}
    settings = {"include": ["jobs.d/*.toml"], "poll_interval": "300ms"}
    config = configs.write([], daemon=settings, source=source)
    write_jobs(configs, "late")
    await daemons.start()
    await wait_for(lambda: "answer's head" in daemons.output(), 30, "the download given up")
    assert "no answer's head within 5s: given up" in daemons.output()
    row = await status_of(config, "late")
    assert row["archive_state"] == "pending" and "answer's head" in str(row["archive_error"])
    assert "Traceback" not in daemons.output()


async def test_archives_past_max_archive_size_are_refused_announced_or_not(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    archive_dir: Path,
    daemons: Daemons,
) -> None:
    sim.archives["arch-big"] = make_archive({"apps": ["big"]}, 3 * 2**20)
    sim.archives["arch-endless"] = b"unused"
    sim.endless_archives.add("arch-endless")
    sim.add(SimJob("big", [succeeded()], archive_id="arch-big"))
    sim.add(SimJob("endless", [succeeded()], archive_id="arch-endless"))
    sim.add(SimJob("small", [succeeded()], archive_id="arch-small"))
    source = {"archive_dir": str(archive_dir), "max_archive_size": "1MB"}
    settings = {"include": ["jobs.d/*.toml"], "poll_interval": "300ms"}
    one_each = {"ops": {"urls": [receiver.url()], "digest_after": 0}}  # titles checked
    config = configs.write([], daemon=settings, source=source, notifiers=one_each)
    write_jobs(configs, "big", "endless", "small")
    await daemons.start()
    await wait_for(lambda: daemons.output().count("max_archive_size") >= 2, 30, "both refused")
    output = daemons.output()
    assert "the archive is 3 MB, more than max_archive_size (1 MB): not downloaded" in output
    assert "the download passed max_archive_size (1 MB): given up" in output
    await wait_for(lambda: len(archived(receiver)) == 1, 30, "the small archive")
    assert sorted(p.name for p in archive_dir.iterdir()) == ["small-arch-small.zip"]
    for job_id in ("big", "endless"):
        row = await status_of(config, job_id)
        assert row["archive_state"] == "pending", row
        assert "max_archive_size" in str(row["archive_error"])
    assert sim.download_attempts.count("arch-big") == 1
    assert sim.download_attempts.count("arch-endless") == 1
    assert "Traceback" not in output


def test_a_download_slower_than_the_minimum_rate_over_its_window_is_given_up(
    tmp_path: Path,
) -> None:
    now = [0.0]
    transfer = Transfer(tmp_path, 2**30, clock=lambda: now[0], min_rate=100, window=60)
    for _ in range(59):  # 99 bytes a second for 59 s: the window is not over yet
        now[0] += 1
        transfer.took(b"x" * 99)
    now[0] += 1
    transfer.took(b"x" * 200)  # 6,041 bytes in 60 s: over 100 a second, a new window
    for _ in range(59):
        now[0] += 1
        transfer.took(b"x" * 50)
    now[0] += 1
    with pytest.raises(ArchiveProblem, match=r"slower than 100 bytes/s for 1m \(50 bytes/s\)"):
        transfer.took(b"x" * 50)
    with pytest.raises(ArchiveProblem, match="more than max_archive_size"):
        Transfer(tmp_path, 2**20).headers({"Content-Length": str(2**20 + 1)})
    with pytest.raises(ArchiveProblem, match="free: not downloaded"):
        Transfer(tmp_path, 2**44).headers({"Content-Length": str(2**43)})
    Transfer(tmp_path, 2**20).headers({"Content-Length": "1000"})  # fits


def test_the_zip_check_is_bounded_by_the_unpacked_size_and_by_time(tmp_path: Path) -> None:
    """A small zip of zeros that unpacks to 64 MB: refused unread under a smaller
    max_archive_size; read whole under a bigger one, unless its time is over."""
    import time
    import zipfile

    bomb = tmp_path / "zeros.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * (64 * 2**20))
    assert bomb.stat().st_size < 2**20
    # Refused before a byte is unpacked: even with its time over already.
    assert _zip_problem(bomb, 2**20, deadline=time.monotonic() - 1) == (
        "unpacked it would be 64 MB, more than max_archive_size (1 MB)"
    )
    assert _zip_problem(bomb, 2**30) is None
    assert _zip_problem(bomb, 2**30, deadline=time.monotonic()) == (
        "checking it took longer than archive_timeout"
    )
