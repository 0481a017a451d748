from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from jobherald.model import (
    EventKind,
    JobView,
    Outcome,
    Reason,
    Rules,
    Snapshot,
    SourceHealth,
    State,
    backoff_interval,
    duration_seconds,
    format_duration,
    observe,
    observe_error,
    observe_source_error,
    observe_source_ok,
)
from jobherald.sources.roma import state_from_status

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("RUNNING", State.RUNNING),
        ("Running", State.RUNNING),
        ("running", State.RUNNING),
        ("SUCCEEDED", State.SUCCEEDED),
        ("Success", State.SUCCEEDED),
        ("Finished", State.SUCCEEDED),
        ("FINISHED", State.SUCCEEDED),
        ("FAILED", State.FAILED),
        ("Failed", State.FAILED),
        (" failed ", State.FAILED),
        ("Queued", State.UNKNOWN),
        ("INIT", State.UNKNOWN),
    ],
)
def test_roma_status_words_map_to_canonical_states(raw: str, state: State) -> None:
    assert state_from_status(raw) is state


def test_first_running_poll_records_a_transition_from_nothing() -> None:
    out = observe(JobView("j"), Snapshot(State.RUNNING, "RUNNING", progress=0.2), NOW)
    assert out.changed
    assert out.transition is not None
    assert out.transition.from_state is None
    assert out.transition.to_state is State.RUNNING
    assert [e.kind for e in out.events] == [EventKind.STARTED]
    assert out.job.last_changed_at == NOW


def test_a_poll_that_changes_nothing_writes_nothing() -> None:
    first = observe(JobView("j"), Snapshot(State.RUNNING, "RUNNING", progress=0.2), NOW).job
    again = observe(
        first, Snapshot(State.RUNNING, "RUNNING", progress=0.2), NOW + timedelta(seconds=30)
    )
    assert not again.changed
    assert again.transition is None
    assert again.job == first


def test_small_progress_moves_update_the_job_but_keep_no_history_row() -> None:
    first = observe(JobView("j"), Snapshot(State.RUNNING, "RUNNING", progress=0.20), NOW).job
    out = observe(first, Snapshot(State.RUNNING, "RUNNING", progress=0.25), NOW)
    assert out.changed
    assert out.job.progress == 0.25
    assert out.transition is None


def test_progress_moves_of_a_tenth_are_kept_in_history() -> None:
    first = observe(JobView("j"), Snapshot(State.RUNNING, "RUNNING", progress=0.20), NOW).job
    out = observe(first, Snapshot(State.RUNNING, "RUNNING", progress=0.31), NOW)
    assert out.transition is not None
    assert out.transition.from_state is State.RUNNING
    assert out.transition.to_state is State.RUNNING
    assert out.job.recorded_progress == 0.31


@pytest.mark.parametrize(
    ("state", "event"), [(State.SUCCEEDED, EventKind.SUCCEEDED), (State.FAILED, EventKind.FAILED)]
)
def test_reaching_a_terminal_state_causes_its_event(state: State, event: EventKind) -> None:
    running = observe(JobView("j"), Snapshot(State.RUNNING, "RUNNING"), NOW).job
    out = observe(running, Snapshot(state, state.value.upper(), progress=1.0), NOW)
    assert [e.kind for e in out.events] == [event]
    assert out.job.state.terminal


def test_unknown_status_is_kept_raw_and_causes_no_event() -> None:
    out = observe(JobView("j"), Snapshot(State.UNKNOWN, "Queued"), NOW)
    assert out.job.state is State.UNKNOWN
    assert out.job.raw_status == "Queued"
    assert out.events == ()
    assert not out.job.state.terminal


def test_failure_reasons_and_archive_id_are_kept() -> None:
    reason = Reason("task", "sync", "ROMA.1", "broken")
    out = observe(JobView("j"), Snapshot(State.FAILED, "Failed", reasons=(reason,)), NOW)
    assert out.job.reasons == (reason,)
    ok = observe(JobView("k"), Snapshot(State.SUCCEEDED, "Success", archive_id="a1"), NOW)
    assert ok.job.archive_id == "a1"


