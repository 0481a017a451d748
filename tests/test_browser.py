"""The status page in a real browser: Debian's Chromium, driven by Playwright (which never
downloads a browser of its own), against a daemon watching the simulator."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jobherald.sources.simulator import SimJob, Simulator, failed, running, succeeded
from tests.conftest import ConfigWriter, Receiver, spawn_daemon
from tests.test_http import TOKEN, free_port, get, http_section

CHROMIUM = Path("/usr/bin/chromium")
# Chromium's own calls home are refused on a closed network: keep it from trying.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing (make test installs Debian's chromium package)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def site(sim: Simulator, receiver: Receiver, configs: ConfigWriter) -> AsyncIterator[str]:
    climb = [running(p / 10) for p in range(1, 10)]
    sim.add(SimJob("climb", [*climb, *climb[-1:] * 2, succeeded()], archive_id="arch-9"))
    sim.add(
        SimJob(
            "broke",
            [running(0.2), failed()],
            reasons=[
                {
                    "resource_type": "task",
                    "resource_name": "sync",
                    "error_code": "ROMA.1",
                    "error_msg": "<b>bad</b> input",
                }
            ],
        )
    )
    sim.add(SimJob("wait", [running(0.05)]))
    port = free_port()
    configs.extra = [http_section(port)]
    config = configs.write(
        [
            {"id": "climb", "name": "nightly export"},
            {"id": "broke", "name": "orders <import>"},
            "wait",
        ],
        daemon={"poll_interval": "700ms"},
    )
    log = configs.folder / "daemon.log"
    proc = await spawn_daemon(config, log)
    base = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> bool:
            try:
                return (await get(f"{base}/readyz"))[0] == 200
            except OSError:
                return False

        for _ in range(300):
            if await ready():
                break
            await asyncio.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)


@pytest.mark.timeout(120)
async def test_the_page_lists_jobs_and_follows_them_live(
    browser: Any, site: str, tmp_path: Path
) -> None:
    context = await browser.new_context(
        http_credentials={"username": "ops", "password": TOKEN},
        viewport={"width": 1200, "height": 800},
    )
    page = await context.new_page()
    complaints: list[str] = []
    page.on("console", lambda message: complaints.append(message.text))
    await page.goto(f"{site}/")
    await page.wait_for_function(
        "() => document.querySelectorAll('#jobs tbody tr[data-id]').length === 3"
    )
    names = await page.locator("#jobs tbody tr td:first-child a").all_text_contents()
    assert sorted(names) == ["nightly export", "orders <import>", "wait"]
    # Text from the upstream is shown as text, never as markup.
    assert await page.locator("#jobs b").count() == 0
    await page.evaluate("() => { window.stillTheSamePage = true; }")

    bar = page.locator('tr[data-id="climb"] progress')
    await bar.wait_for()
    first = float(await bar.evaluate("el => el.value"))
    await page.wait_for_function(
        """first => {
            const bar = document.querySelector('tr[data-id="climb"] progress');
            return bar !== null && bar.value > first;
        }""",
        arg=first,
        timeout=30_000,
    )
    later = float(await page.locator('tr[data-id="climb"] progress').evaluate("el => el.value"))
    assert later > first
    await page.wait_for_function(
        """() => document.querySelector('tr[data-id="climb"] .badge').textContent
            === 'succeeded'""",
        timeout=30_000,
    )
    assert await page.evaluate("() => window.stillTheSamePage === true"), "the page was reloaded"
    assert await page.locator('tr[data-id="broke"] .badge').text_content() == "failed"
    eta = await page.locator('tr[data-id="wait"] .eta').text_content()
    await page.screenshot(path=str(tmp_path / "status.png"), full_page=True)

    # A filter, then a job's page with its chart.
    await page.goto(f"{site}/?state=failed")
    await page.wait_for_selector('tr[data-id="broke"]')
    assert await page.locator('tr[data-id="climb"]').count() == 0
    await page.goto(f"{site}/")
    await page.click('tr[data-id="climb"] a')
    await page.wait_for_url(f"{site}/jobs/climb")
    chart = page.locator("svg#chart")
    await chart.wait_for()
    assert await chart.locator("polyline").count() == 1
    assert await chart.locator("circle").count() >= 3
    assert "arch-9" in await page.content()
    await page.screenshot(path=str(tmp_path / "job.png"), full_page=True)
    for shot in ("status.png", "job.png"):
        assert (tmp_path / shot).stat().st_size > 5_000
    await context.close()
    assert eta is not None
    assert not [c for c in complaints if "Content Security Policy" in c], complaints


async def test_the_page_works_without_javascript_and_on_a_phone(browser: Any, site: str) -> None:
    context = await browser.new_context(
        http_credentials={"username": "ops", "password": TOKEN},
        java_script_enabled=False,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
    )
    page = await context.new_page()
    await page.goto(f"{site}/")
    assert await page.locator("#jobs tbody tr[data-id]").count() == 3
    assert await page.locator('tr[data-id="climb"] a').get_attribute("href") == "/jobs/climb"
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390 + 1, f"the page is {width}px wide on a 390px screen"
    await context.close()
    # Without the token: 401, and a challenge that makes a browser ask for it.
    bare = await browser.new_context()
    response = await bare.request.get(f"{site}/")
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Basic realm=")
    await bare.close()


UNLABELLED = """() => [...document.querySelectorAll('table td')]
    .filter(td => !td.dataset.label || getComputedStyle(td, '::before').content === 'none')
    .map(td => td.outerHTML.slice(0, 120))"""


@pytest.mark.timeout(120)
async def test_every_cell_keeps_its_label_on_a_phone_and_a_failed_job_shows_its_reason(
    browser: Any, site: str
) -> None:
    for width, phone in ((390, True), (1280, False)):
        context = await browser.new_context(
            http_credentials={"username": "ops", "password": TOKEN},
            java_script_enabled=False,
            viewport={"width": width, "height": 844},
            is_mobile=phone,
        )
        page = await context.new_page()
        for _ in range(100):  # without scripts: read again until the failure is on it
            await page.goto(f"{site}/")
            row = page.locator('tr[data-id="broke"]')
            if "failed" in await row.locator("td.state").inner_text():
                break
            await asyncio.sleep(0.2)
        error = await row.locator("td.error").inner_text()
        assert "ROMA.1" in error and "<b>bad</b> input" in error, error
        header = page.locator("#jobs thead")
        if phone:
            # The header row is hidden: each cell says what it is.
            assert not await header.is_visible()
            assert await page.evaluate(UNLABELLED) == []
            assert await row.locator("td.error").get_attribute("data-label") == "Last error"
        else:
            assert await header.is_visible()
        await page.goto(f"{site}/jobs/broke")
        assert "<b>bad</b> input" in await page.locator("body").inner_text()
        if phone:
            assert await page.evaluate(UNLABELLED) == []
        scroll = await page.evaluate("() => document.documentElement.scrollWidth")
        assert scroll <= width + 1, f"the job's page is {scroll}px wide on a {width}px screen"
        await context.close()


async def test_a_report_reads_well_as_an_html_email(browser: Any, tmp_path: Path) -> None:
    """The default report in html, as a mail client shows it at a phone's width and a
    desktop's: its sections as headings and lists, nothing wider than the screen."""
    from jobherald.notify.reports import default_report
    from jobherald.quiet import zone_named
    from jobherald.templates import report_sample

    message = default_report(report_sample(), zone_named("Europe/Berlin"), "html")
    assert message.title == "Report morning: 480 succeeded, 20 failed, 3 lost"
    for width in (390, 1280):
        context = await browser.new_context(
            viewport={"width": width, "height": 900}, java_script_enabled=False
        )
        page = await context.new_page()
        await page.set_content(
            f'<!doctype html><html><head><meta name="viewport" content="width=device-width">'
            f"</head><body>{message.body}</body></html>"
        )
        headings = await page.locator("h3").all_inner_texts()
        assert headings == [
            "Failed (20, 3 new)",
            "Slowest against their usual",
            "Still running past their usual duration",
            "Sources in error",
        ]
        assert await page.locator("li").count() == 20 + 1 + 1 + 1
        text = await page.locator("body").inner_text()
        assert "480 succeeded, 20 failed, 3 lost; the window before: 470 succeeded" in text
        assert "nightly export 3h 10m, usually 1h 5m" in text
        scroll = await page.evaluate("() => document.documentElement.scrollWidth")
        assert scroll <= width + 1, f"the report is {scroll}px wide on a {width}px screen"
        shot = tmp_path / f"report-{width}.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 5_000
        await context.close()
