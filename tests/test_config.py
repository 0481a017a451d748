from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from jobherald import config
from jobherald.errors import ConfigError
from jobherald.model import Rules
from jobherald.sources.huawei_config import AkSkAuth, PasswordAuth
from tests.conftest import jobherald

BASE = """\
[daemon]
poll_interval = "30s"

[sources.roma-prod]
type = "roma-connect"
endpoint = "https://roma.cn-north-4.myhuaweicloud.com/"
project_id = "0a1b2c"
instance_id = "ab12"
token = "s3cret-token"

[notifiers.ops]
urls = ["json://127.0.0.1:9/hook"]
"""


def write(folder: Path, text: str, name: str = "config.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def token_of(cfg: config.Config) -> str | None:
    auth = cfg.sources["roma-prod"].auth
    assert isinstance(auth, config.TokenAuth)
    if auth.token_file is not None:
        return auth.token_file.read_text().strip()
    return auth.token.get_secret_value() if auth.token else None


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    return caught.value.problems


def test_a_full_config_loads_into_resolved_jobs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE
        + """
[[jobs]]
id = "ff8080814dbd65d7014dbe0d84db0013"
source = "roma-prod"
name = "nightly export"
instance_id = "cd34"
notify = ["ops"]
poll_interval = "1m"

[[jobs]]
id = "job-2"
source = "roma-prod"
""",
    )
    cfg = config.load(path)
    first, second = cfg.jobs
    assert first.name == "nightly export"
    assert first.instance_id == "cd34"
    assert first.poll_interval == 60.0
    assert second.name == "job-2"
    assert second.instance_id == "ab12"
    assert second.poll_interval == 30.0
    assert second.notify == ("ops",)
    assert cfg.sources["roma-prod"].endpoint == "https://roma.cn-north-4.myhuaweicloud.com"
    assert token_of(cfg) == "s3cret-token"
    assert cfg.database_url == f"sqlite+aiosqlite:///{tmp_path}/jobherald.db"
    assert cfg.notifiers["ops"].on == (
        "succeeded",
        "failed",
        "stalled",
        "lost",
        "error",
        "recovered",
        "archived",
    )


