"""The rollout's tasks leave a complete record in the rollout history, and a failing history changes nothing.

Tasks run as the other task tests run them (backends faked at their interfaces, XCom in a small fake
task instance); the history is a real SQLite store per test (``CANARY_HISTORY_URL``, tests/conftest.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import fakes
import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException

from canary.history.model import StartedBy
from canary_airflow.history import rollout_history
from canary_airflow.operators import (
    PLAN_TASK_ID,
    CanaryGateOperator,
    FinalizeRolloutOperator,
    RollbackOperator,
    SetTrafficOperator,
    ValidateRolloutRequestOperator,
)

DAG_ID, RUN_ID = "canary_rollout__m", "manual__2026-12-02"


class FakeTI:
    def __init__(self) -> None:
        self.xcoms: dict[tuple[str, str], Any] = {}

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_ids, key))

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[(self.task_id, key)] = value

    def get_task_states(self, dag_id: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
        return {run_ids[0]: {}}


@pytest.fixture(autouse=True)
def fake_backends(monkeypatch, tmp_path):
    fakes.install_stack(monkeypatch)
    monkeypatch.setenv("CANARY_REPORTS_DIR", str(tmp_path / "reports"))


def spec_path(tmp_path) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({
        "model": "m", "endpoint": "e", "shadow": {"enabled": False},
        "backends": {"serving": {"name": "fake", "conn_id": "fake_serving"},
                     "metrics": {"name": "fake", "conn_id": "fake_metrics"},
                     "registry": {"name": "fake", "conn_id": "fake_registry"}},
        "stages": [{"weight": 10, "min_duration": "20s", "max_duration": "60s"}, {"weight": 100}]}))
    return str(path)


def context(ti: FakeTI, conf: dict[str, Any] | None = None, user: str | None = "alice") -> dict[str, Any]:
    dag_run = SimpleNamespace(conf={"version": "v2", "reason": "weekly retrain", **(conf or {})},
                              run_type="manual", triggering_user_name=user)
    return {"ti": ti, "params": {}, "dag_run": dag_run, "run_id": RUN_ID, "dag": SimpleNamespace(dag_id=DAG_ID)}


def run(task, ti: FakeTI, ctx: dict[str, Any], method: str = "execute") -> Any:
    ti.task_id = task.task_id
    result = getattr(task, method)(ctx)
    ti.xcoms[(task.task_id, "return_value")] = result
    return result


def test_validate_records_the_start_with_the_frozen_spec_and_who_started_it(tmp_path):
    ti = FakeTI()
    plan = run(ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=spec_path(tmp_path)), ti, context(ti))
    record = rollout_history().rollout(DAG_ID, RUN_ID)
    assert record is not None and record.running
    assert (record.model, record.endpoint, record.candidate, record.stable) == ("m", "e", "v2", "v1")
    assert (record.started_by, record.started_by_detail) == (StartedBy.UI, "user alice")
    assert record.reason == "weekly retrain" and record.stages_planned == (10, 100)
    assert record.spec == plan["spec"] and record.started_at_s == plan["started_at_s"]


def test_a_refused_run_is_recorded_as_refused_with_its_reason(tmp_path):
    ti = FakeTI()
    with pytest.raises(AirflowFailException, match="rollout refused"):
        run(ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=spec_path(tmp_path)), ti,
            context(ti, {"version": "v9", "started_by": "api"}, user="admin"))
    record = rollout_history().rollout(DAG_ID, RUN_ID)
    assert record.outcome == "refused" and not record.running
    assert "v9" in record.outcome_reason and record.candidate == "v9" and record.stages_reached == 0
    assert (record.model, record.started_by) == ("m", StartedBy.API)


def test_a_spec_that_does_not_load_is_still_recorded_against_its_dag(tmp_path):
    ti = FakeTI()
    with pytest.raises(AirflowFailException):
        run(ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=str(tmp_path / "missing.yaml")), ti,
            context(ti))
    record = rollout_history().rollout(DAG_ID, RUN_ID)
    assert record.model == "m" and record.outcome == "refused" and record.spec == {}


def test_a_history_that_cannot_be_written_changes_no_task_outcome(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CANARY_HISTORY_URL", "sqlite:////proc/no/such/dir/history.db")
    ti = FakeTI()
    plan = run(ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=spec_path(tmp_path)), ti, context(ti))
    assert plan["candidate"] == "v2"
    traffic = run(SetTrafficOperator(task_id="stage_1.set_traffic", stage_index=0, deferrable=False), ti,
                  context(ti))
    assert traffic["weight"] == 10 and fakes.FakeRouter.weights == {"v1": 90, "v2": 10}
    assert "rollout history: could not record" in capsys.readouterr().out


def test_a_rolled_back_rollout_leaves_its_events_outcome_and_reports(tmp_path):
    ti = FakeTI()
    run(ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=spec_path(tmp_path)), ti, context(ti))
    run(SetTrafficOperator(task_id="stage_1.set_traffic", stage_index=0, deferrable=False), ti, context(ti))
    ti.xcoms[("stage_1.observe", "return_value")] = {
        "stage_index": 0, "polls": 3, "state": None,
        "result": {"decision": "rollback", "reason": "error_rate: e-value 881 >= 200", "metric": "error_rate",
                   "evidence": {"stage": 0, "weight_pct": 10, "elapsed_s": 42.0, "canary_requests": 97}}}
    ti.task_id = "stage_1.gate"
    assert CanaryGateOperator(task_id="stage_1.gate", stage_index=0).choose_branch(context(ti)) == "stage_1.rollback"
    run(RollbackOperator(task_id="stage_1.rollback", stage_index=0, deferrable=False), ti, context(ti))
    with pytest.raises(AirflowFailException, match="rolled_back"):
        run(FinalizeRolloutOperator(task_id="finalize", stage_count=2, deferrable=False), ti, context(ti))

    history = rollout_history()
    record = history.rollout(DAG_ID, RUN_ID)
    assert record.outcome == "rolled_back" and "e-value 881" in record.outcome_reason
    assert record.stages_reached == 1 and record.finished_at_s >= record.started_at_s
    assert record.report_location.endswith(".html") and (tmp_path / "reports" / "m").is_dir()
    kinds = {(e.kind, e.key): e.data for e in history.events(DAG_ID, RUN_ID)}
    assert kinds[("traffic", "stage_1")]["weights"] == {"v1": 90, "v2": 10}
    assert kinds[("gate", "stage_1")] == {"action": "rollback", "decision": "rollback", "metric": "error_rate",
                                               "reason": "error_rate: e-value 881 >= 200", "stage": 0}
    assert kinds[("rollback", "stage_1")]["metric"] == "error_rate"
    assert json.loads(history.report(DAG_ID, RUN_ID, "json"))["outcome"] == "rolled_back"
    assert "rolled_back" in history.report(DAG_ID, RUN_ID, "md").lower().replace(" ", "_")


def test_the_answer_of_an_approval_is_recorded_when_the_next_stage_starts(tmp_path):
    ti = FakeTI()
    run(ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=spec_path(tmp_path)), ti, context(ti))
    answered = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
    # What Airflow's ApprovalOperator returns (HITLTriggerEventSuccessPayload) as its XCom.
    ti.xcoms[("stage_1.approve", "return_value")] = {
        "chosen_options": ["Approve"], "params_input": {}, "responded_at": answered,
        "responded_by_user": {"id": "7", "name": "bob"}}
    run(SetTrafficOperator(task_id="stage_2.set_traffic", stage_index=1, deferrable=False), ti, context(ti))
    (approval,) = [e for e in rollout_history().events(DAG_ID, RUN_ID) if e.kind == "approval"]
    assert approval.key == "stage_1" and approval.at_s == answered.timestamp()
    assert (approval.data["decision"], approval.data["approved"], approval.data["user"]) == ("Approve", True, "bob")
    assert approval.data["stage"] == 0 and approval.data["responded_at"] == answered.isoformat()


# -- the observe sensor's own looks: its first check before deferring, and poke mode ------------------

def observed_stage(tmp_path, monkeypatch) -> tuple[FakeTI, dict[str, Any], list[float]]:
    """Validate and set stage 1's traffic at t=1000; return the task instance, a context and a settable clock."""
    import time

    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    monkeypatch.setenv("AIRFLOW_CONN_FAKE_METRICS", json.dumps({"conn_type": "canary_metrics", "host": "x"}))
    fakes.FakeMetrics.stats_fn = fakes.constant_rate_stats({"v1": (90.0, 0.01), "v2": (10.0, 0.01)})
    ti = FakeTI()
    run(ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=spec_path(tmp_path)), ti, context(ti))
    run(SetTrafficOperator(task_id="stage_1.set_traffic", stage_index=0, deferrable=False), ti, context(ti))
    return ti, context(ti), now


