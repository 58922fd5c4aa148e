"""The rollout pages in a real Airflow UI (``airflow standalone``): Airflow's auth on every route, and a browser.

The run is real (a rollout the first task refuses at once: cheap, and it leaves the endpoint as it was);
its history is seeded into the store the API server reads (``CANARY_HISTORY_URL`` of the fixture), as the
rollout tasks' journal would write it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from services import require_browser

from canary.history import Look, RolloutEvent, RolloutRecord, StartedBy, open_history

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "api-model"  # the model of tests/airflow_api/conftest.py
DAG_ID = f"canary_rollout__{MODEL}"
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".state" / "screenshots"


def seed(history, run_id: str, started_s: float) -> None:
    history.start(RolloutRecord(dag_id=DAG_ID, run_id=run_id, model=MODEL, endpoint="api", candidate="v2",
                                stable="v1", started_by=StartedBy.API, started_by_detail="admin",
                                reason="ui test", started_at_s=started_s, stages_planned=(50, 100)))
    looks = [(0, 50, "continue", "not yet shown within tolerance"), (0, 50, "advance", "error rate within 1.5x"),
             (1, 100, "advance", "error rate within 1.5x")]
    for i, (stage, weight, decision, reason) in enumerate(looks):
        history.add_look(Look(dag_id=DAG_ID, run_id=run_id, stage_index=stage, look_at_s=started_s + 20 + 10 * i,
                              weight_pct=weight, decision=decision, reason=reason, elapsed_s=10.0 * (i + 1),
                              evidence={"canary_requests": 300 * (i + 1), "stable_requests": 290 * (i + 1)}))
    history.add_event(RolloutEvent(dag_id=DAG_ID, run_id=run_id, at_s=started_s + 5, kind="traffic",
                                   key="stage_1", data={"weight_pct": 50}))
    history.finish(DAG_ID, run_id, outcome="promoted", reason="every stage passed", finished_at_s=started_s + 151,
                   stages_reached=2)


@pytest.fixture(scope="module")
def rollout_run(airflow_server) -> str:
    """Return the id of a finished run of the rollout DAG whose history is in the server's store."""
    client = airflow_server.client()
    run = client.trigger(DAG_ID, {"version": "v404", "reason": "ui test"})
    assert airflow_server.wait_run(DAG_ID, run["dag_run_id"], timeout_s=180) == "failed"
    seed(open_history(airflow_server.history_url), run["dag_run_id"], started_s=1_800_000_000.0)
    return run["dag_run_id"]


def token(server) -> str:
    reply = requests.post(f"{server.url}/auth/token", json={"username": server.username,
                                                            "password": server.password}, timeout=30)
    reply.raise_for_status()
    return reply.json()["access_token"]


def paths(run_id: str) -> dict[str, str]:
    run = quote(run_id, safe="")
    return {"tab": f"/canary/rollouts/{DAG_ID}/{run}", "list": "/canary/rollouts", "json_list": "/canary/api/rollouts",
            "json_run": f"/canary/api/rollouts/{DAG_ID}/{run}"}


