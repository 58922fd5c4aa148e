"""The rollout tasks tell people: validate_request (started, refused), a stage's gate (approval needed,
halted, rolling back) and finalize (promoted, rolled back), sent to a real HTTP receiver on loopback.
A receiver that is down changes no task's result.

Backends are faked at their interfaces (``fakes``); the lease store is the real local one.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import fakes
import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException
from notify_receivers import free_port, http_receiver

from canary.policy.decisions import Decision, GateResult
from canary_airflow.operators import (
    PLAN_TASK_ID,
    PROMOTE_TASK_ID,
    CanaryGateOperator,
    FinalizeRolloutOperator,
    ValidateRolloutRequestOperator,
)

DAG_ID, RUN_ID = "canary_rollout__m", "manual__2026-12-02T10:00:00+00:00"
LINK = "http://airflow.test/dags/canary_rollout__m/runs/manual__2026-12-02T10%3A00%3A00%2B00%3A00/plugin/rollout"


def spec_data(**policy: Any) -> dict[str, Any]:
    return {
        "model": "m", "endpoint": "e", "shadow": {"enabled": False},
        "backends": {"serving": {"name": "fake", "conn_id": "fake_serving"},
                     "metrics": {"name": "fake", "conn_id": "fake_metrics"},
                     "registry": {"name": "fake", "conn_id": "fake_registry"},
                     "lock": {"name": "local", "conn_id": "test_lock"}},
        "stages": [{"weight": 10, "min_duration": "20s", "max_duration": "60s", "min_requests": 100},
                   {"weight": 100, "min_duration": "10s", "max_duration": "30s", "min_requests": 10}],
        "analysis": {"poll_interval": "5s"},
        "concurrency": {"lease_ttl": "5m"},
        "policy": policy,
        "notify": [{"notifier": "http", "conn_id": "notify_http", "events": ["all"],
                    "options": {"endpoint": "/hooks/rollouts"}}],
    }


@pytest.fixture(autouse=True)
def backends(monkeypatch, tmp_path):
    fakes.install_stack(monkeypatch)
    monkeypatch.setenv("AIRFLOW_CONN_TEST_LOCK", json.dumps({"conn_type": "canary_lock",
                                                             "extra": {"path": str(tmp_path / "locks.db")}}))
    monkeypatch.setenv("CANARY_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.test")


@pytest.fixture
def http(monkeypatch):
    with http_receiver() as receiver:
        monkeypatch.setenv("AIRFLOW_CONN_NOTIFY_HTTP", receiver.connection())
        yield receiver


@pytest.fixture
def receiver_down(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_NOTIFY_HTTP", json.dumps({"conn_type": "http", "host": "127.0.0.1",
                                                               "port": free_port()}))


class TI:
    """The XCom a task reads (the plan and upstream results) and writes."""

    def __init__(self, pulls: dict[str, Any]) -> None:
        self.pulls, self.pushed = pulls, {}

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.pulls.get(task_ids) if key == "return_value" else None

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def get_task_states(self, dag_id: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
        return {run_ids[0]: {}}


def context(ti: Any = None, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ti": ti, "run_id": RUN_ID, "dag": SimpleNamespace(dag_id=DAG_ID), "params": {},
            "dag_run": SimpleNamespace(conf={"version": "v2", **(conf or {})})}


def write_spec(tmp_path, **policy: Any) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(spec_data(**policy)))
    return str(path)


def validate(tmp_path, **policy: Any) -> dict[str, Any]:
    task = ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=write_spec(tmp_path, **policy))
    return task.execute(context())


def events(receiver) -> list[str]:
    return [r.body["event"] for r in receiver.received]


# -- validate_request ------------------------------------------------------------------------------

def test_the_first_task_tells_that_the_rollout_started(tmp_path, http):
    plan = validate(tmp_path)
    assert plan["candidate"] == "v2"
    (got,) = http.received
    assert got.path == "/hooks/rollouts"
    assert (got.body["event"], got.body["subject"], got.body["link"]) == ("started", "m: rollout of v2 started", LINK)
    assert got.body["lines"] == ["Rolling out v2 against champion v1: 10% -> 100% canary traffic."]


def test_a_refused_run_tells_why(tmp_path, http):
    task = ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=write_spec(tmp_path))
    with pytest.raises(AirflowFailException, match="rollout refused: version"):
        task.execute(context(conf={"version": "v9"}))
    (got,) = http.received
    assert (got.body["event"], got.body["subject"]) == ("failed", "m: rollout of v9 refused")
    assert got.body["lines"][0].startswith("Refused before any traffic moved: version: ")


def task_log(capsys) -> str:
    """Return what the tasks logged (task loggers are structlog's, printed rather than captured by caplog)."""
    out = capsys.readouterr()
    return out.out + out.err


def test_the_first_task_succeeds_when_the_receiver_is_down(tmp_path, receiver_down, capsys):
    assert validate(tmp_path)["candidate"] == "v2"
    assert "notification 'started' not sent by the http notifier (connection 'notify_http')" in task_log(capsys)


# -- the gate ----------------------------------------------------------------------------------------

def run_gate(plan: dict[str, Any], result: GateResult, stage_index: int = 0) -> tuple[str, dict[str, Any]]:
    ti = TI({PLAN_TASK_ID: plan, f"stage_{stage_index + 1}.observe": {"result": result.to_dict()}})
    branch = CanaryGateOperator(task_id="gate", stage_index=stage_index, has_approval=True).choose_branch(context(ti))
    return branch, ti.pushed["action"]


EVIDENCE = {"stage": 1, "weight_pct": 10, "elapsed_s": 95.0, "canary_requests": 400, "canary_errors": 0,
            "stable_requests": 3600, "stable_errors": 4, "metrics": []}
HALT = GateResult(decision=Decision.HALT, metric="srm", evidence=EVIDENCE,
                  reason="srm: e-value 2.1e+03 >= 1e+03: canary got 10.0% of requests, configured 10%")


def test_a_gate_holding_for_approval_tells_that_a_person_is_needed(tmp_path, http):
    plan = validate(tmp_path, on_halt="hold_for_approval")
    http.received.clear()
    branch, action = run_gate(plan, HALT)
    assert branch == "stage_1.approve" and action["action"] == "hold"
    (got,) = http.received
    assert got.body["events"] == ["approval_needed", "halted", "stage_decided"]
    assert got.body["subject"] == "m: stage 1 of 2 (10%) needs approval"
    assert got.body["lines"] == [
        "Halted, waiting for approval: srm: e-value 2.1e+03 >= 1e+03: canary got 10.0% of requests, configured 10%.",
        "Canary 0% errors (0/400) vs stable 0.1% (4/3,600) after 1m35s. Approve or reject it in the run's approve "
        "task."]
    assert (got.body["stage"], got.body["decision"], got.body["action"]) == (1, "halt", "hold")


def test_a_halted_gate_that_rolls_back_tells_it(tmp_path, http):
    plan = validate(tmp_path)
    http.received.clear()
    branch, _ = run_gate(plan, HALT)
    assert branch == "stage_1.rollback"
    (got,) = http.received
    assert got.body["events"] == ["halted", "stage_decided"]
    assert got.body["subject"] == "m: stage 1 of 2 (10%) halted, rolling back v2"


def test_the_gate_chooses_the_same_branch_when_the_receiver_is_down(tmp_path, receiver_down, capsys):
    plan = validate(tmp_path, on_halt="hold_for_approval")
    assert run_gate(plan, HALT)[0] == "stage_1.approve"
    assert "notification 'approval_needed' not sent by the http notifier (connection 'notify_http')" in \
        task_log(capsys)


# -- finalize ----------------------------------------------------------------------------------------

def run_finalize(plan: dict[str, Any], **pulls: Any) -> tuple[dict[str, Any] | None, Exception | None, TI]:
    ti = TI({PLAN_TASK_ID: plan, **pulls})
    task = FinalizeRolloutOperator(task_id="finalize", stage_count=2, deferrable=False)
    try:
        return task.execute(context(ti)), None, ti
    except AirflowFailException as err:
        return ti.pushed.get("return_value"), err, ti


def test_finalize_tells_of_a_promotion(tmp_path, http):
    plan = validate(tmp_path)
    http.received.clear()
    report, err, _ = run_finalize(plan, **{PROMOTE_TASK_ID: {"outcome": "promoted",
                                                             "reason": "every stage passed (10 -> 100%)"}})
    assert err is None and report["outcome"] == "promoted"
    (got,) = http.received
    assert (got.body["event"], got.body["subject"]) == ("promoted", "m: v2 promoted")
    assert got.body["lines"] == ["v2 is the champion now; v1 is retired.", "Why: every stage passed (10 -> 100%)."]


def test_finalize_tells_of_a_rollback(tmp_path, http):
    plan = validate(tmp_path)
    http.received.clear()
    rollback = {"outcome": "rolled_back", "reason": "stage 1 (10%): error_rate: e-value 88 >= 40", "stage_index": 0,
                "metric": "error_rate"}
    report, err, _ = run_finalize(plan, **{"stage_1.rollback": rollback})
    assert "rollout rolled_back" in str(err) and report["outcome"] == "rolled_back"
    (got,) = http.received
    assert (got.body["event"], got.body["subject"]) == ("rolled_back", "m: v2 rolled back")
    assert got.body["lines"] == ["All traffic is back on v1.", "Why: stage 1 (10%): error_rate: e-value 88 >= 40."]


def test_finalize_ends_the_same_way_when_the_receiver_is_down(tmp_path, receiver_down, capsys):
    plan = validate(tmp_path)
    report, err, _ = run_finalize(plan, **{PROMOTE_TASK_ID: {"outcome": "promoted", "reason": "every stage"}})
    assert err is None and report["outcome"] == "promoted"
    report, err, _ = run_finalize(plan, **{"stage_1.rollback": {"outcome": "rolled_back", "reason": "x",
                                                                 "stage_index": 0}})
    assert "rollout rolled_back" in str(err) and report["outcome"] == "rolled_back"
    logged = task_log(capsys)
    assert "notification 'promoted' not sent" in logged and "notification 'rolled_back' not sent" in logged


def test_a_spec_without_notify_sends_nothing(tmp_path, http):
    data = spec_data()
    data.pop("notify")
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=str(path)).execute(context())
    assert http.received == []


