"""The "Rollout report" extra link: on every rollout step, pointing at the run's Rollout tab."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from canary_airflow.links import RolloutReportLink, rollout_tab_url
from canary_airflow.operators import CanaryBaseOperator, CanaryGateOperator, FinalizeRolloutOperator

RUN = "manual__2027-01-15T08:00:00+00:00"


@pytest.mark.parametrize(("base_url", "expected"), [
    ("http://airflow.example:8080", "http://airflow.example:8080/dags/canary_rollout__churn/runs/"
                                    "manual__2027-01-15T08%3A00%3A00%2B00%3A00/plugin/rollout"),
    ("https://ops.example/airflow/", "https://ops.example/airflow/dags/canary_rollout__churn/runs/"
                                     "manual__2027-01-15T08%3A00%3A00%2B00%3A00/plugin/rollout"),
])
def test_the_link_is_the_run_tab_under_the_base_url(base_url, expected):
    assert rollout_tab_url("canary_rollout__churn", RUN, base_url=base_url) == expected


def test_the_base_url_comes_from_the_api_section(monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://ui.example:9000/")
    ti_key = SimpleNamespace(dag_id="canary_rollout__churn", run_id="manual__1", task_id="gate", map_index=-1)
    link = RolloutReportLink().get_link(None, ti_key=ti_key)
    assert link == "http://ui.example:9000/dags/canary_rollout__churn/runs/manual__1/plugin/rollout"


def test_every_rollout_step_carries_the_link():
    for operator in (CanaryBaseOperator, CanaryGateOperator, FinalizeRolloutOperator):
        assert [link.name for link in operator.operator_extra_links] == ["Rollout report"]
