"""kill -9, again and again, while jobs finish: nothing is lost, duplicates only mid-send,
and a failing endpoint's retries hold nothing back (the short run of tests/soak.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak import soak

CYCLES = 10


@pytest.mark.timeout(300)
async def test_repeated_kills_lose_nothing_and_repeat_only_what_was_in_flight(
    tmp_path: Path,
) -> None:
    report = await soak(CYCLES, tmp_path)
    print(report.line())
    assert report.jobs == 30 and report.events == 30
    assert (report.lost, report.repeated_outside_flight, report.wrong_outcome) == (0, 0, 0)
    assert report.messages >= report.events
    # Every message reached the working endpoint within 15 s of its job's flip, kills and
    # the failing endpoint beside it notwithstanding (each URL is a lane of its own).
    assert report.later_than_15s == 0, report.line()
    # Each event's first attempt at the failing endpoint, and retries only on their own
    # schedule (the first after 30 s): never all again at each of the 10 starts.
    assert report.dead_attempts <= 2 * report.events, report.line()
