"""Starting ROMA Connect asset jobs: ``jobherald roma export | import | delete``.

Each call authenticates as the daemon does, starts the job, prints its id alone on
stdout, and registers it as ``watch`` does. The drop-in file is checked before the
call, so that a job is never started that could not be watched.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from jobherald.cli.base import EXIT_FAILURE, EXIT_USAGE, cli, config_option, fail, load_config
from jobherald.cli.jobs import (
    dropin_lines,
    forget_after_of,
    forget_after_option,
    register,
    reload_the_service,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from jobherald.config import Config
    from jobherald.fetch import Fetcher
    from jobherald.sources.roma_assets import RomaAssets

# The id written into the drop-in file that is checked before the job exists.
_CHECK_ID = "jobherald-check"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def default_name(kind: str, apps: tuple[str, ...], tasks: tuple[str, ...]) -> str:
    """``export of 2 apps, 1 task``: what a person recognises in a message."""
    parts = [_count(len(apps), "app")] if apps else []
    if tasks:
        parts.append(_count(len(tasks), "task"))
    return f"{kind} of {', '.join(parts)}"


def _roma_source(cfg: Config, source: str, instance_id: str | None) -> str:
    """The instance to call; exit 2 if the source is not a ROMA Connect one or has none."""
    src = cfg.sources.get(source)
    if src is None:
        known = ", ".join(sorted(cfg.sources)) or "none"
        fail(f"--source: unknown source {source!r} (known: {known})", EXIT_USAGE)
        raise AssertionError  # unreachable
    if src.type != "roma-connect":
        fail(f"--source: {source} is a {src.type} source, not roma-connect", EXIT_USAGE)
    instance = instance_id or src.instance_id
    if not instance:
        fail(f"--source: {source} has no instance_id: give --instance-id", EXIT_USAGE)
        raise AssertionError  # unreachable
    return instance


def _start(
    cfg: Config,
    what: str,
    source: str,
    instance_id: str | None,
    name: str,
    reload_service: bool,
    call: Callable[[RomaAssets, Fetcher, str], Awaitable[str]],
    forget_after: str | None = None,
) -> None:
    """Check the drop-in, start the job, register it, print its id."""
    instance = _roma_source(cfg, source, instance_id)
    given_instance = instance_id if instance_id else None
    forget = forget_after_of(cfg, forget_after)

    def lines(job_id: str) -> list[str]:
        return dropin_lines(job_id, source, name, given_instance, forget_after=forget)

    register(cfg, _CHECK_ID, lines(_CHECK_ID), check_only=True)

    from jobherald.cli.base import run_async
    from jobherald.errors import FetchError
    from jobherald.fetch import Fetcher, RetryPolicy
    from jobherald.sources.registry import make_source
    from jobherald.sources.roma import RomaConnect
    from jobherald.sources.roma_assets import RomaAssets

    roma = make_source(cfg.sources[source])
    assert isinstance(roma, RomaConnect)

    async def go() -> str:
        async with Fetcher(4, 0, RetryPolicy(retries=cfg.retries)) as fetcher:
            return await call(RomaAssets(roma), fetcher, instance)

    try:
        job_id = run_async(go())
    except FetchError as exc:
        fail(f"ROMA Connect refused the {what} ({source}): {exc.detail}", EXIT_FAILURE)
        return
    from jobherald.config.sections import JOB_ID_PATTERN

    if not JOB_ID_PATTERN.match(job_id):
        fail(f"started job {job_id!r}, but its id cannot be watched (not a plain id)")
    try:
        # The drop-in is on disk (fsynced) before the id is printed: a kill between the
        # two can never leave a started job that nothing watches.
        target = register(cfg, job_id, lines(job_id))
    except SystemExit:
        click.echo(f"started {what} {job_id} on {source}, but could not watch it", err=True)
        raise
    click.echo(job_id)
    sys.stdout.flush()
    click.echo(
        f"started {what} {job_id} ({name}) on {source}: watching it, wrote {target}", err=True
    )
    if reload_service:
        reload_the_service(cfg, quiet_stdout=True)


def _ids_options(kind: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        options: list[Callable[[Callable[..., None]], Callable[..., None]]] = [
            config_option,
            click.option("--source", "-s", required=True, help="A roma-connect source."),
            click.option(
                "--app", "apps", multiple=True, metavar="ID", help=f"An application to {kind}."
            ),
            click.option("--task", "tasks", multiple=True, metavar="ID", help=f"A task to {kind}."),
            click.option("--name", "-n", help="A name for messages and status."),
            click.option("--instance-id", help="The instance, when not the source's."),
            forget_after_option,
            click.option(
                "--reload", "reload_service", is_flag=True, help="Reload the service after."
            ),
            click.pass_context,
        ]
        for option in reversed(options):
            command = option(command)
        return command

    return wrap


def _check_ids(apps: tuple[str, ...], tasks: tuple[str, ...]) -> None:
    if not apps and not tasks:
        fail("give at least one --app or --task", EXIT_USAGE)
    if len(apps) + len(tasks) > 100:
        fail("at most 100 applications and tasks in one call", EXIT_USAGE)
    for value in (*apps, *tasks):
        if not value.strip():
            fail("an --app or --task is empty", EXIT_USAGE)


@cli.group()
def roma() -> None:
    """Start ROMA Connect asset jobs (export, import, delete) and watch them."""


@roma.command("export")
@_ids_options("export")
def export_command(
    ctx: click.Context,
    config_path: str | None,
    source: str,
    apps: tuple[str, ...],
    tasks: tuple[str, ...],
    name: str | None,
    instance_id: str | None,
    forget_after: str | None,
    reload_service: bool,
) -> None:
    """Export applications and tasks; print the job id and watch the job.

    A source with archive_dir keeps the archive when the export succeeds.
    """
    _check_ids(apps, tasks)
    cfg = load_config(ctx, config_path)

    async def call(assets: RomaAssets, fetcher: Fetcher, instance: str) -> str:
        return await assets.export(fetcher, instance, apps, tasks)

    label = name or default_name("export", apps, tasks)
    _start(cfg, "export", source, instance_id, label, reload_service, call, forget_after)


@roma.command("delete")
@_ids_options("delete")
def delete_command(
    ctx: click.Context,
    config_path: str | None,
    source: str,
    apps: tuple[str, ...],
    tasks: tuple[str, ...],
    name: str | None,
    instance_id: str | None,
    forget_after: str | None,
    reload_service: bool,
) -> None:
    """Delete applications and tasks; print the job id and watch the job."""
    _check_ids(apps, tasks)
    cfg = load_config(ctx, config_path)

    async def call(assets: RomaAssets, fetcher: Fetcher, instance: str) -> str:
        return await assets.delete(fetcher, instance, apps, tasks)

    label = name or default_name("delete", apps, tasks)
    _start(cfg, "delete", source, instance_id, label, reload_service, call, forget_after)


@roma.command("import")
@config_option
@click.argument("package", metavar="FILE.zip", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--source", "-s", required=True, help="A roma-connect source.")
@click.option("--name", "-n", help="A name for messages and status.")
@click.option("--instance-id", help="The instance, when not the source's.")
@click.option("--merge", is_flag=True, help="Merge into existing assets (default: add new).")
@click.option("--prefix", help="Put this before the imported applications' names.")
@click.option(
    "--overwrite-datasources", is_flag=True, help="Let imported data sources replace existing ones."
)
@forget_after_option
@click.option("--reload", "reload_service", is_flag=True, help="Reload the service after.")
@click.pass_context
def import_command(
    ctx: click.Context,
    config_path: str | None,
    package: Path,
    source: str,
    name: str | None,
    instance_id: str | None,
    merge: bool,
    prefix: str | None,
    overwrite_datasources: bool,
    forget_after: str | None,
    reload_service: bool,
) -> None:
    """Import an asset package (a zip); print the job id and watch the job."""
    from jobherald.sources.roma_assets import Upload

    data = _read_package(package)
    cfg = load_config(ctx, config_path)
    upload = Upload(
        package.name,
        data,
        mode="Merge" if merge else None,
        prefix=prefix,
        datasource_overwrite=overwrite_datasources,
    )

    async def call(assets: RomaAssets, fetcher: Fetcher, instance: str) -> str:
        return await assets.import_(fetcher, instance, upload)

    _start(
        cfg,
        "import",
        source,
        instance_id,
        name or f"import of {package.name}",
        reload_service,
        call,
        forget_after,
    )


# The largest package sent (ROMA Connect's console takes packages of a few MB).
MAX_PACKAGE = 512 * 1024 * 1024


def _read_package(path: Path) -> bytes:
    """The package's bytes; exit 2 if it is not a readable zip (before any request)."""
    import io
    import zipfile

    try:
        size = path.stat().st_size
        if size > MAX_PACKAGE:
            fail(
                f"{path}: {size} bytes is more than {MAX_PACKAGE} (not an asset package)",
                EXIT_USAGE,
            )
        data = path.read_bytes()
    except OSError as exc:
        fail(f"{path}: cannot read it: {exc.strerror}", EXIT_USAGE)
        raise AssertionError from None  # unreachable
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError):
        fail(f"{path}: not a zip file (an asset package is the zip an export gives)", EXIT_USAGE)
        raise AssertionError from None  # unreachable
    if broken is not None:
        fail(f"{path}: damaged zip: {broken} does not match its checksum", EXIT_USAGE)
    return data


__all__ = ["default_name", "roma"]
