"""The starter config of `jobherald init`: as written it watches the demo's simulated
ROMA Connect and Huawei Cloud jobs served by `jobherald simulate`, and its comments say what
to change for a real instance."""

from __future__ import annotations

from pathlib import Path

SIMULATOR = "127.0.0.1:9790"
LISTEN = "127.0.0.1:9781"

STARTER = """\
# jobherald: a starter config. As written it watches the simulated jobs of
# `{command} simulate` (run it first, in another terminal) and sends each message to
# the simulator's webhook, which prints it. Check it with
# `{command} check-config -c {path}`, run it with `{command} run -c {path}`.
# Every key is described in config.example.toml and the README.

[daemon]
# Beside this file; the installed service keeps its database in /var/lib/jobherald.
database = "sqlite:///jobherald.db"
# Quick, for the simulator; 30s or more for real jobs.
poll_interval = "1s"
# `{command} watch` and `roma export` write a file per job here.
include = ["jobs.d/*.toml"]

[sources.roma]
type = "roma-connect"
# For a real ROMA Connect instance: its region's endpoint, e.g.
#   endpoint = "https://roma.cn-north-4.myhuaweicloud.com"
# your project and instance ids, and credentials from a file, never in this one:
#   token_file = "/etc/jobherald/roma-token"
# or AK/SK signing:
#   [sources.roma.auth]
#   method = "aksk"
#   ak = "..."
#   sk_file = "/etc/jobherald/roma-sk"
endpoint = "http://{simulator}"
project_id = "{project_id}"
instance_id = "{instance_id}"
token = "{token}"
# Export archives are downloaded here when an export succeeds.
archive_dir = "{archives}"

[sources.ecs]
# Huawei Cloud's shared job API (ECS, EVS, IMS...): for real, e.g.
#   endpoint = "https://ecs.cn-north-4.myhuaweicloud.com"
type = "huawei-job"
endpoint = "http://{simulator}"
project_id = "{project_id}"
token = "{token}"

[http]
# The status page, /metrics and the JSON API. Off loopback it needs a token_file.
listen = "{listen}"

[notifiers.hook]
# Any apprise URL: slack://..., mailto://..., tgram://..., json://... (one per line).
urls = ["json://{simulator}/hook"]
on = ["succeeded", "failed", "lost", "archived"]

# One table per job to watch (or a file per job in jobs.d/).
{jobs}"""


def starter_text(path: Path, simulator: str, listen: str, command: str) -> str:
    from jobherald.sources.demo import demo_jobs
    from jobherald.sources.simulator import Simulator

    sim = Simulator()
    jobs = "\n".join(
        f'[[jobs]]\nid = "{job.id}"\nsource = "{"roma" if source == "demo" else source}"\n'
        f'name = "{name}"\n'
        for name, job, source in demo_jobs()
    )
    return STARTER.format(
        command=command,
        path=path,
        simulator=simulator,
        listen=listen,
        project_id=sim.project_id,
        instance_id=next(iter(sim.instances)),
        token=sim.token,
        jobs=jobs,
        archives=path.resolve().parent / "archives",
    )
