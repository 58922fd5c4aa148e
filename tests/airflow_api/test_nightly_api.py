"""The nightly_rollouts DAG on a real Airflow: what it starts, what it skips and why, and no second start."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "api-model"  # the model of tests/airflow_api/conftest.py
DAG_ID = f"canary_rollout__{MODEL}"
NIGHTLY = "nightly_rollouts"


def nightly_report(server, run_id: str) -> dict:
    assert server.wait_run(NIGHTLY, run_id) == "success", server.log_file
    return server.client().xcom(NIGHTLY, run_id, "report")


def first_scheduled_run(server, timeout_s: float = 60) -> str:
    """Unpausing with catchup off runs the most recent missed 02:00 once: that is the scheduled run."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        runs = server.runs(NIGHTLY)
        if runs:
            assert [r["run_type"] for r in runs] == ["scheduled"], runs
            return runs[0]["dag_run_id"]
        time.sleep(1)
    raise AssertionError("no scheduled nightly run after unpausing")


def test_nightly_starts_the_newest_candidate_once_and_says_why_it_skips(airflow_server):
    server = airflow_server
    # Paused: the started rollout stays queued, so nothing moves traffic while we look.
    server.set_paused(DAG_ID, True)
    server.set_paused(NIGHTLY, False)
    started = []
    try:
        report = nightly_report(server, first_scheduled_run(server))
        assert [(c["model"], c["version"]) for c in report["started"]] == [(MODEL, "v3")], report
        skipped = {c["model"]: c["reason"] for c in report["skipped"]}
        assert skipped == {
            "api-nocand": "no version after champion v1 that was not rolled out yet",
            "api-tried": "no version after champion v1 that was not rolled out yet",
            "api-optout": "not opted in (set schedule.nightly or schedule.nightly_cron)",
        }
        assert report["errors"] == [] and report["trigger_failures"] == []
        started = [r for r in server.runs(DAG_ID) if r["dag_run_id"].startswith("nightly__")]
        assert len(started) == 1 and started[0]["state"] == "queued", started
        assert started[0]["conf"]["version"] == "v3" and started[0]["conf"]["reason"].startswith("nightly: v3")
        for other in ("api-nocand", "api-tried", "api-optout"):
            assert server.runs(f"canary_rollout__{other}") == []

        again = nightly_report(server, server.client().trigger(NIGHTLY, {})["dag_run_id"])
        assert again["started"] == []
        assert {c["model"]: c["reason"] for c in again["skipped"]}[MODEL] == (
            f"1 rollout run(s) of {DAG_ID} already queued or running")
        assert len([r for r in server.runs(DAG_ID) if r["dag_run_id"].startswith("nightly__")]) == 1
    finally:
        client = server.client()
        for run in started:
            client.request("DELETE", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run['dag_run_id'], safe='')}")
        server.set_paused(NIGHTLY, True)
        server.set_paused(DAG_ID, False)