def test_an_error_is_recorded_once_per_kind_of_failure() -> None:
    job = JobView("j", state=State.RUNNING)
    first = observe_error(job, "HTTP 500: boom", "HTTP 500: boom (request a)", NOW)
    assert first.changed
    assert first.job.error == "HTTP 500: boom (request a)"
    same = observe_error(first.job, "HTTP 500: boom", "HTTP 500: boom (request b)", NOW)
    assert not same.changed
    other = observe_error(same.job, "timeout: slow", "timeout: slow", NOW + timedelta(minutes=1))
    assert other.changed
    assert other.job.error_since == NOW
    assert other.job.state is State.RUNNING


def test_a_good_poll_clears_the_error() -> None:
    job = observe_error(JobView("j", state=State.RUNNING), "x", "x", NOW).job
    out = observe(job, Snapshot(State.RUNNING, "RUNNING"), NOW)
    assert out.changed
    assert out.job.error is None
    assert out.job.error_since is None


def test_duration_comes_from_begin_and_end_times() -> None:
    job = JobView("j", begin_time=NOW, end_time=NOW + timedelta(minutes=4, seconds=12))
    assert duration_seconds(job) == 252
    assert duration_seconds(JobView("j", begin_time=NOW)) is None
    assert format_duration(252) == "4m 12s"
    assert format_duration(3600 * 26 + 5) == "1d 2h 5s"
    assert format_duration(0) == "0s"
    assert format_duration(None) is None


RULES = Rules(
    error_after=300,
    stall_after=3600,
    lost_after=3,
    max_duration=43200,
    progress_steps=(0.25, 0.5, 0.75),
)


def at(minutes: float) -> datetime:
    return NOW + timedelta(minutes=minutes)


def kinds(outcome: Outcome) -> list[EventKind]:
    return [e.kind for e in outcome.events]


def running_snap(progress: float) -> Snapshot:
    return Snapshot(State.RUNNING, "RUNNING", progress=progress)


def test_started_is_said_once_even_across_unknown_states() -> None:
    first = observe(JobView("j"), running_snap(0.1), at(0), RULES)
    assert kinds(first) == [EventKind.STARTED]
    odd = observe(first.job, Snapshot(State.UNKNOWN, "Paused"), at(1), RULES)
    back = observe(odd.job, running_snap(0.1), at(2), RULES)
    assert kinds(back) == []


def test_each_progress_step_crossed_is_said_once() -> None:
    job = observe(JobView("j"), running_snap(0.1), at(0), RULES).job
    out = observe(job, running_snap(0.6), at(1), RULES)
    assert [(e.kind, e.detail) for e in out.events] == [
        (EventKind.PROGRESS, "the job passed 25%"),
        (EventKind.PROGRESS, "the job passed 50%"),
    ]
    assert kinds(observe(out.job, running_snap(0.7), at(2), RULES)) == []
    assert kinds(observe(out.job, running_snap(0.8), at(2), RULES)) == [EventKind.PROGRESS]


def test_a_job_without_progress_for_stall_after_is_stalled_once() -> None:
    job = observe(JobView("j"), running_snap(0.3), at(0), RULES).job
    assert kinds(observe(job, running_snap(0.3), at(59), RULES)) == []
    stalled = observe(job, running_snap(0.3), at(60), RULES)
    assert kinds(stalled) == [EventKind.STALLED]
    assert stalled.events[0].detail.startswith("no progress for 1h (at 30% since ")
    assert kinds(observe(stalled.job, running_snap(0.3), at(200), RULES)) == []
    moved = observe(stalled.job, running_snap(0.35), at(201), RULES)
    assert kinds(moved) == []
    assert kinds(observe(moved.job, running_snap(0.35), at(261), RULES)) == [EventKind.STALLED]


def test_stall_after_zero_turns_stalls_off() -> None:
    rules = replace(RULES, stall_after=None, max_duration=None)
    job = observe(JobView("j"), running_snap(0.3), at(0), rules).job
    assert kinds(observe(job, running_snap(0.3), at(10_000), rules)) == []


def test_running_past_max_duration_is_stalled_once() -> None:
    snap = replace(running_snap(0.1), begin_time=NOW - timedelta(hours=11, minutes=59))
    job = observe(JobView("j"), snap, at(0), replace(RULES, stall_after=None)).job
    over = observe(job, replace(snap, progress=0.15), at(1), RULES)
    assert kinds(over) == [EventKind.STALLED]
    assert over.events[0].detail == "still running after 12h, longer than max_duration 12h"
    assert kinds(observe(over.job, replace(snap, progress=0.2), at(2), RULES)) == []