def test_unknown_source_names_the_file_key_and_the_known_ones(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE
        + """
[[jobs]]
id = "a"
source = "roma-prod"
[[jobs]]
id = "b"
source = "roma-prod"
[[jobs]]
id = "c"
source = "roma-prd"
""",
    )
    assert problems(path) == [
        f"{path}: jobs[2] (id 'c').source: unknown source 'roma-prd' (known: roma-prod)"
    ]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            '[daemon]\npol_interval = "1s"\n',
            "daemon.pol_interval: unknown key (did you mean poll_interval?)",
        ),
        ("[extra]\nx = 1\n", "extra: unknown key"),
        (
            '[sources.s]\ntype = "roma-connect"\nendpoint = "https://e"\nproject_id = "p"\ntoken = "t"\ntokn = "x"\n',
            "sources.s.tokn: unknown key (did you mean token?)",
        ),
        (
            '[sources.s]\ntype = "gitlab"\nendpoint = "https://e"\nproject_id = "p"\ntoken = "t"\n',
            "sources.s.type: unknown source type 'gitlab' (known: roma-connect, huawei-job, http-json)",
        ),
        (
            '[sources.s]\ntype = "roma-connect"\nproject_id = "p"\ntoken = "t"\n',
            "sources.s.endpoint: required key is missing",
        ),
        (
            '[sources.s]\ntype = "roma-connect"\nendpoint = "ftp://e"\nproject_id = "p"\ntoken = "t"\n',
            "sources.s.endpoint: endpoint 'ftp://e' must start with https:// or http://",
        ),
        (
            '[sources.s]\ntype = "roma-connect"\nendpoint = "https://e"\nproject_id = "p"\ntoken = "t"\nmax_archive_size = "5PB"\n',
            "sources.s.max_archive_size: bad size '5PB': use bytes or a text like 512KB, 4MB",
        ),
        (
            '[sources.s]\ntype = "roma-connect"\nendpoint = "https://e"\nproject_id = "p"\ntoken = "t"\nmax_archive_size = "100KB"\n',
            "sources.s.max_archive_size: size '100KB' must be between 1MB and 16TB",
        ),
        (
            '[daemon]\npoll_interval = "5x"\n',
            "daemon.poll_interval: bad duration '5x': use seconds or a text like 500ms, 30s, 5m, 1h",
        ),
        (
            '[daemon]\npoll_interval = "-1"\n',
            "daemon.poll_interval: duration '-1' must be more than zero",
        ),
        (
            "[daemon]\nconcurrency = 0\n",
            "daemon.concurrency: Input should be greater than or equal to 1",
        ),
        (
            '[daemon]\nlease = "1s"\n',
            "daemon.lease: Input should be greater than or equal to 3",
        ),
        (
            '[daemon]\nreplica = "node a"\n',
            "daemon.replica: bad replica name 'node a': up to 100 letters, digits and ._:@- (starting with a letter or digit)",
        ),
        (
            '[daemon]\nlog_level = "loud"\n',
            "daemon.log_level: Input should be 'debug', 'info', 'warning' or 'error' (given 'loud')",
        ),
        ("[notifiers.n]\nurls = []\n", "notifiers.n.urls: must not be empty"),
        (
            '[notifiers.n]\nurls = ["json://h/x"]\non = ["finished"]\n',
            "notifiers.n.on[0]: unknown event 'finished' (known: succeeded, failed, started, progress, stalled, lost, error, recovered, archived)",
        ),
        (
            '[[jobs]]\nid = "has space"\nsource = "s"\n',
            "jobs[0] (id 'has space').id: bad job id 'has space': letters, digits and _.:- only",
        ),
        ('[[jobs]]\nsource = "s"\n', "jobs[0].id: required key is missing"),
        (
            '[[jobs]]\nid = "a"\nsource = "s"\ncolour = "red"\n',
            "jobs[0] (id 'a').colour: unknown key",
        ),
        (
            '[daemon]\nconcurrency = "many"\n',
            "daemon.concurrency: Input should be a valid integer, unable to parse string as an integer (given 'many')",
        ),
        (
            '[sources.s]\ntype = "roma-connect"\nendpoint = "https://e"\nproject_id = "p"\ntoken = 5\n',
            "sources.s.token: Input should be a valid string",
        ),
    ],
)
def test_each_bad_key_is_one_line_naming_file_and_key(
    tmp_path: Path, snippet: str, expected: str
) -> None:
    path = write(tmp_path, snippet)
    assert problems(path) == [f"{path}: {expected}"]


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\npoll_interval = "5x"\nconcurrency = -1\nfoo = 1\n')
    assert len(problems(path)) == 3


def test_bad_apprise_url_is_refused_without_echoing_its_secret(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE.replace(
            'urls = ["json://127.0.0.1:9/hook"]',
            'urls = ["json://127.0.0.1:9/hook", "nosuch://user:hunter2@host", '
            '"jsn://user:hunter2@host/x", "mailto://hunter2@", '
            '"mailto://me:hunter2@example.com?mode=insecur", "tgram://hunter2/"]',
        ),
    )
    lines = problems(path)
    assert lines == [
        f"{path}: notifiers.ops.urls[1]: apprise knows no nosuch:// service",
        f"{path}: notifiers.ops.urls[2]: apprise knows no jsn:// service (did you mean json://?)",
        # Where apprise names the part it refused, the line says it (values masked).
        f"{path}: notifiers.ops.urls[3]: apprise cannot use this mailto:// URL: "
        "Invalid ~From~ email specified",
        f"{path}: notifiers.ops.urls[4]: apprise cannot use this mailto:// URL: "
        "The secure mode specified (***) is invalid",
        f"{path}: notifiers.ops.urls[5]: apprise cannot use this tgram:// URL "
        "(unknown service or missing parts)",
    ]
    assert not any("hunter2" in line for line in lines)