@pytest.mark.parametrize("page", ["tab", "list", "json_list", "json_run"])
def test_every_page_and_json_route_needs_airflow_auth(airflow_server, rollout_run, page):
    url = airflow_server.url + paths(rollout_run)[page]
    anonymous = requests.get(url, timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    forged = requests.get(url, headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    assert forged.status_code == 403, forged.text
    assert "v2" not in anonymous.text + forged.text
    signed_in = requests.get(url, headers={"Authorization": f"Bearer {token(airflow_server)}"}, timeout=30)
    assert signed_in.status_code == 200, signed_in.text
    if page == "json_run":
        assert signed_in.json()["rollout"]["outcome"] == "promoted" and len(signed_in.json()["looks"]) == 3
    elif page == "json_list":
        assert rollout_run in [r["run_id"] for r in signed_in.json()["rollouts"]]
    elif page == "list":
        assert f"/dags/{DAG_ID}/runs/{quote(rollout_run, safe='')}/plugin/rollout" in signed_in.text
    else:
        assert "PROMOTED" in signed_in.text.upper() and "v2" in signed_in.text


def test_a_rollout_step_links_to_the_rollout_tab(airflow_server, rollout_run):
    """The worker stored the link when the (refused) first step ended; the UI shows it as a button."""
    run = quote(rollout_run, safe="")
    links = airflow_server.client().request(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run}/taskInstances/validate_request/links")["extra_links"]
    assert links["Rollout report"] == f"{airflow_server.url}/dags/{DAG_ID}/runs/{run}/plugin/rollout", links


def test_the_tab_of_another_dag_says_it_is_not_a_rollout(airflow_server):
    reply = requests.get(f"{airflow_server.url}/canary/rollouts/nightly_rollouts/scheduled__1",
                         headers={"Authorization": f"Bearer {token(airflow_server)}"}, timeout=30)
    assert reply.status_code == 200 and "This run is not a canary rollout" in reply.text


def uncaught_in_our_frames(page) -> list[str]:
    """Return the uncaught errors recorded by the documents of our pages (the plugin app's iframes)."""
    return [f"{frame.url}: {message}" for frame in page.frames if "/canary/" in frame.url
            for message in frame.evaluate("window.__errors || []")]


def sign_in(page, server, path: str) -> None:
    """Open ``path`` of the Airflow UI: Airflow's own login page comes first and sends the browser back."""
    assert server.username and server.password
    page.goto(server.url + path)
    page.locator("input[name=username]").fill(server.username)
    page.locator("input[name=password]").fill(server.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(server.url + path)


def record_errors(page, ours: list[str]) -> None:
    """Collect the console errors and uncaught exceptions of our pages (the iframes' documents) in ``ours``."""
    page.on("console", lambda m: ours.append(f"{m.location.get('url')}: {m.text}")
            if m.type == "error" and "/canary/" in (m.location.get("url") or "") else None)
    # Uncaught exceptions of a frame are no console messages: every document records its own.
    page.add_init_script("window.__errors = []; window.addEventListener('error', "
                         "e => window.__errors.push(String(e.message)));")


@contextlib.contextmanager
def signed_in_page(server, path: str) -> Iterator[tuple[Any, list[str]]]:
    """Yield a browser page signed in to the Airflow UI at ``path``, and the list of our pages' errors."""
    chromium = require_browser()
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ours: list[str] = []  # console errors and uncaught exceptions of our pages (the iframes' documents)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            record_errors(page, ours)
            sign_in(page, server, path)
            yield page, ours
        finally:
            browser.close()


def test_the_rollout_tab_and_page_in_a_browser(airflow_server, rollout_run):
    tab_path = f"/dags/{DAG_ID}/runs/{quote(rollout_run, safe='')}/plugin/rollout"
    with signed_in_page(airflow_server, tab_path) as (page, ours):
        tab = page.frame_locator("iframe[title=Rollout]")
        tab.locator("body").get_by_text("PROMOTED", exact=False).first.wait_for(timeout=30_000)
        assert "v2" in tab.locator("body").inner_text()
        # The traffic chart (an SVG drawn by Vega-Lite) and the stages table.
        assert tab.locator("svg").count() >= 1 and tab.locator("table#stages").count() == 1
        page.screenshot(path=str(SCREENSHOTS / "rollout_tab.png"), full_page=True)
        ours += uncaught_in_our_frames(page)

        page.get_by_role("link", name="Rollouts").click()
        listing = page.frame_locator("iframe[title=Rollouts]")
        row_link = listing.locator(f'#rollouts a[href*="{quote(rollout_run, safe="")}"]')
        row_link.wait_for(timeout=30_000)
        assert "promoted" in listing.locator("#rollouts").inner_text()
        page.screenshot(path=str(SCREENSHOTS / "rollouts_page.png"), full_page=True)
        ours += uncaught_in_our_frames(page)

        # The row's link leaves the sandboxed iframe: the Airflow UI itself moves to the run's tab.
        row_link.click()
        page.wait_for_url(airflow_server.url + tab_path)
        page.frame_locator("iframe[title=Rollout]").locator("body").get_by_text(
            "PROMOTED", exact=False).first.wait_for(timeout=30_000)
        ours += uncaught_in_our_frames(page)
    assert ours == []


def test_a_running_rollouts_tab_refreshes_itself_and_ends_final(airflow_server):
    """The tab of a rollout still running shows where it stands, reloads itself as looks arrive, then the end."""
    require_browser()
    client = airflow_server.client()
    run_id = client.trigger(DAG_ID, {"version": "v405", "reason": "live tab test"})["dag_run_id"]
    assert airflow_server.wait_run(DAG_ID, run_id, timeout_s=180) == "failed"  # refused: never recorded itself
    history, started_s = open_history(airflow_server.history_url), time.time() - 30
    history.start(RolloutRecord(dag_id=DAG_ID, run_id=run_id, model=MODEL, endpoint="api", candidate="v7",
                                stable="v1", started_by=StartedBy.UI, started_by_detail="admin", reason="live tab test",
                                started_at_s=started_s, stages_planned=(50, 100),
                                spec={"analysis": {"poll_interval": "3s"}}))

    def look(stage: int, weight: int, decision: str, at_s: float, eta_s: float | None) -> Look:
        return Look(dag_id=DAG_ID, run_id=run_id, stage_index=stage, look_at_s=at_s, weight_pct=weight,
                    decision=decision, reason="not yet shown within tolerance" if decision == "continue"
                    else "error rate within 1.5x", elapsed_s=at_s - started_s - 5, eta_s=eta_s,
                    evidence={"canary_requests": 120, "stable_requests": 118})

    history.add_look(look(0, 50, "continue", started_s + 20, 95.0))
    tab_path = f"/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/plugin/rollout"
    with signed_in_page(airflow_server, tab_path) as (page, ours):
        tab = page.frame_locator("iframe[title=Rollout]")
        live = tab.locator("#live")
        live.wait_for(timeout=30_000)
        assert "1 of 2 (50%)" in live.inner_text() and "about 1m35s" in live.inner_text(), live.inner_text()
        page.screenshot(path=str(SCREENSHOTS / "rollout_tab_live.png"), full_page=True)

        # New looks reach the open tab by itself (its page reloads every poll interval): no reload here.
        history.add_look(look(0, 50, "advance", time.time() - 2, 0.0))
        history.add_look(look(1, 100, "continue", time.time() - 1, 12.0))
        tab.locator("#live").get_by_text("2 of 2 (100%)").wait_for(timeout=30_000)
        assert tab.locator("#live div", has_text="looks so far").locator("b").inner_text() == "3"
        ours += uncaught_in_our_frames(page)

        history.add_look(look(1, 100, "advance", time.time(), 0.0))
        history.finish(DAG_ID, run_id, outcome="promoted", reason="every stage passed", finished_at_s=time.time(),
                       stages_reached=2)
        tab.locator("body").get_by_text("PROMOTED", exact=False).first.wait_for(timeout=30_000)
        assert tab.locator("#live").count() == 0  # final: no live box, no more reloads
        assert 'http-equiv="refresh"' not in tab.locator("html").inner_html()
        ours += uncaught_in_our_frames(page)
    assert ours == []
