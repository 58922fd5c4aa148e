"""Who started a run, from what Airflow tells its tasks (canary.history.started_by)."""

from __future__ import annotations

import pytest

from canary.history.model import StartedBy
from canary.history.started_by import started_by


@pytest.mark.parametrize(("run_type", "conf", "user", "expected"), [
    # the trigger form in the UI: a manual run with the user, no marker
    ("manual", {"version": "7"}, "alice", (StartedBy.UI, "user alice")),
    # `canary trigger` (REST API) says so in the conf
    ("manual", {"version": "7", "started_by": "api"}, "admin", (StartedBy.API, "user admin")),
    # the nightly DAG's TriggerDagRunOperator: operator-triggered, no user on a scheduled nightly
    ("operator_triggered", {"started_by": "nightly", "started_by_detail": "canary_nightly run scheduled__x"}, None,
     (StartedBy.NIGHTLY, "canary_nightly run scheduled__x")),
    ("operator_triggered", {"started_by": "registry_event", "started_by_detail": "canary_registry_events run r"},
     None, (StartedBy.REGISTRY_EVENT, "canary_registry_events run r")),
    # `airflow dags test`: Airflow records the user dag_test, whatever the conf says otherwise
    ("manual", {"version": "7"}, "dag_test", (StartedBy.CLI, "airflow dags test")),
    ("manual", {}, None, (StartedBy.CLI, "a manual run without a user")),
    ("asset_triggered", None, None, (StartedBy.REGISTRY_EVENT, "an asset event")),
    ("operator_triggered", {}, "bob", (StartedBy.UNKNOWN, "another DAG (run by user bob)")),
    ("scheduled", {}, None, (StartedBy.UNKNOWN, "a scheduled run")),
    ("backfill", {}, None, (StartedBy.UNKNOWN, "a backfill run")),
    (None, None, None, (StartedBy.UNKNOWN, "")),
    # a marker that is not ours is ignored, not trusted
    ("manual", {"started_by": "someone else"}, "carol", (StartedBy.UI, "user carol")),
    ("manual", {"started_by": 3}, "carol", (StartedBy.UI, "user carol")),
])
def test_started_by(run_type, conf, user, expected):
    assert started_by(run_type, conf, user) == expected


def test_an_enum_run_type_reads_like_its_value():
    class RunType:  # what Airflow's DagRunType looks like to the core: a str enum with .value
        value = "asset_triggered"

    assert started_by(RunType(), {}, None)[0] is StartedBy.REGISTRY_EVENT
