"""The rollout pages and their JSON on the plugin app, with a real history store (SQLite in tmp_path).

Airflow's own authentication runs unreplaced where no database is needed (no token: 401). Which DAGs a
user may read is the auth manager's answer: it is replaced here at the two dependencies that ask it
(``can_read_runs``, ``readable_dag_ids``); tests/airflow_api/test_ui_api.py checks them on a real Airflow.
"""

from __future__ import annotations

import math
import time

import pytest
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient

import canary.report.html
from canary.history import Look, RolloutEvent, RolloutRecord, StartedBy, open_history
from canary_airflow import ui
from canary_airflow.webhook_receiver import WEBHOOK_PATH, create_app

T0 = 1_800_000_000.0
CHURN, FRAUD, HIDDEN = "canary_rollout__churn", "canary_rollout__fraud", "canary_rollout__secret"
DONE, LIVE = "manual__2027-01-15T08:00:00+00:00", "manual__2027-01-15T09:00:00+00:00"


def record(dag_id: str, run_id: str, *, model: str, started_s: float, outcome: str | None = None,
           candidate: str = "v2") -> RolloutRecord:
    return RolloutRecord(dag_id=dag_id, run_id=run_id, model=model, endpoint="e", candidate=candidate,
                         stable="v1", started_by=StartedBy.API, started_by_detail="admin", reason="test",
                         started_at_s=started_s, finished_at_s=None if outcome is None else started_s + 151,
                         stages_planned=(25, 100), stages_reached=2 if outcome else 1, outcome=outcome,
                         outcome_reason=None if outcome is None else "every stage passed")


@pytest.fixture
def history(tmp_path):
    store = open_history(f"sqlite:///{tmp_path / 'history.db'}")
    store.start(record(CHURN, DONE, model="churn", started_s=T0))
    store.finish(CHURN, DONE, outcome="promoted", reason="every stage passed", finished_at_s=T0 + 151,
                 stages_reached=2)
    store.put_report(CHURN, DONE, "json", '{"outcome": "promoted", "reason": "every stage passed"}')
    store.add_look(Look(dag_id=CHURN, run_id=DONE, stage_index=0, look_at_s=T0 + 30, weight_pct=25,
                        decision="advance", reason="shown within tolerance", elapsed_s=30.0,
                        evidence={"canary_requests": 300, "metrics": [{"metric": "error_rate",
                                                                       "evidence": {"e_value": math.inf}}]}))
    store.add_event(RolloutEvent(dag_id=CHURN, run_id=DONE, at_s=T0 + 1, kind="traffic", key="stage_1",
                                 data={"weight_pct": 25}))
    store.start(record(FRAUD, LIVE, model="fraud", started_s=T0 + 3600))
    store.add_look(Look(dag_id=FRAUD, run_id=LIVE, stage_index=0, look_at_s=T0 + 3610, weight_pct=25,
                        decision="continue", reason="waiting", elapsed_s=10.0, eta_s=40.0))
    store.start(record(HIDDEN, "manual__x", model="secret", started_s=T0 + 7200))
    return store


def allowed_only(dag_ids: set[str]):
    def check(request: Request) -> None:
        if request.path_params.get("dag_id") not in dag_ids:
            raise HTTPException(403, "Forbidden")
    return check


READABLE = {CHURN, FRAUD, "plain_etl", "canary_rollout__new"}


@pytest.fixture
def client(history):
    app = create_app(secret=lambda: None, models=dict, post_event=lambda extra: {})
    app.dependency_overrides[ui.history_store] = lambda: history
    app.dependency_overrides[ui.can_read_runs] = allowed_only(READABLE)
    app.dependency_overrides[ui.readable_dag_ids] = lambda: READABLE
    return TestClient(app)


@pytest.mark.parametrize("path", [f"/rollouts/{CHURN}/{DONE}", "/rollouts", "/api/rollouts",
                                  f"/api/rollouts/{CHURN}/{DONE}"])
def test_every_page_and_json_route_refuses_a_caller_without_a_token(history, path):
    app = create_app(secret=lambda: None, models=dict, post_event=lambda extra: {})
    app.dependency_overrides[ui.history_store] = lambda: history
    reply = TestClient(app).get(path)
    assert reply.status_code == 401, reply.text
    assert "PROMOTED" not in reply.text and "churn" not in reply.text


def test_the_webhook_route_stays_authenticated_by_its_signature_only(client):
    reply = client.post(WEBHOOK_PATH, content=b"{}")
    assert reply.status_code == 503 and "canary_mlflow_webhook_default" in reply.json()["error"]


@pytest.mark.parametrize("path", [f"/rollouts/{HIDDEN}/manual__x", f"/api/rollouts/{HIDDEN}/manual__x"])
def test_a_run_of_a_dag_the_user_may_not_read_is_forbidden(client, path):
    reply = client.get(path)
    assert reply.status_code == 403 and "secret" not in reply.text


