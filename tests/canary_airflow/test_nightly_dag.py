"""The nightly_rollouts DAG: parses from dags/, schedule from the environment, expected task chain."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_nightly_dag_parses_with_its_schedule_and_chain(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("CANARY_NIGHTLY_CRON", "30 3 * * 1-5")
    bag = DagBag(str(ROOT / "dags" / "nightly_rollouts.py"))
    assert bag.import_errors == {}
    dag = bag.dags["nightly_rollouts"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.timetable.expression == "30 3 * * 1-5"
    assert dag.get_task("select_candidates").downstream_task_ids == {"start_rollout"}
    assert dag.get_task("start_rollout").downstream_task_ids == {"report"}
    assert dag.params["force"] is False


def test_default_cron(monkeypatch):
    from canary_airflow.nightly import build_nightly_dag

    monkeypatch.delenv("CANARY_NIGHTLY_CRON", raising=False)
    assert build_nightly_dag().timetable.expression == "0 2 * * *"