def test_problems_in_sources_and_notifiers_do_not_hide_those_of_jobs(tmp_path: Path) -> None:
    """One run says everything: a source that fails validation, one with a bad JMESPath, a
    bad notifier URL, and beside them a job's missing url param, a duplicate and an unknown
    source; the jobs of a broken source are not blamed for it."""
    path = write(
        tmp_path,
        """\
        [sources.api]
        type = "http-json"
        url = "https://jobs.example.com/teams/{team}/jobs/{job_id}"
        status = "state[["
        succeeded = ["done"]
        failed = ["error"]

        [sources.bad]
        type = "roma-connect"
        endpoint = 5
        project_id = "p"

        [notifiers.ops]
        urls = ["jsn://x"]

        [[jobs]]
        id = "a"
        source = "api"

        [[jobs]]
        id = "b"
        source = "api"
        params = {team = "x"}

        [[jobs]]
        id = "b"
        source = "api"
        params = {team = "x"}

        [[jobs]]
        id = "c"
        source = "bad"
        notify = ["ops"]

        [[jobs]]
        id = "d"
        source = "nope"
        """,
    )
    assert problems(path) == [
        f"{path}: sources.bad.endpoint: Input should be a valid string (given 5)",
        f"{path}: sources.api.status: bad JMESPath 'state[[': Expecting: star, got: lbracket",
        f"{path}: notifiers.ops.urls[0]: apprise knows no jsn:// service (did you mean json://?)",
        f"{path}: jobs[0] (id 'a').params: source 'api' has {{team}} in its url: "
        "give team in this job's params",
        f"{path}: jobs[2] (id 'b').id: duplicate job id 'b' (first in {path}: jobs[1] (id 'b'))",
        f"{path}: jobs[4] (id 'd').source: unknown source 'nope' (known: api, bad)",
    ]


def test_unknown_notifier_in_a_job_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '[[jobs]]\nid = "a"\nsource = "roma-prod"\nnotify = ["opps"]\n')
    assert problems(path) == [
        f"{path}: jobs[0] (id 'a').notify[0]: unknown notifier 'opps' (known: ops)"
    ]


def test_a_job_needs_an_instance_id_from_itself_or_its_source(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE.replace('instance_id = "ab12"\n', "") + '[[jobs]]\nid = "a"\nsource = "roma-prod"\n',
    )
    assert problems(path) == [
        f"{path}: jobs[0] (id 'a').instance_id: required, as source 'roma-prod' sets no instance_id"
    ]


def test_duplicate_job_ids_across_drop_ins_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE.replace("[daemon]\n", '[daemon]\ninclude = ["jobs.d/*.toml"]\n')
        + '[[jobs]]\nid = "a"\nsource = "roma-prod"\n',
    )
    write(tmp_path, '[[jobs]]\nid = "a"\nsource = "roma-prod"\n', "jobs.d/10-more.toml")
    assert problems(path) == [
        f"jobs.d/10-more.toml: jobs[0] (id 'a').id: duplicate job id 'a' (first in {path}: jobs[0] (id 'a'))"
    ]


def test_problems_of_one_kind_are_said_twenty_times_then_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE.replace("[daemon]\n", '[daemon]\ninclude = ["jobs.d/*.toml"]\n')
        + '[[jobs]]\nid = "a"\nsource = "roma-prod"\n',
    )
    for i in range(100):
        write(tmp_path, '[[jobs]]\nid = "a"\nsource = "roma-prod"\n', f"jobs.d/{i:03d}.toml")
    write(tmp_path, '[[jobs]]\nid = "b"\nsource = "nope"\n', "jobs.d/999.toml")
    lines = problems(path)
    assert len(lines) == 22, lines
    assert (
        lines[0]
        == f"jobs.d/000.toml: jobs[0] (id 'a').id: duplicate job id 'a' (first in {path}: jobs[0] (id 'a'))"
    )
    assert lines[19].startswith("jobs.d/019.toml: jobs[0] (id 'a').id: duplicate job id 'a'")
    assert lines[20].startswith("jobs.d/999.toml: jobs[0] (id 'b').source: unknown source 'nope'")
    assert lines[21] == f"and 80 more like: {lines[0].split(': ', 1)[1]}"