def test_the_tab_renders_the_finished_run_with_its_report(client, monkeypatch):
    calls = []

    def render(record, looks, events, *, report=None, live=False, now_s=None):
        calls.append((record, looks, events, report, live, now_s))
        return "<html>drawn</html>"

    monkeypatch.setattr(canary.report.html, "render_html", render)
    reply = client.get(f"/rollouts/{CHURN}/{DONE.replace(':', '%3A').replace('+', '%2B')}")
    assert reply.status_code == 200 and reply.text == "<html>drawn</html>"
    assert reply.headers["content-type"].startswith("text/html") and reply.headers["cache-control"] == "no-store"
    [(rec, looks, events, report, live, now_s)] = calls
    assert (rec.run_id, rec.outcome, live) == (DONE, "promoted", False)
    assert [lk.decision for lk in looks] == ["advance"] and [ev.kind for ev in events] == ["traffic"]
    assert report == {"outcome": "promoted", "reason": "every stage passed"} and abs(now_s - time.time()) < 60


def test_the_tab_of_a_running_rollout_is_live(client):
    reply = client.get(f"/rollouts/{FRAUD}/{LIVE}")
    assert reply.status_code == 200
    assert "fraud" in reply.text and "v2" in reply.text and 'http-equiv="refresh"' in reply.text


def test_the_tab_of_a_finished_rollout_draws_the_report(client):
    reply = client.get(f"/rollouts/{CHURN}/{DONE}")
    assert reply.status_code == 200 and "PROMOTED" in reply.text.upper() and "churn" in reply.text
    assert 'http-equiv="refresh"' not in reply.text


def test_a_run_of_another_dag_says_it_is_not_a_rollout(client):
    reply = client.get("/rollouts/plain_etl/scheduled__2027-01-15T00:00:00+00:00")
    assert reply.status_code == 200 and "This run is not a canary rollout" in reply.text


def test_a_rollout_run_not_recorded_yet_says_so_and_reloads(client):
    reply = client.get("/rollouts/canary_rollout__new/manual__1")
    assert reply.status_code == 200
    assert "not in the rollout history yet" in reply.text and 'http-equiv="refresh"' in reply.text


def test_the_list_shows_readable_runs_newest_first_linking_to_their_tab(client):
    reply = client.get("/rollouts")
    assert reply.status_code == 200
    page = reply.text
    assert "secret" not in page  # a DAG the user may not read
    assert page.index(f"/dags/{FRAUD}/") < page.index(f"/dags/{CHURN}/")  # newest first
    tab = f"../dags/{CHURN}/runs/manual__2027-01-15T08%3A00%3A00%2B00%3A00/plugin/rollout"
    assert f'href="{tab}"' in page and "data-top" in page and 'target="_top"' in page
    assert "2m31s" in page and "2027-01-15 08:00 UTC" in page
    assert "2 rollouts, newest first: 1 promoted, 1 running" in page


@pytest.mark.parametrize(("query", "shown", "hidden"), [
    ("?model=churn", ["canary_rollout__churn"], ["canary_rollout__fraud"]),
    ("?outcome=running", ["canary_rollout__fraud"], ["canary_rollout__churn"]),
    ("?outcome=rolled_back", [], ["canary_rollout__churn", "canary_rollout__fraud"]),
])
def test_the_list_filters_by_model_and_outcome(client, query, shown, hidden):
    page = client.get(f"/rollouts{query}").text
    for dag_id in shown:
        assert f"/dags/{dag_id}/" in page
    for dag_id in hidden:
        assert f"/dags/{dag_id}/" not in page
    assert '<option value="churn"' in page and '<option value="secret"' not in page  # the filter's models


def test_an_unknown_outcome_filter_is_refused_naming_the_choices(client):
    reply = client.get("/api/rollouts?outcome=great")
    assert reply.status_code == 400 and "running, promoted" in reply.json()["detail"]


def test_the_json_list_and_run(client):
    listed = client.get("/api/rollouts").json()
    assert [r["dag_id"] for r in listed["rollouts"]] == [FRAUD, CHURN] and listed["total_entries"] == 2
    run = client.get(f"/api/rollouts/{CHURN}/{DONE}").json()
    assert run["rollout"]["outcome"] == "promoted" and run["events"][0]["data"] == {"weight_pct": 25}
    assert run["looks"][0]["evidence"]["metrics"][0]["evidence"]["e_value"] == "inf"  # JSON has no infinity
    missing = client.get(f"/api/rollouts/{CHURN}/manual__none")
    assert missing.status_code == 404 and "manual__none" in missing.json()["detail"]
