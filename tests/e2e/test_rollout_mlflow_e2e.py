"""End to end: rollout DAGs on the embedded serving layer and local metrics, with a real MLflow registry.

`airflow dags test` runs the DAG; the registry connection (basic auth) reaches it as
``AIRFLOW_CONN_<ID>`` and the spec picks ``backends.registry: {name: mlflow, conn_id: <id>}``. The
serving layer's version names are MLflow's version numbers. The MLflow server comes from tests/mlflow_harness.py.
"""

from __future__ import annotations

import json

import pytest
import yaml
from fast_spec import FIRST_STAGE_PCT, fast_spec
from mlflow_harness import mlflow_servers, require_mlflow_server

from canary.backends.mlflow_registry import MlflowModelRegistry
from canary.devstack.demo import local_stack, migrate, run_rollout
from canary.devstack.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

MODEL, ENDPOINT = "e2e-mlflow-model", "e2e-mlflow"
CONN_ID = "canary_mlflow_e2e"
BASE = 0.01
# "3" fails 16% of requests: it must be rolled back at the first stage.
FAULTS = {"1": f"error_rate={BASE}", "2": f"error_rate={BASE}", "3": f"error_rate={BASE + 0.15}"}


def rollout_spec() -> dict:
    return fast_spec(MODEL, ENDPOINT, shadow={"enabled": False}, backends={"registry": {"name": "mlflow", "conn_id": CONN_ID}})


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    exe = require_mlflow_server()
    root = tmp_path_factory.mktemp("e2e-mlflow")
    specs = root / "specs"
    specs.mkdir()
    (specs / f"{MODEL}.yaml").write_text(yaml.safe_dump(rollout_spec()))
    procs = Processes()
    try:
        with mlflow_servers(exe, root / "mlflow", auth=(True,)) as (server,):
            mlflow = MlflowModelRegistry(server.conn())
            for i in (1, 2, 3):
                assert mlflow.register_version(MODEL, f"s3://canary-e2e/{MODEL}/{i}") == str(i)
            mlflow.set_alias(MODEL, "champion", "1")
            mlflow.set_alias(MODEL, "challenger", "2")
            with local_stack(root / "stack", procs, model=MODEL, endpoint=ENDPOINT, versions=("1", "2", "3"),
                             faults=FAULTS, rps=120) as stack:
                migrate(root / "airflow", stack)
                conn = {"conn_type": "canary_registry", "host": server.url, "login": server.username,
                        "password": server.password}
                env = {"CANARY_SPECS_DIR": str(specs), f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(conn),
                       "MLFLOW_DISABLE_TELEMETRY": "true"}
                yield stack, root / "airflow", env, mlflow, server
    finally:
        procs.stop_all()


def test_challenger_is_promoted_and_the_champion_alias_moves_in_mlflow(e2e):
    stack, home, env, mlflow, _ = e2e
    report = run_rollout(stack, home, "challenger", extra_env=env)  # resolved through the MLflow alias
    assert report["outcome"] == "promoted", report
    assert [s["decision"] for s in report["timeline"]] == ["advance", "advance"]
    assert stack.weights() == {"2": 100}
    assert mlflow.aliases(MODEL) == {"challenger": "2", "champion": "2"}
    tags = mlflow.get_tags(MODEL, "2")
    assert tags["rollout.result"] == "promoted" and tags["rollout.run_id"]
    assert json.loads(tags["rollout.summary"])["retired"] == "1"
    assert mlflow.get_tags(MODEL, "1") == {"rollout.retired_by": "2"}
    assert mlflow.get_tags(MODEL, "3") == {}


def test_faulty_version_is_rolled_back_and_tagged_in_mlflow(e2e):
    stack, home, env, mlflow, _ = e2e
    before = mlflow.champion(MODEL)
    aliases = mlflow.aliases(MODEL)
    report = run_rollout(stack, home, "3", extra_env=env)
    assert report["outcome"] == "rolled_back", report
    assert len(report["timeline"]) == 1 and report["timeline"][0]["decision"] == "rollback"
    assert stack.weights() == {before: 100}
    assert mlflow.aliases(MODEL) == aliases  # a rollback moves no alias
    tags = mlflow.get_tags(MODEL, "3")
    assert tags["rollout.result"] == "rolled_back" and tags["rollout.run_id"]
    assert tags["rollout.reason"].startswith(f"stage 1 ({FIRST_STAGE_PCT}%)"), tags
    assert json.loads(tags["rollout.summary"]) == {"stable": before}


def test_unknown_version_is_refused_before_traffic_moves(e2e):
    stack, home, env, mlflow, server = e2e
    serving = stack.weights()
    with pytest.raises(RuntimeError, match="wrote no report"):  # refused while planning: no plan, no report
        run_rollout(stack, home, "9", extra_env=env)
    log = (stack.state_dir / "airflow-9.log").read_text()
    assert f"rollout refused: version: model '{MODEL}' has no version or alias '9' (known: 1, 2, 3," in log
    assert stack.weights() == serving
    assert mlflow.list_versions(MODEL) == ["1", "2", "3"]
    for airflow_log in stack.state_dir.glob("airflow-*.log"):
        assert server.password not in airflow_log.read_text(), airflow_log
