"""DAG integrity: every spec builds, the task chain is the expected one, parsing stays cheap."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "include" / "rollouts"


def dagbag(dags_folder: Path | None = None, specs_dir: Path | None = None):
    from airflow.dag_processing.dagbag import DagBag

    if specs_dir is not None:
        os.environ["CANARY_SPECS_DIR"] = str(specs_dir)
    try:
        return DagBag(str(dags_folder or ROOT / "dags"))
    finally:
        os.environ.pop("CANARY_SPECS_DIR", None)


@pytest.fixture(scope="module")
def bag():
    return dagbag()


def test_no_import_errors_and_one_dag_per_spec(bag):
    assert bag.import_errors == {}
    expected = {f"canary_rollout__{p.stem}" for p in SPECS.glob("*.yaml")}
    assert expected <= set(bag.dags)


def test_task_chain_and_policies(bag):
    from canary.spec.model import load_spec

    for path in SPECS.glob("*.yaml"):
        spec = load_spec(path)
        dag = bag.dags[spec.dag_id]
        assert dag.max_active_runs == 1
        assert dag.default_args["owner"] == spec.owner and dag.default_args["retries"] >= 1
        assert "canary" in dag.tags and dag.doc_md
        n = len(spec.stages)
        chain = ["validate_request", "shadow_test", "deploy_canary", "stage_1.set_traffic"]
        for a, b in zip(chain, chain[1:], strict=False):
            assert b in dag.get_task(a).downstream_task_ids, (a, b)
        for i in range(1, n + 1):
            g = f"stage_{i}"
            assert dag.get_task(f"{g}.observe").downstream_task_ids == {f"{g}.gate"}
            assert dag.get_task(f"{g}.observe").retries >= 1  # a lost deferral must not end the rollout
            assert {f"{g}.proceed", f"{g}.rollback"} <= dag.get_task(f"{g}.gate").downstream_task_ids
            nxt = f"stage_{i + 1}.set_traffic" if i < n else "promote"
            assert nxt in dag.get_task(f"{g}.proceed").downstream_task_ids
            assert "finalize" in dag.get_task(f"{g}.rollback").downstream_task_ids
        finalize = dag.get_task("finalize")
        assert finalize.is_teardown and finalize.trigger_rule.value == "all_done_setup_success"
        assert "finalize" in dag.get_task("promote").downstream_task_ids
        # The form: JSON-schema params for version, stage override and dry run.
        params = dag.params
        assert params.get_param("stages").schema["minItems"] == n
        assert set(params.keys()) >= {"version", "stages", "dry_run", "reason"}


def test_broken_spec_is_one_import_error_and_hides_no_other_dag(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    for path in SPECS.glob("*.yaml"):
        shutil.copy(path, specs / path.name)
    (specs / "broken.yaml").write_text(yaml.safe_dump({
        "model": "broken", "endpoint": "b", "stages": [{"weight": 5}, {"weight": 25}, {"weight": 20},
                                                       {"weight": 100}]}))
    bag = dagbag(specs_dir=specs)
    assert {f"canary_rollout__{p.stem}" for p in SPECS.glob("*.yaml")} <= set(bag.dags)
    assert "canary_rollout__broken" not in bag.dags
    (message,) = bag.import_errors.values()
    assert "broken.yaml: stages[2].weight: must be greater than stages[1].weight (25)" in message


def test_a_mistyped_backend_option_is_an_import_error_naming_the_option(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "typo.yaml").write_text(yaml.safe_dump({
        "model": "typo", "endpoint": "t", "shadow": {"enabled": False}, "stages": [{"weight": 100}],
        "backends": {"metrics": {"name": "cloudwatch", "options": {"period": 60, "settle_s": "2m"}}}}))
    bag = dagbag(specs_dir=specs)
    assert "canary_rollout__typo" not in bag.dags
    (message,) = bag.import_errors.values()
    assert "typo.yaml: backends.metrics.options.period: unknown cloudwatch metrics option (set to 60); allowed: " \
           "namespace, period_s, settle_s" in message
    assert "typo.yaml: backends.metrics.options.settle_s: must be a valid number, unable to parse string as a " \
           "number, got '2m'" in message


def test_parsing_imports_nothing_heavy():
    """DAG files must not pull in scipy, pandas, boto3, GX, the chart libraries or the serving stack at parse time."""
    code = (
        "import sys, runpy, json; runpy.run_path(sys.argv[1]);"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'scipy','statsmodels','pandas','great_expectations','boto3','botocore','sklearn','mlflow',"
        "'canary.serving','fastapi','altair','vl_convert'} or m.startswith('canary.stats') "
        "or m.startswith('canary.serving'))))"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT / 'dags'}"}
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "dags" / "canary_rollouts.py")],
                         capture_output=True, text=True, env=env, check=True)
    heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == [], heavy


def test_ruff_air3_rules_pass_on_dags_and_plugins():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed in this environment")
    res = subprocess.run([ruff, "check", "--select", "AIR3", "--preview", "dags", "plugins"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(("policy", "allowed"), [
    ({"approval": "every_stage"}, ["every_stage"]),
    ({"approval": "before_promote"}, ["before_promote", "every_stage"]),
    ({"on_timeout": "hold_for_approval"}, ["none", "before_promote", "every_stage"]),
    ({}, ["none", "before_promote", "every_stage"]),
])
def test_every_stage_can_hold_and_the_form_offers_only_stricter_approval(tmp_path, policy, allowed):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from canary_airflow.factory import build_rollout_dag

    path = tmp_path / "held.yaml"
    path.write_text(yaml.safe_dump({"model": "held", "endpoint": "e", "policy": policy,
                                    "stages": [{"weight": 10}, {"weight": 50}, {"weight": 100}]}))
    dag = build_rollout_dag(path)
    for i in (1, 2, 3):
        approve = dag.get_task(f"stage_{i}.approve")
        assert isinstance(approve, ApprovalOperator)
        assert f"stage_{i}.approve" in dag.get_task(f"stage_{i}.gate").downstream_task_ids
        nxt = f"stage_{i + 1}.set_traffic" if i < 3 else "promote"
        assert nxt in approve.downstream_task_ids
        # Both ways into the next step must be able to start it alone.
        assert dag.get_task(nxt).trigger_rule.value == "none_failed_min_one_success"
    schema = dag.params.get_param("approval").schema
    assert schema["enum"] == allowed and dag.params["approval"] == allowed[0]
