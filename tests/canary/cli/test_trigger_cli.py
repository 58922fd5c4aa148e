"""``canary trigger`` logic with an injected client (the real API is exercised in tests/airflow_api)."""

from __future__ import annotations

import argparse

import pytest

from canary.airflow_api import AirflowApiError, AirflowClient, refused_field
from canary.cli.trigger import build_conf, run_trigger


@pytest.mark.parametrize(("detail", "field"), [
    ("Invalid input for param stages: [5] is too short\n\nFailed validating 'minItems'", "stages"),
    ("Invalid input for param dry_run: 'yes' is not of type 'boolean'", "dry_run"),
    ([{"type": "dict_type", "loc": ["body", "conf"], "msg": "Input should be a valid dictionary"}], None),
    ([{"loc": ["body", "conf", "version"], "msg": "bad"}], "version"),
    ("something else", None),
])
def test_refused_field(detail, field):
    assert refused_field(detail) == field


def args(**kw) -> argparse.Namespace:
    base = {"model": "m", "version": "v2", "stages": None, "dry_run": False, "approval": None, "reason": "", "wait": True,
            "timeout": 60.0, "poll_interval": 5.0}
    return argparse.Namespace(**{**base, **kw})


def test_build_conf_sends_only_what_was_given():
    api = {"started_by": "api"}  # for the rollout history: the run's tasks cannot tell a REST call otherwise
    assert build_conf(args()) == {"version": "v2", **api}
    assert build_conf(args(stages=[5, 100], dry_run=True, reason="r")) == {
        "version": "v2", "stages": [5, 100], "dry_run": True, "reason": "r", **api}
    assert build_conf(args(approval="every_stage")) == {"version": "v2", "approval": "every_stage", **api}


class FakeClient:
    base_url = "http://airflow"

    def __init__(self, states, report=None, trigger_error=None):
        self.states, self.report, self.trigger_error = list(states), report, trigger_error
        self.calls = []

    def trigger(self, dag_id, conf):
        self.calls.append((dag_id, conf))
        if self.trigger_error:
            raise self.trigger_error
        return {"dag_run_id": "manual__1", "state": "queued"}

    def dag_run(self, dag_id, run_id):
        return {"state": self.states.pop(0) if len(self.states) > 1 else self.states[0]}

    def xcom(self, dag_id, run_id, task_id):
        return self.report

    def task_instance(self, dag_id, run_id, task_id):
        return {"state": "failed", "try_number": 1}

    def task_log(self, dag_id, run_id, task_id, try_number):
        return "AirflowFailException: rollout refused: version: no such version"


@pytest.mark.parametrize(("states", "report", "code"), [
    (["running", "success"], {"outcome": "promoted", "reason": "ok"}, 0),
    (["success"], {"outcome": "dry_run", "reason": "ok"}, 0),
    (["running", "failed"], {"outcome": "rolled_back", "reason": "error_rate"}, 1),
    (["failed"], None, 2),  # the first task refused it: no report
    (["running"], None, 1),  # still running at the timeout
])
def test_wait_exit_codes(states, report, code, capsys):
    clock = iter(range(0, 1000, 10))
    assert run_trigger(args(), client=FakeClient(states, report), sleep=lambda s: None,
                       clock=lambda: next(clock)) == code


def test_unknown_model_and_refusal_exit_2(capsys):
    missing = FakeClient(["queued"], trigger_error=AirflowApiError("x", status=404, detail="not found"))
    assert run_trigger(args(wait=False), client=missing) == 2
    assert "unknown model 'm'" in capsys.readouterr().err
    bad = FakeClient(["queued"], trigger_error=AirflowApiError(
        "x", status=400, detail="Invalid input for param stages: [5] is too short\n\nschema..."))
    assert run_trigger(args(wait=False), client=bad) == 2
    assert "field 'stages' is invalid: Invalid input for param stages: [5] is too short\n" in capsys.readouterr().err


def test_client_never_shows_credentials():
    client = AirflowClient("http://airflow", username="admin", password="s3cret", token="tok")
    assert "s3cret" not in repr(client) and "tok" not in repr(client)
