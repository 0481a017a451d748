"""The ``[[jobs]]`` tables: validated and resolved one at a time, each job's identity
(source, id, instance, params) and the key it is stored under."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from jobherald.config.model import Source, WatchedJob
from jobherald.config.problems import _describe
from jobherald.config.sections import (
    JobSection,
    MainFile,
)
from jobherald.fields import RuleFields
from jobherald.sources.http_json_config import HttpJsonSettings, url_placeholders
from jobherald.sources.sections import (
    WITH_INSTANCES,
    WITH_PARAMS,
)

_RULE_KEYS = frozenset(RuleFields.model_fields)


class _JobTables:
    """``[[jobs]]`` tables validated and resolved one at a time (each left as None once
    it is a WatchedJob); what the main file shares among its jobs worked out once."""

    def __init__(
        self,
        parsed: MainFile | None,
        sources: Mapping[str, Source] | None,
        broken: Set[str] = frozenset(),
    ) -> None:
        # ``sources``: the main file's sources resolved (None: it is invalid; jobs are then
        # only validated). ``broken``: "sources.NAME" and "notifiers.NAME" whose tables
        # failed validation (said once, against the table: not again for each job).
        self.parsed, self.sources, self.broken = parsed, sources, broken
        self.watched: list[WatchedJob] = []
        self.problems: list[str] = []
        self.seen: dict[tuple[str, str, str, tuple[tuple[str, str], ...]], tuple[str, int]] = {}
        if parsed is None:
            return
        named = {
            kind: {n.partition(".")[2] for n in broken if n.startswith(kind)}
            for kind in ("sources.", "notifiers.")
        }
        self.known_sources = ", ".join(sorted({*parsed.sources, *named["sources."]}))
        self.known_notifiers = ", ".join(sorted({*parsed.notifiers, *named["notifiers."]}))
        self.everyone = tuple(parsed.notifiers)

    def _check_notify(self, job: JobSection, where: Callable[[], str]) -> None:
        assert self.parsed is not None
        for i, notifier in enumerate(job.notify or ()):
            if notifier in self.parsed.notifiers or f"notifiers.{notifier}" in self.broken:
                continue
            self.problems.append(
                f"{where()}.notify[{i}]: unknown notifier {notifier!r} "
                f"(known: {self.known_notifiers or 'none defined'})"
            )

    def keyed(self) -> list[WatchedJob]:
        """The jobs, each under its key: its id, unless another job has the same id (in
        another source, instance or namespace): then "source/id", with "@instance" and
        "?name=value&..." (its params) where they are what tells the two apart."""
        by_id: dict[str, list[WatchedJob]] = {}
        for job in self.watched:
            by_id.setdefault(job.id, []).append(job)
        if all(len(same) == 1 for same in by_id.values()):
            return self.watched
        return [
            job if len(by_id[job.id]) == 1 else _keyed(job, job_key(job, by_id[job.id]))
            for job in self.watched
        ]

    def read(self, tables: list[Any], label: str, invalid: list[str]) -> None:
        for i, table in enumerate(tables):
            try:
                job = JobSection.model_validate(table)
            except ValidationError as exc:
                raw = {"jobs": tables}
                for err in exc.errors():
                    err["loc"] = ("jobs", i, *err["loc"])
                    invalid.append(_describe(err, label, raw))
                continue
            tables[i] = None
            if self.sources is not None:
                self._resolve(job, label, i)

    def _resolve(self, job: JobSection, label: str, index: int) -> None:
        assert self.parsed is not None and self.sources is not None
        parsed, problems = self.parsed, self.problems
        section = parsed.sources.get(job.source)

        def where() -> str:  # only worked out for a problem
            return _job_where(label, index, job.id)

        if section is None:
            if f"sources.{job.source}" in self.broken:
                return
            problems.append(
                f"{where()}.source: unknown source {job.source!r} (known: {self.known_sources or 'none defined'})"
            )
            return
        self._check_notify(job, where)
        params = tuple(sorted(job.params.items())) if job.params else ()
        if job.params is not None and not section.params:
            problems.append(
                f"{where()}.params: only for {' and '.join(WITH_PARAMS)} sources "
                f"({job.source!r} is {section.type})"
            )
            return
        source = self.sources.get(job.source)
        placeholders = _placeholders_of(section, source)
        if placeholders:
            missing = sorted(placeholders - {"job_id"} - dict(params).keys())
            if missing:
                names = ", ".join(f"{{{m}}}" for m in missing)
                problems.append(
                    f"{where()}.params: source {job.source!r} has {names} in its url: "
                    f"give {', '.join(missing)} in this job's params"
                )
                return
        if not section.instances:
            if job.instance_id is not None:
                problems.append(
                    f"{where()}.instance_id: only for {' and '.join(WITH_INSTANCES)} sources "
                    f"({job.source!r} is {section.type})"
                )
                return
            instance_id = ""
        else:
            instance_id = job.instance_id or getattr(section, "instance_id", None) or ""
            if not instance_id:
                problems.append(
                    f"{where()}.instance_id: required, as source {job.source!r} sets no instance_id"
                )
                return
        # One job is its source, id, instance and params: the same four twice is one job
        # given twice; the same id with any of the others differing is two jobs.
        identity = (job.id, job.source, instance_id, params)
        if identity in self.seen:
            first = _job_where(*self.seen[identity], job.id)
            problems.append(f"{where()}.id: duplicate job id {job.id!r} (first in {first})")
            return
        self.seen[identity] = (label, index)
        if source is None:  # its source has problems of its own, said against the source
            return
        # A job that sets no rule of its own shares its source's (one Rules, not 100,000).
        own_rules = not _RULE_KEYS.isdisjoint(job.model_fields_set)
        self.watched.append(
            WatchedJob(
                id=job.id,
                name=job.name or job.id,
                source=source.name,
                instance_id=instance_id,
                notify=job.notify if job.notify is not None else self.everyone,
                poll_interval=job.poll_interval or parsed.daemon.poll_interval,
                origin=label,
                rules=job.over(source.rules) if own_rules else source.rules,
                params=params,
                index=index,
                forget_after=job.forget_after,
            )
        )


def _placeholders_of(section: Any, source: Source | None) -> frozenset[str]:
    """The ``{names}`` in an http-json source's url (read from its table when the source
    has problems elsewhere: a job's missing params are said all the same)."""
    settings = getattr(source, "settings", None)
    if isinstance(settings, HttpJsonSettings):
        return settings.placeholders
    url = getattr(section, "url", None)
    if source is None and isinstance(url, str):
        return frozenset(url_placeholders(url, "", []))
    return frozenset()


def _keyed(job: WatchedJob, key: str) -> WatchedJob:
    # Without a name of its own, a job is named by its key: "backup" alone would not say
    # which of the two finished.
    name = key if job.name == job.id else job.name
    return replace(job, id=key, remote=job.id, name=name)


def job_key(job: WatchedJob, same_id: Sequence[WatchedJob]) -> str:
    """The key of a job whose id other configured jobs share (see ``_JobTables.keyed``)."""
    key = f"{job.source}/{job.id}"
    same_source = [j for j in same_id if j.source == job.source]
    if len({j.instance_id for j in same_source}) > 1:
        key += f"@{job.instance_id}"
    same_instance = [j for j in same_source if j.instance_id == job.instance_id]
    if len({j.params for j in same_instance}) > 1:
        key += "?" + "&".join(f"{name}={value}" for name, value in job.params)
    if len(key) > 128:  # what the database keeps of a key: cut, told apart by a hash
        import hashlib

        key = f"{key[:115]}~{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return key


def _job_where(label: str, index: int, job_id: str) -> str:
    return f"{label}: jobs[{index}] (id {job_id!r})"
