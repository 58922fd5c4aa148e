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
    # The environment's default time first, then the specs' own times (include/rollouts).
    timetables = getattr(dag.timetable, "timetables", [dag.timetable])
    assert timetables[0].expression == "30 3 * * 1-5"
    assert dag.get_task("select_candidates").downstream_task_ids == {"start_rollout"}
    assert dag.get_task("start_rollout").downstream_task_ids == {"report"}
    assert dag.params["force"] is False


def test_default_cron(monkeypatch):
    from canary_airflow.nightly import build_nightly_dag

    monkeypatch.delenv("CANARY_NIGHTLY_CRON", raising=False)
    assert build_nightly_dag().timetable.expression == "0 2 * * *"


def test_the_schedule_fires_at_every_spec_time(tmp_path, monkeypatch):
    import yaml
    from airflow.sdk import MultipleCronTriggerTimetable

    from canary_airflow.nightly import build_nightly_dag

    monkeypatch.delenv("CANARY_NIGHTLY_CRON", raising=False)
    base = {"endpoint": "e", "stages": [{"weight": 10}, {"weight": 100}]}
    for model, schedule in (("a", {"nightly_cron": "0 14 * * *"}), ("b", {"nightly": True}),
                            ("c", {"nightly_cron": "0 2 * * *"}), ("d", {})):
        (tmp_path / f"{model}.yaml").write_text(yaml.safe_dump({"model": model, **base, "schedule": schedule}))
    (tmp_path / "broken.yaml").write_text("model: broken\n")  # invalid specs are the rollout DAGs' import errors
    dag = build_nightly_dag(specs_path=tmp_path)
    assert isinstance(dag.timetable, MultipleCronTriggerTimetable)
    assert [t.expression for t in dag.timetable.timetables] == ["0 2 * * *", "0 14 * * *"]
    assert dag.get_task("select_candidates").default_cron == "0 2 * * *"
    (tmp_path / "a.yaml").unlink()
    assert build_nightly_dag(specs_path=tmp_path).timetable.expression == "0 2 * * *"