def test_drop_in_jobs_are_added_and_their_errors_name_the_drop_in(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("[daemon]\n", '[daemon]\ninclude = ["jobs.d/*.toml"]\n'))
    write(tmp_path, '[[jobs]]\nid = "b"\nsource = "roma-prod"\n', "jobs.d/20-b.toml")
    write(tmp_path, '[[jobs]]\nid = "a"\nsource = "roma-prod"\n', "jobs.d/10-a.toml")
    assert [j.id for j in config.load(path).jobs] == ["a", "b"]
    write(tmp_path, '[[jobs]]\nid = "c"\nsource = "roma-prod"\n\n[daemon]\n', "jobs.d/30-c.toml")
    assert problems(path) == ["jobs.d/30-c.toml: daemon: unknown key"]


def test_an_include_naming_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("[daemon]\n", '[daemon]\ninclude = ["jobs.toml"]\n'))
    assert problems(path) == [f"{path}: daemon.include[0]: file not found: jobs.toml"]


def test_environment_variables_are_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROMA_TOKEN", "from-env")
    monkeypatch.setenv("JOB_NAME", "nightly")
    path = write(
        tmp_path,
        BASE.replace('token = "s3cret-token"', 'token = "${ROMA_TOKEN}"')
        + '[[jobs]]\nid = "a"\nsource = "roma-prod"\nname = "${JOB_NAME} $$5"\n',
    )
    cfg = config.load(path)
    assert token_of(cfg) == "from-env"
    assert cfg.jobs[0].name == "nightly $5"


def test_a_missing_environment_variable_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROMA_TOKEN", raising=False)
    path = write(tmp_path, BASE.replace('token = "s3cret-token"', 'token = "${ROMA_TOKEN}"'))
    assert problems(path) == [
        f"{path}: sources.roma-prod.token: environment variable ROMA_TOKEN is not set"
    ]


def test_token_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "roma.token").write_text("file-token\n")
    path = write(tmp_path, BASE.replace('token = "s3cret-token"', 'token_file = "roma.token"'))
    cfg = config.load(path)
    assert token_of(cfg) == "file-token"
    auth = cfg.sources["roma-prod"].auth
    assert isinstance(auth, config.TokenAuth)
    assert auth.token_file == tmp_path / "roma.token"


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        (
            'token_file = "missing.token"',
            "sources.roma-prod.token_file: cannot read {dir}/missing.token: No such file or directory",
        ),
        (
            'token = "a"\ntoken_file = "x"',
            "sources.roma-prod: give one of token and token_file, not both",
        ),
        ("", "sources.roma-prod: give one of token and token_file"),
        ('token = ""', "sources.roma-prod.token: is empty"),
    ],
)
def test_token_problems_are_reported(tmp_path: Path, replacement: str, expected: str) -> None:
    path = write(tmp_path, BASE.replace('token = "s3cret-token"', replacement))
    assert problems(path) == [f"{path}: {expected.format(dir=tmp_path)}"]


def test_the_token_never_appears_in_the_config_repr(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, BASE))
    assert "s3cret-token" not in repr(cfg)


def test_not_toml_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon\n")
    (line,) = problems(path)
    assert line.startswith(f"{path}: not valid TOML: ")


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.toml") == [f"{tmp_path}/nope.toml: file not found"]