def test_the_sensors_first_check_is_a_look_and_its_trigger_knows_the_run(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    from canary_airflow.sensors import CanaryObserveSensor

    ti, ctx, now = observed_stage(tmp_path, monkeypatch)
    now[0] = 1012.0
    sensor = CanaryObserveSensor(task_id="stage_1.observe", stage_index=0, stage_max_duration_s=60.0,
                                 poll_interval_s=5.0, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(ctx)
    trigger = deferred.value.trigger
    assert (trigger.dag_id, trigger.run_id) == (DAG_ID, RUN_ID)
    (first,) = rollout_history().looks(DAG_ID, RUN_ID)
    assert (first.look_at_s, first.stage_index, first.weight_pct, first.decision) == (1012.0, 0, 10, "continue")
    assert first.elapsed_s == 12.0 and first.evidence["canary_requests"] > 0


def test_each_poke_is_a_look_and_a_retried_poke_records_nothing_twice(tmp_path, monkeypatch):
    from canary_airflow.sensors import CanaryObserveSensor

    ti, ctx, now = observed_stage(tmp_path, monkeypatch)
    sensor = CanaryObserveSensor(task_id="stage_1.observe", stage_index=0, stage_max_duration_s=60.0,
                                 poll_interval_s=5.0, deferrable=False)
    for at in (1010.0, 1015.0, 1015.0, 1020.0):  # the third is the second one retried
        now[0] = at
        sensor.poke(ctx)
    assert [lk.look_at_s for lk in rollout_history().looks(DAG_ID, RUN_ID)] == [1010.0, 1015.0, 1020.0]


def test_the_html_report_reads_the_recorded_approval(tmp_path):
    """The events the tasks record are the ones the report renders (who, stage, answer)."""
    from canary.report.html import render_html

    ti = FakeTI()
    run(ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=spec_path(tmp_path)), ti, context(ti))
    ti.xcoms[("stage_1.approve", "return_value")] = {
        "chosen_options": ["Approve"], "params_input": {}, "responded_at": datetime(2026, 12, 2, 10, 30, tzinfo=UTC),
        "responded_by_user": {"id": "7", "name": "bob"}}
    run(SetTrafficOperator(task_id="stage_2.set_traffic", stage_index=1, deferrable=False), ti, context(ti))
    history = rollout_history()
    page = render_html(history.rollout(DAG_ID, RUN_ID), history.looks(DAG_ID, RUN_ID), history.events(DAG_ID, RUN_ID))
    approvals = page[page.index('<table id="approvals">'):]
    approvals = approvals[:approvals.index("</table>")]
    assert "<td>bob</td><td>1</td>" in approvals and 'class="pass">Approve<' in approvals
