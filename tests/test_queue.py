"""The due-queue on its own, at fixed monotonic times."""

from __future__ import annotations

import random

from jobherald.schedule.queue import DueQueue, Entry, jitter_for


def queue() -> DueQueue:
    return DueQueue(random.Random(7))


def take(q: DueQueue, now: float) -> list[str]:
    out = []
    while (entry := q.pop_due(now)) is not None:
        out.append(entry.job_id)
    return out


def test_jobs_come_out_in_the_order_they_are_due() -> None:
    q = queue()
    q.add("late", 10.0, 5.0)
    q.add("early", 10.0, 1.0)
    q.add("middle", 10.0, 3.0)
    assert take(q, 0.5) == []
    assert q.next_due() == 1.0
    assert take(q, 3.0) == ["early", "middle"]
    assert take(q, 9.0) == ["late"]


def test_polls_keep_a_fixed_rate_whatever_a_poll_takes() -> None:
    q = queue()
    q.add("a", 1.0, 0.0)
    polls = 0
    now = 0.0
    while now < 1000.0:
        entry = q.pop_due(now)
        if entry is None:
            due = q.next_due()
            assert due is not None
            now = due
            continue
        polls += 1
        now += 0.3  # each poll takes 0.3 s; the next is due from the last mark, not from now
        q.done(entry, now)
    # Jitter moves single polls, never the rate: 1,000 s at 1 s is 1,000 polls.
    assert 998 <= polls <= 1001


def test_jitter_stays_within_a_tenth_of_the_interval_and_does_not_add_up() -> None:
    q = queue()
    entry = q.add("a", 10.0, 0.0)
    dues = []
    for i in range(200):
        popped = q.pop_due(entry.due)
        assert popped is entry
        due = q.done(entry, 10.0 * i + 0.01)
        assert due is not None
        dues.append(due)
    for i, due in enumerate(dues, start=1):
        assert abs(due - 10.0 * i) <= jitter_for(10.0)
    assert len({round(d, 6) for d in dues}) > 100  # spread, not one fixed offset


def test_a_busy_job_is_not_handed_out_again_even_when_re_timed() -> None:
    q = queue()
    q.add("a", 1.0, 0.0)
    entry = q.pop_due(0.0)
    assert entry is not None and entry.busy
    q.add("a", 5.0, 0.5)  # a reload re-times it while it is being polled
    assert take(q, 100.0) == []
    assert q.done(entry, 1.0) == 0.5  # queued at its new time once the poll ended
    assert take(q, 1.0) == ["a"]


def test_a_failing_job_backs_off_and_returns_on_success() -> None:
    q = queue()
    entry = q.add("a", 10.0, 0.0)
    now = 0.0
    waits = []
    for _ in range(6):
        assert q.pop_due(entry.due) is entry
        now = entry.due + 0.1
        due = q.done(entry, now, failed=True)
        assert due is not None
        waits.append(due - now)
    # 20, 40, 80 s... capped at ten intervals (100 s); jitter only ever adds.
    assert [round(w // 10) * 10 for w in waits] == [20, 40, 80, 100, 100, 100]
    assert all(w <= cap * 1.1 for w, cap in zip(waits, [20, 40, 80, 100, 100, 100], strict=True))
    assert q.pop_due(entry.due) is entry
    now = entry.due
    due = q.done(entry, now)
    assert due is not None and abs(due - (now + 10.0)) <= 1.0
    assert entry.failures == 0


def test_retry_after_is_a_floor_for_the_next_poll() -> None:
    q = queue()
    entry = q.add("a", 30.0, 0.0)
    assert q.pop_due(0.0) is entry
    due = q.done(entry, 0.0, failed=True, retry_after=120.0)
    assert due is not None and 120.0 <= due <= 132.0
    assert take(q, 119.9) == []


def test_retry_after_is_capped_at_the_jobs_backoff_ceiling() -> None:
    # A year (or for ever) asked: the job is polled again within ten intervals (30 s: 300 s).
    q = queue()
    entry = q.add("a", 30.0, 0.0)
    assert q.pop_due(0.0) is entry
    due = q.done(entry, 0.0, failed=True, retry_after=365 * 86400.0)
    assert due is not None and 300.0 <= due <= 330.0
    slow = q.add("b", 3600.0, 0.0)  # an hourly job: its own interval is the ceiling
    assert q.pop_due(0.0) is slow
    due = q.done(slow, 0.0, failed=True, retry_after=1e22)
    assert due is not None and 3600.0 <= due <= 3960.0


def test_a_finished_job_leaves_for_good() -> None:
    q = queue()
    entry = q.add("a", 1.0, 0.0)
    assert q.pop_due(0.0) is entry
    assert q.done(entry, 0.5, terminal=True) is None
    assert "a" not in q
    assert q.next_due() is None
    assert take(q, 1e9) == []


def test_a_job_removed_while_polled_is_not_queued_again() -> None:
    q = queue()
    entry = q.add("a", 1.0, 0.0)
    assert q.pop_due(0.0) is entry
    q.remove("a")
    assert q.done(entry, 0.5) is None
    assert take(q, 1e9) == []


def test_a_removed_and_re_added_job_has_one_place_in_line() -> None:
    q = queue()
    q.add("a", 1.0, 0.0)
    q.remove("a")
    q.add("a", 1.0, 2.0)
    q.add("a", 1.0, 3.0)  # re-timed: the earlier place is void
    assert take(q, 2.5) == []
    assert take(q, 10.0) == ["a"]
    assert len(q) == 1


def test_a_job_that_fell_far_behind_is_polled_once_not_in_a_burst() -> None:
    q = queue()
    entry = q.add("a", 1.0, 0.0)
    assert q.pop_due(0.0) is entry
    q.done(entry, 60.0)  # the poll took a minute
    assert take(q, 60.0) == ["a"]
    entry2 = q.entry("a")
    assert isinstance(entry2, Entry)
    due = q.done(entry2, 60.0)
    assert due is not None and due >= 60.0 + 0.9