def test_relative_sqlite_path_resolves_against_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/jobherald")
    cfg = config.load(write(tmp_path, BASE))
    assert cfg.database_url == "sqlite+aiosqlite:////var/lib/jobherald/jobherald.db"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////srv/jh.db", "sqlite+aiosqlite:////srv/jh.db"),
        ("postgresql://jh:pw@127.0.0.1/jh", "postgresql+asyncpg://jh:pw@127.0.0.1/jh"),
    ],
)
def test_database_urls_get_an_async_driver(tmp_path: Path, url: str, expected: str) -> None:
    cfg = config.load(
        write(tmp_path, BASE.replace("[daemon]\n", f'[daemon]\ndatabase = "{url}"\n'))
    )
    assert cfg.database_url == expected


def test_unsupported_database_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("[daemon]\n", '[daemon]\ndatabase = "mysql://h/db"\n'))
    assert problems(path) == [
        f"{path}: daemon.database: unsupported database 'mysql' (sqlite, postgresql)"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (5, 5.0),
        (0.5, 0.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("12", 12.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


async def test_check_config_exits_2_with_one_line_and_creates_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '[[jobs]]\nid = "a"\nsource = "roma-prd"\n')
    code, out, err = await jobherald("check-config", "-c", str(path))
    assert code == 2
    assert out == ""
    assert err == f"{path}: jobs[0] (id 'a').source: unknown source 'roma-prd' (known: roma-prod)\n"
    code, out, err = await jobherald("run", "--once", "-c", str(path))
    assert code == 2
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


async def test_check_config_accepts_a_good_file_and_reads_the_environment_path(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, BASE + '[[jobs]]\nid = "a"\nsource = "roma-prod"\n')
    code, out, _ = await jobherald("check-config", env={"JOBHERALD_CONFIG": str(path)})
    assert code == 0
    assert out == f"{path}: ok (1 job, 1 source, 1 notifier)\n"


def test_the_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROMA_TOKEN", "IAM_PASSWORD", "ROMA_AK", "ROMA_SK", "IAM_TOKEN"):
        monkeypatch.setenv(name, "example")
    example = Path(__file__).parent.parent / "config.example.toml"
    cfg = config.load(example)
    assert cfg.jobs
    assert {s.auth.method for s in cfg.sources.values()} == {"token", "password", "aksk"}
    assert {s.type for s in cfg.sources.values()} == {"roma-connect", "huawei-job"}


def test_watch_rules_inherit_from_daemon_to_source_to_job(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE.replace(
            "[daemon]\n",
            '[daemon]\nerror_after = "10m"\nstall_after = "2h"\nprogress_steps = [0.75, 0.25]\n',
        )
        .replace('timeout = "10s"', "")
        .replace(
            'token = "s3cret-token"\n',
            'token = "s3cret-token"\nlost_after = 5\nmax_duration = "0"\n',
        )
        + '[[jobs]]\nid = "a"\nsource = "roma-prod"\nstall_after = 0\n'
        + '[[jobs]]\nid = "b"\nsource = "roma-prod"\nerror_after = "1m"\n',
    )
    cfg = config.load(path)
    assert cfg.rules == Rules(600.0, 7200.0, 3, 43200.0, (0.25, 0.75))
    assert cfg.sources["roma-prod"].rules == Rules(600.0, 7200.0, 5, None, (0.25, 0.75))
    a, b = cfg.jobs
    assert a.rules == Rules(600.0, None, 5, None, (0.25, 0.75))
    assert b.rules == Rules(60.0, 7200.0, 5, None, (0.25, 0.75))


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            "[daemon]\nprogress_steps = [1.5]\n",
            "daemon.progress_steps: progress step 1.5 must be between 0 and 1 (0.5 is 50 %)",
        ),
        (
            "[daemon]\nlost_after = 0\n",
            "daemon.lost_after: Input should be greater than or equal to 1",
        ),
        (
            '[daemon]\nerror_after = "0"\n',
            "daemon.error_after: duration '0' must be more than zero",
        ),
        (
            '[[jobs]]\nid = "a"\nsource = "s"\nstall_after = "soon"\n',
            "jobs[0] (id 'a').stall_after: bad duration 'soon': use seconds or a text like 500ms, 30s, 5m, 1h",
        ),
    ],
)
def test_bad_watch_rules_are_refused(tmp_path: Path, snippet: str, expected: str) -> None:
    path = write(tmp_path, snippet)
    assert problems(path) == [f"{path}: {expected}"]


