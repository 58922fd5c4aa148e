"""The watchdog DAG: a running rollout whose stage stopped being polled gets one ``stuck`` notice (a real HTTP
receiver on loopback); a healthy one gets none; a history row whose DAG run ended is closed.

The history is the real SQLite store of the test (``CANARY_HISTORY_URL``, see tests/conftest.py).
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from notify_receivers import http_receiver

from canary.history import Look, RolloutEvent, RolloutRecord, open_history
from canary.spec.model import parse_spec
from canary_airflow.watchdog import FIND_TASK_ID, WATCHDOG_DAG_ID, FindStalledRolloutsOperator

NOTIFY = [{"notifier": "http", "conn_id": "notify_http", "events": ["stuck"], "options": {"endpoint": "/alerts"}}]


def spec_dump(notify: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec = parse_spec({"model": "m", "endpoint": "e", "analysis": {"poll_interval": "10s"},
                       "stages": [{"weight": 10, "min_duration": "1m", "max_duration": "30m"},
                                  {"weight": 100, "min_duration": "1m", "max_duration": "30m"}],
                       "notify": NOTIFY if notify is None else notify})
    return spec.model_dump(mode="json", by_alias=True)


def seed(run_id: str, *, last_look_ago_s: float, notify: list[dict[str, Any]] | None = None) -> None:
    """A rollout observing stage 1 since 10 minutes ago, its last look ``last_look_ago_s`` ago."""
    history, now_s = open_history(), time.time()
    history.start(RolloutRecord(dag_id="canary_rollout__m", run_id=run_id, model="m", endpoint="e", candidate="v2",
                                stable="v1", started_at_s=now_s - 700, stages_planned=(10, 100),
                                spec=spec_dump(notify)))
    history.add_event(RolloutEvent(dag_id="canary_rollout__m", run_id=run_id, at_s=now_s - 600, kind="traffic",
                                   key="stage_1", data={"stage": 0, "weight_pct": 10}))
    history.add_look(Look(dag_id="canary_rollout__m", run_id=run_id, stage_index=0,
                          look_at_s=now_s - last_look_ago_s, weight_pct=10, decision="continue", reason="not yet"))


class TI:
    def __init__(self, states: dict[str, str] | None = None) -> None:
        self.states = states or {}

    def get_dagrun_state(self, dag_id: str, run_id: str) -> str:
        return self.states.get(run_id, "running")


def check(states: dict[str, str] | None = None, **conf: Any) -> list[dict[str, Any]]:
    task = FindStalledRolloutsOperator(task_id=FIND_TASK_ID)
    return task.execute({"ti": TI(states), "params": {}, "dag_run": SimpleNamespace(conf=conf),
                         "run_id": "scheduled__x", "dag": SimpleNamespace(dag_id=WATCHDOG_DAG_ID)})


@pytest.fixture
def http(monkeypatch):
    with http_receiver() as receiver:
        monkeypatch.setenv("AIRFLOW_CONN_NOTIFY_HTTP", receiver.connection())
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.test")
        yield receiver


def test_a_stage_without_looks_is_told_once(http):
    seed("manual__stalled", last_look_ago_s=300)  # 30 poll intervals without a look
    seed("manual__healthy", last_look_ago_s=5)
    (stall,) = check()
    assert (stall["run_id"], stall["stage"], stall["kind"]) == ("manual__stalled", 1, "no_looks")
    assert stall["notified"] == ["http:notify_http"]
    (got,) = http.received
    assert got.path == "/alerts" and got.body["event"] == "stuck"
    assert got.body["subject"].startswith("m: rollout of v2 stalled at stage 1 (10%): no look for 5m")
    assert got.body["link"] == "http://airflow.test/dags/canary_rollout__m/runs/manual__stalled/plugin/rollout"
    # the next check still finds it, and tells nobody again
    (again,) = check()
    assert again["run_id"] == "manual__stalled" and again["notified"] == []
    assert len(http.received) == 1
    # the alert is part of the run's history
    (event,) = [e for e in open_history().events("canary_rollout__m", "manual__stalled") if e.kind == "notification"]
    assert event.key == "stage_1/no_looks/stuck" and event.data["sent"] == ["http:notify_http"]


def test_missed_polls_come_from_the_conf(http):
    seed("manual__slowish", last_look_ago_s=35)  # 3.5 intervals
    assert check() == []
    assert [s["run_id"] for s in check(missed_polls=3)] == ["manual__slowish"]


def test_a_rollout_nobody_asked_to_hear_of_is_reported_but_not_sent(http):
    seed("manual__quiet", last_look_ago_s=300, notify=[])
    (stall,) = check()
    assert stall["run_id"] == "manual__quiet" and stall["notified"] == []
    assert http.received == []


def test_a_history_row_whose_dag_run_ended_is_closed_and_not_alerted(http):
    seed("manual__marked_failed", last_look_ago_s=300)
    assert check(states={"manual__marked_failed": "failed"}) == []
    assert http.received == []
    record = open_history().rollout("canary_rollout__m", "manual__marked_failed")
    assert record.outcome == "failed"
    assert record.outcome_reason.startswith("the DAG run ended (failed) without finalize recording an outcome")
    assert "traffic is back on v1" in record.outcome_reason
    assert check(states={"manual__marked_failed": "failed"}) == []  # closed: not running any more


def test_the_dag_file_parses_to_one_task_every_five_minutes():
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(Path(__file__).resolve().parents[2] / "dags" / "canary_watchdog.py"))
    assert bag.import_errors == {}
    dag = bag.dags[WATCHDOG_DAG_ID]
    assert [t.task_id for t in dag.tasks] == [FIND_TASK_ID]
    assert dag.timetable.expression == "*/5 * * * *" and dag.max_active_runs == 1 and dag.catchup is False
    assert dag.params["missed_polls"] == 5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_watchdog_dag_runs_in_airflow_and_alerts(http, tmp_path):
    """``airflow dags test canary_watchdog``: the real task runner, in its own process, with its own metadata
    database (the stalled run is unknown to that Airflow, so it is checked as running)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    seed("manual__stalled_in_airflow", last_look_ago_s=300)
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "CANARY_SPECS_DIR": str(tmp_path / "no-specs")}
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=240)
    run = subprocess.run([*airflow, "dags", "test", WATCHDOG_DAG_ID, "-c", json.dumps({"missed_polls": 5})], env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert [r.body["event"] for r in http.received] == ["stuck"], run.stdout[-3000:]
    assert "/runs/manual__stalled_in_airflow/plugin/rollout" in http.received[0].body["link"]
    assert "checked 1 running rollout(s): 1 stalled" in run.stdout + run.stderr
