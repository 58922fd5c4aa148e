"""Starting rollouts through the real Airflow REST API, directly and with ``canary trigger``."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

from canary.airflow_api import AirflowApiError, refused_field

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "api-model"  # the model of tests/airflow_api/conftest.py
DAG_ID = f"canary_rollout__{MODEL}"


def canary_trigger(server, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **server.cli_env()}
    env.pop("CANARY_AIRFLOW_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "canary", "trigger", *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.mark.parametrize(("conf", "field"), [
    ({"version": "v2", "stages": [100]}, "stages"),             # fewer weights than the spec's stages
    ({"version": "v2", "stages": [25, 200]}, "stages"),         # above 100
    ({"version": "v2", "dry_run": "yes"}, "dry_run"),            # not a boolean
    ({"version": ""}, "version"),                                # empty
    ({"version": "v2", "reason": "x" * 501}, "reason"),          # too long
])
def test_api_refuses_bad_conf_naming_the_field(airflow_server, conf, field):
    before = len(airflow_server.runs(DAG_ID))
    with pytest.raises(AirflowApiError) as err:
        airflow_server.client().trigger(DAG_ID, conf)
    assert err.value.status == 400, err.value
    assert refused_field(err.value.detail) == field, err.value.detail
    assert len(airflow_server.runs(DAG_ID)) == before


def test_api_refuses_a_conf_that_is_not_an_object(airflow_server):
    with pytest.raises(AirflowApiError) as err:
        airflow_server.client().request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                                        json_body={"logical_date": None, "conf": "v2"})
    assert err.value.status == 422 and refused_field(err.value.detail) is None


def test_cli_reports_unknown_model_and_refused_field(airflow_server):
    unknown = canary_trigger(airflow_server, "no-such-model", "--version", "v2")
    assert unknown.returncode == 2, unknown
    assert "unknown model 'no-such-model'" in unknown.stderr and "canary_rollout__no-such-model" in unknown.stderr
    bad = canary_trigger(airflow_server, MODEL, "--version", "v2", "--stages", "100")
    assert bad.returncode == 2 and "field 'stages'" in bad.stderr, bad.stderr
    wrong_password = subprocess.run([sys.executable, "-m", "canary", "trigger", MODEL, "--version", "v2"],
                                    env={**os.environ, **airflow_server.cli_env(), "CANARY_AIRFLOW_PASSWORD": "nope"},
                                    capture_output=True, text=True, timeout=60)
    assert wrong_password.returncode == 2 and "/auth/token: HTTP 401" in wrong_password.stderr


@pytest.mark.parametrize(("args", "refusal"), [
    (["--version", "v404"], "version: model 'api-model' has no version or alias 'v404'"),
    (["--version", "v2", "--stages", "50,25"], "stages[1]: must be greater than stages[0] (50)"),
])
def test_what_the_schema_cannot_express_is_refused_by_the_first_task_before_traffic_moves(airflow_server, args,
                                                                                        refusal):
    weights = airflow_server.stack.weights()
    result = canary_trigger(airflow_server, MODEL, *args, "--wait", "--timeout", "3m", "--poll-interval", "1s")
    assert result.returncode == 2, (result.stdout, result.stderr)
    summary, report = result.stdout.strip().splitlines()[-2:]
    assert f"REFUSED - {refusal}" in summary, summary
    assert json.loads(report)["outcome"] == "refused"
    run = airflow_server.runs(DAG_ID)[0]
    assert run["state"] == "failed" and run["conf"]["version"] == args[1]
    client = airflow_server.client()
    assert client.task_instance(DAG_ID, run["dag_run_id"], "validate_request")["state"] == "failed"
    assert client.task_instance(DAG_ID, run["dag_run_id"], "deploy_canary")["state"] != "success"
    assert f"rollout refused: {refusal}" in client.task_log(DAG_ID, run["dag_run_id"], "validate_request", 1)
    assert run["note"].startswith(f"REFUSED before any traffic moved - {refusal}"), run["note"]
    assert airflow_server.stack.weights() == weights


def test_good_rollout_through_cli_wait_ends_promoted(airflow_server):
    result = canary_trigger(airflow_server, MODEL, "--version", "v2", "--reason", "api test", "--wait",
                            "--timeout", "4m", "--poll-interval", "2s")
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    summary, report_line = result.stdout.strip().splitlines()[-2:]
    assert "PROMOTED" in summary
    report = json.loads(report_line)
    assert report["outcome"] == "promoted" and report["candidate"] == "v2"
    assert airflow_server.password not in result.stdout + result.stderr
    assert airflow_server.stack.weights() == {"v2": 100}
    assert airflow_server.registry().champion(MODEL) == "v2"
    run = airflow_server.runs(DAG_ID)[0]
    assert run["note"].startswith("PROMOTED v2 (stable v1) - every stage passed"), run["note"]


def test_api_refuses_an_approval_mode_outside_the_form(airflow_server):
    with pytest.raises(AirflowApiError) as err:
        airflow_server.client().trigger(DAG_ID, {"version": "v2", "approval": "sometimes"})
    assert err.value.status == 400 and refused_field(err.value.detail) == "approval", err.value.detail


def _scheduler_saw_the_pause(server, run_id: str, task_id: str, try_number: int) -> bool:
    """Whether the scheduler has taken the executor's report of the task's exit into AWAITING_INPUT."""
    key = (f"TaskInstanceKey(dag_id='{DAG_ID}', task_id='{task_id}', run_id='{run_id}', "
           f"try_number={try_number}, map_index=-1)")
    return any("Received executor event" in line and key in line
               for line in server.log_file.read_text(errors="replace").splitlines())


def _answer_when_asked(server, run_id: str, task_id: str, option: str, timeout_s: float = 300) -> int:
    """Answer ``task_id`` with ``option`` when it waits for a person, until it has finished; return answers.

    Answers only once the scheduler has processed the executor's report of the task pausing. An answer
    faster than that (no person is that fast, a script is) lets Airflow 3.3 resume the task first and then
    read the pause's report as "the task finished while queued", failing the try (a ``state mismatch``
    in the audit log). Each try is answered, should that still happen.
    """
    client, deadline, answers = server.client(), time.time() + timeout_s, 0
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/-1/hitlDetails"
    while time.time() < deadline:
        ti = client.task_instance(DAG_ID, run_id, task_id)
        state = ti["state"]
        if state == "success" and answers:
            return answers
        assert state not in ("success", "failed", "skipped", "upstream_failed"), (task_id, state, answers)
        if state == "awaiting_input" and _scheduler_saw_the_pause(server, run_id, task_id, ti["try_number"]):
            with contextlib.suppress(AirflowApiError):  # the HITL detail appears once the task waits
                if client.request("GET", path).get("response_received") is False:
                    client.request("PATCH", path, json_body={"chosen_options": [option]})
                    answers += 1
        time.sleep(1)
    raise AssertionError(f"{task_id} did not finish after {answers} answer(s); see {server.log_file}")


def test_approval_mode_from_the_form_holds_every_stage_for_a_person(airflow_server):
    """every_stage (stricter than the spec's none): approve stage 1, reject before promotion -> rolled back."""
    server, version = airflow_server, "v4"
    server.registry().register_version(MODEL, version)
    champion, weights = server.registry().champion(MODEL), server.stack.weights()
    run_id = server.client().trigger(DAG_ID, {"version": version, "approval": "every_stage",
                                              "reason": "approval test"})["dag_run_id"]
    _answer_when_asked(server, run_id, "stage_1.approve", "Approve")
    _answer_when_asked(server, run_id, "stage_2.approve", "Reject")
    assert server.wait_run(DAG_ID, run_id, timeout_s=180) == "failed"
    client = server.client()
    # The person approving saw the gate's evidence (the body renders the gate's Markdown table).
    details = client.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                                    "stage_1.approve/-1/hitlDetails")
    assert "| metric | decision | e-value / threshold |" in details["body"], details["body"]
    assert "| error_rate |" in details["body"] and "| canary |" in details["body"], details["body"]
    assert client.task_instance(DAG_ID, run_id, "stage_2.set_traffic")["state"] == "success"
    assert client.task_instance(DAG_ID, run_id, "promote")["state"] == "skipped"
    report = client.xcom(DAG_ID, run_id, "finalize")
    assert report["outcome"] == "rolled_back" and "approval rejected" in report["reason"], report
    assert server.stack.weights() == weights and server.registry().champion(MODEL) == champion
    assert client.dag_run(DAG_ID, run_id)["note"].startswith(f"ROLLED BACK {version} (stable {champion})")
