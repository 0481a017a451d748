"""Listings that read what they show: /api/jobs pages (Link rel="next", filters, ETag),
/api/counts, the page's pagination, one job's page, and `status` filtered and streamed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from jobherald.config import Config
from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, failed, running, succeeded
from tests.conftest import ConfigWriter, jobherald, wait_for
from tests.test_http import free_port

JOBS = 250


@pytest.fixture
async def listed(sim: Simulator, configs: ConfigWriter) -> AsyncIterator[tuple[str, Config]]:
    """A daemon watching 250 jobs: every fifth failed, every fifth succeeded, the rest running."""
    for i in range(JOBS):
        answer = [failed(), succeeded(), running(0.5), running(0.2), running(0.7)][i % 5]
        sim.add(SimJob(f"job{i:03d}", [answer]))
    port = free_port()
    configs.extra = [f'[http]\nlisten = "127.0.0.1:{port}"\n']
    cfg = configs.load(
        [{"id": f"job{i:03d}", "name": f"export {i:03d}"} for i in range(JOBS)],
        daemon={"poll_interval": "5s", "concurrency": 32},
    )
    daemon = Daemon(cfg)
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: daemon.ready, 20, "the daemon")
    await wait_for(
        lambda: (
            daemon.watcher is not None
            and sum(v.state.value != "pending" for v in daemon.watcher.views.values()) == JOBS
        ),
        30,
        "a first poll of every job",
    )
    await daemon.watcher.flush()  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", cfg
    daemon.stop()
    await asyncio.wait_for(task, 20)


async def test_api_jobs_pages_through_every_job_with_link_headers(
    listed: tuple[str, Config],
) -> None:
    base, _ = listed
    seen: list[str] = []
    url: str | None = f"{base}/api/jobs?limit=100"
    pages = 0
    async with aiohttp.ClientSession() as http:
        while url is not None:
            async with http.get(url) as answer:
                assert answer.status == 200
                rows = await answer.json()
                link = answer.headers.get("Link")
            pages += 1
            assert len(rows) <= 100
            seen += [r["id"] for r in rows]
            url = None
            if link is not None:
                target, rel = link.split(";")
                assert rel.strip() == 'rel="next"'
                url = base + target.strip()[1:-1]
        assert pages == 3 and sorted(seen) == [f"job{i:03d}" for i in range(JOBS)]
        assert len(set(seen)) == JOBS  # no row twice across pages
        # Sorted by the database: running first (by name), then succeeded, then failed.
        async with http.get(f"{base}/api/jobs?limit=3") as answer:
            first = await answer.json()
        assert [r["id"] for r in first] == ["job002", "job003", "job004"]
        assert set(first[0]) >= {"id", "status", "progress", "eta", "interval", "reasons"}
        async with http.get(f"{base}/api/counts") as answer:
            counts = await answer.json()
        assert counts == {
            "all": 250,
            "running": 150,
            "succeeded": 50,
            "failed": 50,
            "removed": 0,
        }


async def test_api_jobs_filters_in_the_database_and_answers_304_when_nothing_changed(
    listed: tuple[str, Config],
) -> None:
    base, _ = listed
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/jobs?state=failed&limit=1000") as answer:
            failed_rows = await answer.json()
            tag = answer.headers["ETag"]
        assert len(failed_rows) == 50 and {r["status"] for r in failed_rows} == {"failed"}
        async with http.get(
            f"{base}/api/jobs?state=failed&limit=1000", headers={"If-None-Match": tag}
        ) as answer:
            assert answer.status == 304
            assert await answer.read() == b""
        async with http.get(f"{base}/api/jobs?q=EXPORT%2012") as answer:
            found = await answer.json()
        assert sorted(r["id"] for r in found) == [f"job{i}" for i in range(120, 130)]
        async with http.get(f"{base}/api/jobs?q=100%25") as answer:
            assert await answer.json() == []  # % is a character, not a wildcard
        async with http.get(f"{base}/api/jobs?source=nope") as answer:
            assert await answer.json() == []
        # The last cursor's rank is 2**63: a 400 like any other cursor no page gave.
        big = "WzkyMjMzNzIwMzY4NTQ3NzU4MDgsICJhIiwgImIiXQ"
        for bad in (
            "limit=0",
            "limit=x",
            "limit=1001",
            "cursor=%%%",
            "cursor=WzFd",
            f"cursor={big}",
        ):
            async with http.get(f"{base}/api/jobs?{bad}") as answer:
                assert answer.status == 400, bad
                assert "error" in await answer.json()
                # An error answer carries the security headers too.
                assert answer.headers["X-Content-Type-Options"] == "nosniff", bad


async def test_the_page_shows_one_page_and_the_counts_of_all(listed: tuple[str, Config]) -> None:
    base, _ = listed
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as answer:
            page = await answer.text()
        assert page.count("<tr data-id=") == 100
        assert 'data-count="all">250<' in page and 'data-count="failed">50<' in page
        assert 'rel="next">next 100 jobs' in page
        async with http.get(f"{base}/?state=lost") as answer:
            empty = await answer.text()
        assert "no jobs lost" in empty and 'rel="next"' not in empty
        async with http.get(f"{base}/jobs/job007") as answer:
            one = await answer.text()
        assert answer.status == 200 and "export 007" in one
        async with http.get(f"{base}/jobs/nope") as answer:
            assert answer.status == 404


async def test_status_filters_limits_and_streams_its_json(
    listed: tuple[str, Config], configs: ConfigWriter
) -> None:
    _, cfg = listed
    code, out, err = await jobherald("status", "--json", "-c", str(cfg.path))
    assert code == 0, err
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [f"job{i:03d}" for i in range(JOBS)]  # registered order
    assert out == json.dumps(rows, indent=2) + "\n"  # the same text as before, row by row
    assert all(r["interval"] == 5.0 for r in rows)
    code, out, _ = await jobherald(
        "status", "--json", "--state", "failed", "--limit", "7", "-c", str(cfg.path)
    )
    assert [r["id"] for r in json.loads(out)] == [f"job{i:03d}" for i in range(0, 35, 5)]
    code, out, _ = await jobherald(
        "status", "--state", "succeeded", "--source", "roma", "--limit", "2", "-c", str(cfg.path)
    )
    assert code == 0 and "job001" in out and "job006" in out and "job011" not in out
    code, _, err = await jobherald("status", "--state", "done", "-c", str(cfg.path))
    assert code == 2 and "'done' is not one of" in err
    # Configured jobs the database does not know yet come last, as pending, once each.
    known = [{"id": f"job{i:03d}", "name": f"export {i:03d}"} for i in range(JOBS)]
    configs.write([*known, "new1", "new2"], daemon={"poll_interval": "5s"})
    for options, count in (([], JOBS + 2), (["--state", "pending"], 2)):
        code, out, err = await jobherald("status", "--json", *options, "-c", str(cfg.path))
        assert code == 0, err
        rows = json.loads(out)
        assert len(rows) == count and [r["id"] for r in rows[-2:]] == ["new1", "new2"]
        assert rows[-1]["status"] == "pending" and rows[-1]["interval"] == 5.0
    # Under the source's max_rate, the interval each job gets: 150 jobs still polled at
    # 10 requests a second come round every 15 s, not every 5 s.
    configs.write(
        [{"id": f"job{i:03d}", "name": f"export {i:03d}"} for i in range(JOBS)],
        daemon={"poll_interval": "5s"},
        source={"max_rate": 10},
    )
    code, out, err = await jobherald("status", "--json", "--state", "running", "-c", str(cfg.path))
    assert code == 0, err
    assert {r["interval"] for r in json.loads(out)} == {15.0}


async def test_jobs_that_left_the_config_are_counted_apart_and_listed_on_asking(
    sim: Simulator, configs: ConfigWriter
) -> None:
    """After a reload that drops two of six jobs: the page, /api/jobs and /api/counts
    show the four watched ones, the metrics agree, and the two are listed on asking."""
    for i in range(6):
        sim.add(SimJob(f"j{i}", [running(0.5)]))
    port = free_port()
    configs.extra = [f'[http]\nlisten = "127.0.0.1:{port}"\n']
    cfg = configs.load([f"j{i}" for i in range(6)], daemon={"poll_interval": "5s"})
    daemon = Daemon(cfg)
    task = asyncio.create_task(daemon.run())
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_for(lambda: daemon.ready, 20, "the daemon")
        await wait_for(
            lambda: all(v.state.value == "running" for v in daemon.watcher.views.values()),  # type: ignore[union-attr]
            20,
            "every job running",
        )
        configs.write([f"j{i}" for i in range(4)], daemon={"poll_interval": "5s"})
        daemon.reload()
        await wait_for(lambda: len(daemon.config.jobs) == 4, 20, "the reload")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/counts") as answer:
                assert await answer.json() == {"all": 4, "running": 4, "removed": 2}
            async with http.get(f"{base}/api/jobs") as answer:
                assert sorted(r["id"] for r in await answer.json()) == ["j0", "j1", "j2", "j3"]
            async with http.get(f"{base}/api/jobs?removed=1") as answer:
                rows = await answer.json()
            assert [(r["id"], r["status"], r["removed"]) for r in rows] == [
                ("j4", "running", True),
                ("j5", "running", True),
            ]
            async with http.get(f"{base}/api/jobs?removed=all") as answer:
                assert len(await answer.json()) == 6
            async with http.get(f"{base}/api/jobs?removed=yes") as answer:
                assert answer.status == 400
            async with http.get(f"{base}/") as answer:
                page = await answer.text()
            assert 'data-count="all">4<' in page and 'data-count="removed">2<' in page
            assert page.count("<tr data-id=") == 4
            async with http.get(f"{base}/metrics") as answer:
                metrics = await answer.text()
        assert 'jobherald_jobs{state="running"} 4.0' in metrics
        code, out, err = await jobherald("status", "-c", str(cfg.path))
        assert code == 0, err
        assert [line.split()[0] for line in out.splitlines()[1:]] == ["j0", "j1", "j2", "j3"]
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)


async def test_the_pages_label_every_cell_and_show_a_failed_job_s_first_reason(
    sim: Simulator, configs: ConfigWriter
) -> None:
    """On a phone the cells stack with their labels: every cell of the list and of a
    job's transitions has one; a failed job's "Last error" is its first reason, and a
    reason without a resource reads as its code and message."""
    import re

    from jobherald.http import pages
    from jobherald.report import history_rows, page_rows
    from jobherald.store import JobFilter, Store

    reasons = [{"error_code": "E42", "error_msg": "the task is gone"}]
    sim.add(SimJob("f", [failed()], reasons=reasons))
    cfg = configs.load([{"id": "f", "name": "nightly"}])
    await Daemon(cfg).run_once()
    store = await Store.open(cfg.database_url)
    try:
        rows, _ = await page_rows(cfg, store, JobFilter(), 10)
        history = await history_rows(store, "f")
    finally:
        await store.close()
    assert history is not None
    listing = pages.index(cfg, rows, {"failed": 1}, JobFilter())
    one = pages.job(cfg, rows[0], history)
    for page in (listing, one):
        cells = re.findall(r"<td[^>]*>", page)
        assert cells and all("data-label=" in cell for cell in cells), cells
    assert '<td data-label="Last error" class="error">E42: the task is gone</td>' in listing
    assert "<li>E42: the task is gone</li>" in one
