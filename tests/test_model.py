from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobherald.model import (
    EventKind,
    JobView,
    Reason,
    Snapshot,
    State,
    duration_seconds,
    format_duration,
    observe,
    observe_error,
    state_from_status,
)

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
def test_status_words_map_to_canonical_states(raw: str, state: State) -> None:
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