# -- a retried task tells nobody twice ----------------------------------------------------------------

def test_a_retried_gate_does_not_tell_twice(tmp_path, http, capsys):
    plan = validate(tmp_path)
    http.received.clear()
    assert run_gate(plan, HALT)[0] == run_gate(plan, HALT)[0] == "stage_1.rollback"
    assert events(http) == ["halted"]
    assert "notification 'halted' already sent by an earlier try to http:notify_http: not sent again" in \
        task_log(capsys)
    run_gate(plan, HALT, stage_index=1)  # another stage's gate is another notice
    assert events(http) == ["halted", "halted"]
    assert [r.body["stage"] for r in http.received] == [1, 2]


def test_a_retried_finalize_does_not_tell_twice_but_a_new_outcome_is_told(tmp_path, http):
    plan = validate(tmp_path)
    http.received.clear()
    promoted = {PROMOTE_TASK_ID: {"outcome": "promoted", "reason": "every stage passed"}}
    run_finalize(plan, **promoted)
    run_finalize(plan, **promoted)
    assert events(http) == ["promoted"]
    run_finalize(plan, **{"stage_1.rollback": {"outcome": "rolled_back", "reason": "x", "stage_index": 0}})
    assert events(http) == ["promoted", "rolled_back"]


def test_a_receiver_that_failed_is_told_by_the_next_try(tmp_path, http):
    plan = validate(tmp_path)
    http.received.clear()
    http.status = 503
    run_gate(plan, HALT)  # the receiver answers an error: nothing is recorded as sent
    http.status = 200
    run_gate(plan, HALT)
    run_gate(plan, HALT)
    assert events(http) == ["halted", "halted"]  # the failed attempt, then the one that got through, once


def test_without_a_readable_history_a_retry_tells_again(tmp_path, http, monkeypatch, capsys):
    """At least once: an alert that might be a repeat beats one that is never sent."""
    monkeypatch.setenv("CANARY_HISTORY_URL", "postgresql+psycopg2://nobody@127.0.0.1:1/nothing")  # refused
    plan = validate(tmp_path)
    http.received.clear()
    run_gate(plan, HALT)
    run_gate(plan, HALT)
    assert events(http) == ["halted", "halted"]
    assert "rollout history: could not record the notifications sent for stage_1/halted" in task_log(capsys)
