"""End to end: a rollout run with `airflow dags test` against the real embedded stack tells an HTTP
receiver on loopback what happened, from the same tasks and code as in production."""

from __future__ import annotations

import pytest
import yaml
from fast_spec import FIRST_STAGE_PCT, fast_spec
from notify_receivers import http_receiver

from canary.devstack.demo import local_stack, migrate, run_rollout
from canary.devstack.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL, ENDPOINT = "e2e-notify", "e2e-notify"
FAULTS = {"v1": "error_rate=0.01", "v2": "error_rate=0.16"}


def test_a_rolled_back_rollout_tells_the_receiver_each_step(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    spec = fast_spec(MODEL, ENDPOINT, shadow={"enabled": False},
                     notify=[{"notifier": "http", "conn_id": "e2e_webhook", "events": ["all"],
                              "options": {"endpoint": "/hooks/rollouts"}}])
    (specs / f"{MODEL}.yaml").write_text(yaml.safe_dump(spec))
    procs = Processes()
    try:
        with http_receiver() as receiver, \
                local_stack(tmp_path / "stack", procs, model=MODEL, endpoint=ENDPOINT, versions=("v1", "v2"),
                            faults=FAULTS, rps=120) as stack:
            migrate(tmp_path / "airflow", stack)
            env = {"CANARY_SPECS_DIR": str(specs), "AIRFLOW_CONN_E2E_WEBHOOK": receiver.connection(),
                   "AIRFLOW__API__BASE_URL": "http://airflow.e2e"}
            report = run_rollout(stack, tmp_path / "airflow", "v2", extra_env=env)
    finally:
        procs.stop_all()
    assert report["outcome"] == "rolled_back", report
    bodies = [r.body for r in receiver.received]
    assert [b["event"] for b in bodies] == ["started", "stage_decided", "rolled_back"], bodies
    assert {r.path for r in receiver.received} == {"/hooks/rollouts"}
    started, gate, rolled_back = bodies
    assert started["subject"] == f"{MODEL}: rollout of v2 started"
    assert gate["subject"] == f"{MODEL}: stage 1 of 2 ({FIRST_STAGE_PCT}%) failed, rolling back v2"
    assert gate["decision"] == "rollback" and gate["lines"][1].startswith("Canary ")
    assert rolled_back["subject"] == f"{MODEL}: v2 rolled back"
    assert rolled_back["lines"][0] == "All traffic is back on v1."
    run_id = rolled_back["run_id"]
    assert rolled_back["link"].startswith(f"http://airflow.e2e/dags/canary_rollout__{MODEL}/runs/")
    assert all(b["run_id"] == run_id for b in bodies)
