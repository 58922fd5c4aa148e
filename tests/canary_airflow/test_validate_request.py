"""The first task builds every backend the run uses, so a bad connection or option refuses the run before
``deploy_canary`` (constructors only: no traffic call is made).

Backends are faked at their interfaces (``fakes``), except where the test is about a real backend's
constructor (Prometheus, MLflow: they make no network call when built).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import fakes
import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException

from canary_airflow.operators import PLAN_TASK_ID, ValidateRolloutRequestOperator

CONNECTIONS = {"fake_serving": "canary_serving", "fake_metrics": "canary_metrics", "fake_registry": "canary_registry",
               "prom": "canary_metrics", "mlflow_registry": "canary_registry"}


@pytest.fixture(autouse=True)
def fake_backends(monkeypatch, tmp_path):
    fakes.install_stack(monkeypatch, connections=CONNECTIONS)
    monkeypatch.setenv("AIRFLOW_CONN_NO_HOST", json.dumps({"conn_type": "canary_registry"}))
    monkeypatch.setenv("CANARY_LOCK_PATH", str(tmp_path / "locks.db"))


def run_validate(tmp_path, **backends: Any) -> dict[str, Any]:
    spec = {"model": "m", "endpoint": "e", "shadow": {"enabled": False},
            "backends": {"serving": {"name": "fake", "conn_id": "fake_serving"},
                         "metrics": {"name": "fake", "conn_id": "fake_metrics"},
                         "registry": {"name": "fake", "conn_id": "fake_registry"}, **backends},
            "stages": [{"weight": 10, "min_duration": "20s", "max_duration": "60s"}, {"weight": 100}]}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(spec))
    task = ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=str(path))
    ctx = {"params": {}, "dag_run": SimpleNamespace(conf={"version": "v2"}), "run_id": "run-1",
           "dag": SimpleNamespace(dag_id="canary_rollout__m"), "ti": None}
    return task.execute(ctx)


def test_with_every_backend_buildable_the_plan_is_frozen(tmp_path):
    plan = run_validate(tmp_path)
    assert plan["candidate"] == "v2" and plan["stable"] == "v1"
    assert fakes.FakeRouter.calls == []  # building the router moved no traffic


@pytest.mark.parametrize(("backends", "message"), [
    ({"serving": {"name": "fake", "conn_id": "missing_serving"}},
     "rollout refused: serving backend 'fake' (connection 'missing_serving'): the connection is not defined; "
     "create it (Admin > Connections, or AIRFLOW_CONN_MISSING_SERVING) or set backends.serving.conn_id"),
    ({"metrics": {"name": "fake", "conn_id": "missing_metrics"}},
     "rollout refused: metrics backend 'fake' (connection 'missing_metrics'): the connection is not defined"),
    # the option's type is right, its value only the backend's constructor can judge
    ({"metrics": {"name": "prometheus", "conn_id": "prom", "options": {"metric_prefix": "my-prefix"}}},
     "rollout refused: metrics backend 'prometheus' (connection 'prom') cannot be built: prometheus backend: "
     "metric_prefix 'my-prefix' is not a metric name prefix"),
    ({"registry": {"name": "mlflow", "conn_id": "no_host"}},
     "rollout refused: registry backend 'mlflow' (connection 'no_host') cannot be built: connection 'no_host': "
     "the MLflow registry needs a host"),
    # a mistyped option is a spec error (the same as at DAG parse and in `canary validate`)
    ({"metrics": {"name": "prometheus", "conn_id": "prom", "options": {"timeout": 5}}},
     "backends.metrics.options.timeout: unknown prometheus metrics option (set to 5); allowed: metric_prefix,"),
])
def test_a_backend_that_cannot_be_built_refuses_the_run_before_any_traffic_moves(tmp_path, backends, message):
    with pytest.raises(AirflowFailException) as err:
        run_validate(tmp_path, **backends)
    assert message in str(err.value)
    assert fakes.FakeRouter.calls == []  # no deploy, no weight change
    assert fakes.FakeRouter.weights == {"v1": 100}
