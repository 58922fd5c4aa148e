"""The report in a real headless browser: charts drawn, no console error, nothing fetched; screenshots kept.

Debian's chromium driven by Playwright (``executable_path``; never ``playwright install``). Screenshots go
to ``.state/screenshots/``; the top of a rollback's report is written to ``docs/report-screenshot.png``,
the picture the README shows (inputs are fixed, so it only changes when the page does).
"""

from __future__ import annotations

from pathlib import Path

import journals
import pytest
from services import require_browser

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[3]
SHOTS = ROOT / ".state" / "screenshots"
README_SHOT = ROOT / "docs" / "report-screenshot.png"
#: The README's picture stays small.
MAX_README_SHOT_BYTES = 150_000
VIEWPORT = {"width": 1100, "height": 900}

#: Per chart: its size on screen and how many drawn marks (paths and symbols with geometry) it has.
CHART_STATS = """() => [...document.querySelectorAll('svg.marks')].map(svg => {
  const box = svg.getBoundingClientRect();
  const marks = [...svg.querySelectorAll('g.mark-line path, g.mark-area path, g.mark-symbol path, g.mark-rule line')]
    .filter(el => { const b = el.getBBox(); return (b.width > 0 || b.height > 0); });
  return {width: box.width, height: box.height, marks: marks.length,
          label: svg.getAttribute('aria-label')};
})"""


@pytest.fixture(scope="module")
def browser():
    chromium = require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


def open_report(browser, name: str, tmp_path: Path):
    """Write the scenario's page to a file, open it; return the page, console errors and requests made."""
    path = tmp_path / f"{name}.html"
    path.write_text(journals.page(name))
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("request", lambda req: requests.append(req.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors, [u for u in requests if u != path.as_uri()]


@pytest.mark.parametrize(("name", "charts"), [("rollback", 1 + 3 + 3 + 3 + 2), ("promotion", 1 + 3 + 3),
                                              ("running", 1 + 3 + 3), ("srm_halt", 1 + 3),
                                              ("segment_rollback", 1 + 3 + 3 + 3)])
def test_the_charts_are_drawn_with_no_console_error(browser, tmp_path, name, charts):
    page, errors, requests = open_report(browser, name, tmp_path)
    try:
        stats = page.evaluate(CHART_STATS)
        assert len(stats) == charts, stats
        for chart in stats:
            assert chart["width"] > 200 and chart["height"] > 100, chart
            assert chart["marks"] >= 2, chart  # a data line or band, and a threshold or boundary at least
        assert errors == []
        assert requests == []  # nothing fetched: no font, no image, no stylesheet
        assert page.locator("#sentence").inner_text().strip()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"report-{name}.png"), full_page=True)
    finally:
        page.close()


def test_the_readme_screenshot(browser, tmp_path):
    page, errors, _ = open_report(browser, "regression", tmp_path)
    try:
        assert errors == []
        # the top of the page: the sentence, the traffic chart and the first metric's charts
        bottom = page.evaluate("() => { const m = document.querySelector('section.metric');"
                               " const r = m.getBoundingClientRect(); return r.bottom + window.scrollY; }")
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        png = page.screenshot(clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": min(bottom + 12, 1300)},
                              type="png")
        assert len(png) < MAX_README_SHOT_BYTES, len(png)
        README_SHOT.write_bytes(png)
    finally:
        page.close()