PASSWORD_AUTH = """
[sources.roma-prod.auth]
method = "password"
iam_endpoint = "https://iam.cn-north-4.myhuaweicloud.com"
user = "ops-bot"
password_file = "iam.password"
domain = "my-account"
project = "cn-north-4"
"""


def test_password_auth_reads_its_password_file(tmp_path: Path) -> None:
    (tmp_path / "iam.password").write_text("pw\n")
    path = write(tmp_path, BASE.replace('token = "s3cret-token"\n', "") + PASSWORD_AUTH)
    auth = config.load(path).sources["roma-prod"].auth
    assert isinstance(auth, PasswordAuth)
    assert (auth.user, auth.password.get_secret_value(), auth.project) == (
        "ops-bot",
        "pw",
        "cn-north-4",
    )
    assert "pw" not in repr(auth).replace("password", "")


def test_aksk_auth_reads_its_secret_key(tmp_path: Path) -> None:
    (tmp_path / "roma.sk").write_text("the-sk")
    path = write(
        tmp_path,
        BASE.replace('token = "s3cret-token"\n', "")
        + '[sources.roma-prod.auth]\nmethod = "aksk"\nak = "AK1"\nsk_file = "roma.sk"\n',
    )
    auth = config.load(path).sources["roma-prod"].auth
    assert isinstance(auth, AkSkAuth)
    assert (auth.ak, auth.sk.get_secret_value(), auth.security_token) == ("AK1", "the-sk", None)


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (
            'method = "kerberos"\n',
            "sources.roma-prod.auth.method: unknown method 'kerberos' (known: token, password, aksk)",
        ),
        (
            'ak = "x"\n',
            "sources.roma-prod.auth: required key 'method' is missing (token, password, aksk)",
        ),
        ('method = "aksk"\nak = "AK1"\n', "sources.roma-prod.auth: give one of sk and sk_file"),
        ('method = "aksk"\nsk = "x"\n', "sources.roma-prod.auth.ak: required key is missing"),
        (
            'method = "aksk"\nak = "AK1"\nsk = "x"\nsecret = "y"\n',
            "sources.roma-prod.auth.secret: unknown key",
        ),
        (
            'method = "password"\niam_endpoint = "https://iam"\nuser = "u"\npassword = "p"\ndomain = "d"\n',
            "sources.roma-prod.auth: give one of project and project_id",
        ),
        (
            'method = "password"\niam_endpoint = "https://iam"\nuser = "u"\npassword_file = "nope"\ndomain = "d"\nproject = "x"\n',
            "sources.roma-prod.auth.password_file: cannot read {dir}/nope: No such file or directory",
        ),
    ],
)
def test_auth_problems_are_one_line_each(tmp_path: Path, auth: str, expected: str) -> None:
    path = write(
        tmp_path, BASE.replace('token = "s3cret-token"\n', "") + "[sources.roma-prod.auth]\n" + auth
    )
    assert problems(path) == [f"{path}: {expected.format(dir=tmp_path)}"]


def test_a_token_and_an_auth_table_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "iam.password").write_text("pw\n")
    path = write(tmp_path, BASE + PASSWORD_AUTH)
    assert problems(path) == [
        f"{path}: sources.roma-prod: give token/token_file or an [auth] table, not both"
    ]


def test_commands_on_the_service_config_find_the_service_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert config._state_folder(Path("/etc/jobherald")) == Path("/var/lib/jobherald")
    assert config._state_folder(Path("/srv/elsewhere")) == Path("/srv/elsewhere")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/jobherald-x")
    assert config._state_folder(Path("/etc/jobherald")) == Path("/var/lib/jobherald-x")