def test_no_such_job_lost_after_times_in_a_row_makes_it_lost() -> None:
    job = observe(JobView("j"), running_snap(0.5), at(0), RULES).job
    once = observe_error(job, "HTTP 404", "HTTP 404 (a)", at(1), RULES, not_found=True)
    twice = observe_error(once.job, "HTTP 404", "HTTP 404 (b)", at(2), RULES, not_found=True)
    assert (twice.job.state, twice.job.not_found, kinds(twice)) == (State.RUNNING, 2, [])
    lost = observe_error(twice.job, "HTTP 404", "HTTP 404 (c)", at(3), RULES, not_found=True)
    assert lost.job.state is State.LOST
    assert lost.job.state.terminal
    assert kinds(lost) == [EventKind.LOST]
    assert lost.transition is not None
    assert (lost.transition.from_state, lost.transition.to_state) == (State.RUNNING, State.LOST)


def test_another_answer_breaks_the_run_of_no_such_job() -> None:
    job = observe(JobView("j"), running_snap(0.5), at(0), RULES).job
    for minute in range(10):
        job = observe_error(job, "HTTP 404", "x", at(minute), RULES, not_found=True).job
        job = observe_error(job, "HTTP 500", "y", at(minute), RULES).job
    assert job.state is State.RUNNING


def test_failing_polls_give_one_error_after_error_after_and_one_recovered() -> None:
    job = observe(JobView("j"), running_snap(0.5), at(0), RULES).job
    events: list[EventKind] = []
    for minute in range(1, 20):
        out = observe_error(job, "HTTP 500: boom", f"HTTP 500: boom ({minute})", at(minute), RULES)
        events += kinds(out)
        job = out.job
    assert events == [EventKind.ERROR]
    recovered = observe(job, running_snap(0.5), at(21), RULES)
    assert kinds(recovered) == [EventKind.RECOVERED]
    assert (
        recovered.events[0].detail
        == "polling works again after failing since 2026-11-28 12:01:00 UTC"
    )
    assert kinds(observe(recovered.job, running_snap(0.5), at(22), RULES)) == []


def test_a_short_outage_says_nothing() -> None:
    job = observe(JobView("j"), running_snap(0.5), at(0), RULES).job
    failing = observe_error(job, "timeout", "timeout", at(1), RULES)
    assert kinds(observe(failing.job, running_snap(0.5), at(3), RULES)) == []


def test_credential_failures_are_not_reported_per_job() -> None:
    job = observe(JobView("j"), running_snap(0.5), at(0), RULES).job
    for minute in range(1, 30):
        out = observe_error(job, "HTTP 401", "HTTP 401", at(minute), RULES, source_wide=True)
        assert kinds(out) == []
        job = out.job
    assert job.error == "HTTP 401"


def test_a_source_with_failing_credentials_gives_one_error_per_outage() -> None:
    health = SourceHealth()
    said: list[EventKind] = []
    for minute in range(0, 12):
        health, events = observe_source_error(health, "HTTP 401", "HTTP 401 (r)", at(minute), RULES)
        said += [e.kind for e in events]
    assert said == [EventKind.ERROR]
    health, events = observe_source_ok(health)
    assert [e.kind for e in events] == [EventKind.RECOVERED]
    assert health == SourceHealth()
    assert observe_source_ok(health) == (SourceHealth(), ())


@pytest.mark.parametrize(
    ("base", "failures", "expected"),
    [
        (30, 0, 30),
        (30, 1, 60),
        (30, 2, 120),
        (30, 3, 240),
        (30, 5, 300),
        (120, 9, 600),
        (3600, 4, 3600),
        (1, 30, 10),
    ],
)
def test_a_failing_job_backs_off_to_ten_intervals_or_ten_minutes(
    base: float, failures: int, expected: float
) -> None:
    assert backoff_interval(base, failures) == expected


def test_the_model_knows_no_vendor_and_imports_nothing_of_jobherald() -> None:
    import ast
    from pathlib import Path

    from jobherald import model

    source = Path(model.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m.startswith("jobherald")], imported
    assert not any(word in source.lower() for word in ("roma", "huawei", "apig"))