def test_archive_limits_take_sizes_and_durations_as_people_write_them(tmp_path: Path) -> None:
    text = BASE.replace('token = "s3cret-token"\n', 'token = "s3cret-token"\n'
                        'max_archive_size = "500MB"\narchive_timeout = "45m"\n')  # fmt: skip
    source = config.load(write(tmp_path, text)).sources["roma-prod"]
    assert (source.max_archive_size, source.archive_timeout) == (500 * 2**20, 2700.0)
    default = config.load(write(tmp_path, BASE)).sources["roma-prod"]
    assert (default.max_archive_size, default.archive_timeout) == (2 * 2**30, 1800.0)


def test_one_id_on_two_instances_is_two_jobs_each_under_its_key(tmp_path: Path) -> None:
    text = BASE + (
        '[sources.other]\ntype = "roma-connect"\nendpoint = "https://e"\nproject_id = "p"\n'
        'instance_id = "i9"\ntoken = "t"\n\n'
        '[[jobs]]\nid = "x"\nsource = "roma-prod"\n\n'
        '[[jobs]]\nid = "x"\nsource = "roma-prod"\ninstance_id = "cd34"\n\n'
        '[[jobs]]\nid = "x"\nsource = "other"\n\n'
        '[[jobs]]\nid = "y"\nsource = "other"\n'
    )
    cfg = config.load(write(tmp_path, text))
    assert [(j.id, j.upstream_id, j.name) for j in cfg.jobs] == [
        ("roma-prod/x@ab12", "x", "roma-prod/x@ab12"),
        ("roma-prod/x@cd34", "x", "roma-prod/x@cd34"),
        ("other/x", "x", "other/x"),
        ("y", "y", "y"),
    ]


def test_a_boolean_is_never_taken_for_a_number(tmp_path: Path) -> None:
    """`digest_after = true` would be 1 (every message a digest): refused, each key on its
    own line, with every other problem of the file in the same run."""
    path = tmp_path / "config.toml"
    path.write_text(
        "[daemon]\nconcurrency = true\nretries = false\npoll_interval = true\n"
        '[notifiers.ops]\nurls = ["json://127.0.0.1:9/x"]\ndigest_after = true\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.problems == [
        f"{path}: daemon.concurrency: expected a whole number, got a boolean",
        f"{path}: daemon.retries: expected a whole number, got a boolean",
        f"{path}: daemon.poll_interval: expected a number or a duration, got a boolean",
        f"{path}: notifiers.ops.digest_after: expected a whole number, got a boolean",
    ]


async def test_check_config_render_prints_what_a_notifier_sends(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[notifiers.ops]\nurls = ["json://127.0.0.1:9/x"]\nformat = "markdown"\n'
        'digest_body = """\n{% for e in events %}\n- {{ e.job.name }}: {{ e.event.kind }}\n'
        '{% endfor %}\n"""\n',
        encoding="utf-8",
    )
    code, out, err = await jobherald("check-config", "--render", "ops", "-c", str(path))
    assert code == 0, err
    single = out.split("\n--- succeeded (markdown) ---\n", 1)[1].split("\n--- ", 1)[0]
    assert single.splitlines()[:2] == [
        "title: nightly export succeeded",
        "Job nightly export succeeded.",
    ]
    digest = out.split("\n--- digest of 5 (markdown) ---\n", 1)[1].split("\n--- ", 1)[0]
    lines = digest.splitlines()
    assert lines[1:3] == ["- nightly export: succeeded", "- nightly export: failed"]
    assert lines[-1].startswith("events 0123456789abcdef")  # the footer is added, as sent
    code, _, err = await jobherald("check-config", "--render", "nope", "-c", str(path))
    assert (code, err) == (2, "jobherald: unknown notifier 'nope' (known: ops)\n")
