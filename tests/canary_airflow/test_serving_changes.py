"""Deferred waits for serving changes: the operators that change traffic, and ServingChangeTrigger.

Operators run against routers faked at the backend interface (``fakes.FakeRouter`` applies changes at
once like the embedded serving layer; ``fakes.FakeSettlingRouter`` reports them pending as scripted).
The trigger runs with asyncio and a patched clock against the same fakes, and against a real moto
server with the real SageMaker router built from an Airflow AWS connection.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import fakes
import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from clock import PatchedClock

from canary.rollout.plan import RolloutRequest, plan_rollout
from canary.spec.model import parse_spec
from canary_airflow import serving_changes
from canary_airflow.operators import (
    PLAN_TASK_ID,
    DeployCanaryOperator,
    FinalizeRolloutOperator,
    PromoteOperator,
    RollbackOperator,
    SetTrafficOperator,
)
from canary_airflow.serving_changes import ServingChangeError, ServingChangeTrigger, check_settled

RESUME = "resume_after_serving_change"


def make_plan(serving: str = "fake-settling") -> dict[str, Any]:
    spec = parse_spec({
        "model": "m", "endpoint": "e", "shadow": {"enabled": False},
        "backends": {"serving": {"name": serving, "conn_id": "fake_serving"},
                     "metrics": {"name": "fake", "conn_id": "fake_metrics"},
                     "registry": {"name": "fake", "conn_id": "fake_registry"}},
        "stages": [{"weight": 10, "min_duration": "20s", "max_duration": "60s", "min_requests": 100},
                   {"weight": 100, "min_duration": "10s", "max_duration": "30s", "min_requests": 10}],
    })
    plan = plan_rollout(spec, RolloutRequest.from_conf({"version": "v2"}), fakes.FakeRegistry(None),
                        run_id="run-1", now_s=1000.0)
    return plan.to_dict()


class FakeTI:
    def __init__(self, xcoms: dict[tuple[str, str], Any], failed: tuple[str, ...] = ()) -> None:
        self.xcoms = xcoms
        self.pushed: dict[str, Any] = {}
        self.failed = failed

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_ids, key))

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def get_task_states(self, dag_id: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
        return {run_ids[0]: dict.fromkeys(self.failed, "failed")}


def context(serving: str = "fake-settling", xcoms: dict | None = None, failed: tuple[str, ...] = ()) -> dict:
    ti = FakeTI({(PLAN_TASK_ID, "return_value"): make_plan(serving), **(xcoms or {})}, failed)
    return {"ti": ti, "run_id": "run-1", "dag": SimpleNamespace(dag_id="canary_rollout__m"), "dag_run": None,
            "params": {}}


@pytest.fixture(autouse=True)
def fake_backends(monkeypatch, tmp_path):
    fakes.install_stack(monkeypatch)
    monkeypatch.setenv("CANARY_REPORTS_DIR", str(tmp_path / "reports"))


def changes() -> list[tuple[Any, ...]]:
    return [c for c in fakes.FakeRouter.calls if c[0] not in ("pending_change", "without_waiting")]


SETTLED = {"status": "settled", "resource": "endpoint 'e'", "message": "endpoint 'e' settled", "checks": 2,
           "waited_s": 10.0}


# -- operators ----------------------------------------------------------------------------------------

def test_deploy_defers_while_the_endpoint_updates_and_resumes_idempotently():
    fakes.FakeSettlingRouter.states = ["InService", "Updating"]  # before the change: settled; after: updating
    ctx = context()
    with pytest.raises(TaskDeferred) as deferred:
        DeployCanaryOperator(task_id="deploy_canary", deferrable=True).execute(ctx)
    trigger = deferred.value.trigger
    assert isinstance(trigger, ServingChangeTrigger)
    assert deferred.value.method_name == RESUME
    assert deferred.value.timeout == timedelta(seconds=60.0 + serving_changes.DEFER_TIMEOUT_SLACK_S)
    assert trigger.serving == {"name": "fake-settling", "conn_id": "fake_serving", "options": {"endpoint": "e"}}
    assert trigger.pending["state"] == "Updating" and trigger.pending["token"] == {"expected_config": "e-cfg2"}
    assert changes() == [("deploy", "v2")]

    # The resumed task is a new operator instance; the deploy runs again and is a no-op.
    result = DeployCanaryOperator(task_id="deploy_canary", deferrable=True).resume_after_serving_change(ctx, SETTLED)
    assert result == {"v1": 100, "v2": 0}
    assert changes() == [("deploy", "v2"), ("deploy", "v2")]


def test_an_update_in_progress_before_the_change_is_waited_out_first():
    fakes.FakeSettlingRouter.states = ["Updating"]
    with pytest.raises(TaskDeferred):
        SetTrafficOperator(task_id="set_traffic", stage_index=0, deferrable=True).execute(context())
    assert changes() == []  # nothing is stacked on an update in progress


def test_set_traffic_starts_the_stage_clock_after_the_split_is_in_effect(monkeypatch):
    fakes.FakeSettlingRouter.states = ["InService", "Updating"]
    ctx = context()
    with pytest.raises(TaskDeferred):
        SetTrafficOperator(task_id="set_traffic", stage_index=0, deferrable=True).execute(ctx)
    monkeypatch.setattr("canary_airflow.operators.time.time", lambda: 5000.0)
    result = SetTrafficOperator(task_id="set_traffic", stage_index=0,
                                deferrable=True).resume_after_serving_change(ctx, SETTLED)
    assert result["started_at_s"] == 5000.0 and result["split"] == {"v1": 90, "v2": 10}
    assert fakes.FakeRouter.weights == {"v1": 90, "v2": 10}


def test_a_router_that_applies_changes_at_once_never_defers():
    """The embedded serving layer's router has no pending changes: the local stack never defers."""
    ctx = context(serving="fake")
    assert DeployCanaryOperator(task_id="deploy_canary", deferrable=True).execute(ctx) == {"v1": 100, "v2": 0}
    SetTrafficOperator(task_id="set_traffic", stage_index=0, deferrable=True).execute(ctx)
    assert fakes.FakeRouter.weights == {"v1": 90, "v2": 10}


def test_not_deferrable_leaves_the_waiting_to_the_backend():
    fakes.FakeSettlingRouter.states = ["Updating"] * 5
    DeployCanaryOperator(task_id="deploy_canary", deferrable=False).execute(context())
    assert ("without_waiting",) not in fakes.FakeRouter.calls
    assert all(c[0] != "pending_change" for c in fakes.FakeRouter.calls)


def test_promote_defers_per_change_and_moves_the_champion_once_settled():
    fakes.FakeRouter.reset({"v1": 50, "v2": 50})
    ctx = context()
    fakes.FakeSettlingRouter.states = ["InService", "Updating"]  # after the weight shift
    with pytest.raises(TaskDeferred):
        PromoteOperator(task_id="promote", deferrable=True).execute(ctx)
    fakes.FakeSettlingRouter.states = ["InService", "InService", "Updating"]  # after removing v1
    with pytest.raises(TaskDeferred):
        PromoteOperator(task_id="promote", deferrable=True).resume_after_serving_change(ctx, SETTLED)
    assert fakes.FakeRegistry.aliases["m"]["champion"] == "v1"  # not before the old variant is gone
    result = PromoteOperator(task_id="promote", deferrable=True).resume_after_serving_change(ctx, SETTLED)
    assert result["outcome"] == "promoted"
    assert fakes.FakeRouter.weights == {"v2": 100}
    assert fakes.FakeRegistry.aliases["m"]["champion"] == "v2"
    assert changes() == [("set_weights", {"v2": 100}), ("set_weights", {"v2": 100}), ("remove", "v1"),
                         ("set_weights", {"v2": 100}), ("remove", "v1")]


def test_a_failed_update_fails_the_task_clearly_and_a_timeout_may_be_retried():
    op = RollbackOperator(task_id="rollback", stage_index=0, deferrable=True)
    failed = {"status": "failed", "message": "sagemaker: endpoint 'e' is Failed: capacity"}
    with pytest.raises(AirflowFailException, match="serving change failed: sagemaker: endpoint 'e' is Failed: capacity"):
        op.resume_after_serving_change(context(), failed)
    with pytest.raises(ServingChangeError, match="still Updating after 60s") as err:
        op.resume_after_serving_change(context(), {"status": "timeout", "message": "endpoint 'e' still Updating "
                                                                                   "after 60s"})
    assert not isinstance(err.value, AirflowFailException) and not err.value.final
    with pytest.raises(ServingChangeError, match="malformed"):
        check_settled({"status": "maybe"})
    assert changes() == []


def test_finalize_defers_the_return_to_stable_and_completes_it_on_resume():
    fakes.FakeRouter.reset({"v1": 75, "v2": 25})
    ctx = context(failed=("stage_1.observe",))
    fakes.FakeSettlingRouter.states = ["InService", "Updating"]  # the weights go back: Updating
    with pytest.raises(TaskDeferred) as deferred:
        FinalizeRolloutOperator(task_id="finalize", stage_count=2, deferrable=True).execute(ctx)
    assert deferred.value.method_name == RESUME
    assert fakes.FakeRouter.weights == {"v1": 100, "v2": 0}
    with pytest.raises(AirflowFailException, match="rollout failed: task\\(s\\) stage_1.observe failed"):
        FinalizeRolloutOperator(task_id="finalize", stage_count=2,
                                deferrable=True).resume_after_serving_change(ctx, SETTLED)
    assert fakes.FakeRouter.weights == {"v1": 100}  # candidate removed
    assert changes()[-1] == ("remove", "v2")


def test_finalize_turns_every_unsettled_wait_into_a_retryable_failure():
    """Finalize is the safety net: even a failed update must fail the try (retried), not the run's verdict."""
    op = FinalizeRolloutOperator(task_id="finalize", stage_count=2, deferrable=True)
    for event in ({"status": "failed", "message": "endpoint 'e' is Failed: capacity"},
                  {"status": "timeout", "message": "endpoint 'e' still Updating after 60s"}, None):
        with pytest.raises(RuntimeError, match="could not return traffic to stable yet") as err:
            op.resume_after_serving_change(context(failed=("deploy_canary",)), event)
        assert not isinstance(err.value, AirflowFailException)


def test_finalize_reports_an_endpoint_that_went_failed_as_retryable():
    fakes.FakeRouter.reset({"v1": 75, "v2": 25})
    fakes.FakeSettlingRouter.states = ["Failed"]
    with pytest.raises(RuntimeError, match="could not return traffic to v1 yet: .*is Failed"):
        FinalizeRolloutOperator(task_id="finalize", stage_count=2, deferrable=True).execute(
            context(failed=("stage_1.observe",)))


# -- the trigger --------------------------------------------------------------------------------------

Clock = PatchedClock


def make_trigger(deadline_s: float = 1060.0, serving: str = "fake-settling") -> ServingChangeTrigger:
    pending = {"backend": "fake", "resource": "endpoint 'e'", "state": "Updating",
               "token": {"expected_config": "e-cfg2"}, "poll_interval_s": 5.0, "timeout_s": 60.0}
    return ServingChangeTrigger(serving={"name": serving, "conn_id": "fake_serving", "options": {"endpoint": "e"}},
                                pending=pending, deadline_s=deadline_s)


def events(trigger: ServingChangeTrigger) -> list[dict]:
    async def go() -> list[dict]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(go())


def test_trigger_serialize_round_trip_is_json_and_rebuilds_the_same_trigger():
    trigger = make_trigger()
    path, kwargs = trigger.serialize()
    assert path == "canary_airflow.serving_changes.ServingChangeTrigger"
    rebuilt = ServingChangeTrigger(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (path, kwargs)


def test_trigger_fires_settled_once_updating_turns_in_service(monkeypatch):
    clock = Clock(monkeypatch)
    fakes.FakeSettlingRouter.states = ["Updating", "Updating", "InService"]
    (event,) = events(make_trigger())
    assert event["status"] == "settled" and event["checks"] == 3
    assert clock.sleeps == [5.0, 5.0]
    # Every check asks about the change the task made (its token), not about whatever the router did last.
    tokens = [c[1] for c in fakes.FakeRouter.calls if c[0] == "pending_change"]
    assert tokens == [{"expected_config": "e-cfg2"}] * 3


def test_trigger_fires_failed_with_the_reason_when_the_update_fails(monkeypatch):
    Clock(monkeypatch)
    fakes.FakeSettlingRouter.states = ["Updating", "Failed"]
    (event,) = events(make_trigger())
    assert event["status"] == "failed"
    assert "is Failed: not enough ml.m5.large capacity" in event["message"]
    with pytest.raises(ServingChangeError) as err:
        check_settled(event)
    assert err.value.final


def test_trigger_times_out_at_its_absolute_deadline(monkeypatch):
    clock = Clock(monkeypatch)
    fakes.FakeSettlingRouter.states = ["Updating"] * 100
    (event,) = events(make_trigger(deadline_s=1060.0))
    assert event["status"] == "timeout" and "still Updating after 60s" in event["message"]
    assert clock.now == 1060.0 and all(s > 0 for s in clock.sleeps)
    # Restarted after the deadline (e.g. a triggerer restart): it does not wait another full timeout.
    fakes.FakeSettlingRouter.states = ["Updating"]
    (again,) = events(make_trigger(deadline_s=1000.0))
    assert again["status"] == "timeout" and clock.now == 1060.0


def test_trigger_retries_failing_checks_with_sleeps_then_reports_an_error(monkeypatch):
    clock = Clock(monkeypatch)
    fakes.FakeSettlingRouter.states = ["Unreachable"] * serving_changes.MAX_CONSECUTIVE_CHECK_ERRORS
    (event,) = events(make_trigger(deadline_s=10_000.0))
    assert event["status"] == "error" and "ThrottlingException" in event["message"]
    assert len(clock.sleeps) == serving_changes.MAX_CONSECUTIVE_CHECK_ERRORS - 1
    assert all(s >= serving_changes.MIN_CHECK_INTERVAL_S for s in clock.sleeps)


def test_trigger_with_a_router_that_never_lags_settles_at_once(monkeypatch):
    Clock(monkeypatch)
    (event,) = events(make_trigger(serving="fake"))
    assert event["status"] == "settled" and event["checks"] == 1


def test_trigger_reports_a_backend_it_cannot_build(monkeypatch):
    Clock(monkeypatch)
    (event,) = events(make_trigger(serving="no-such-router"))
    assert event["status"] == "error" and "unknown serving backend 'no-such-router'" in event["message"]


def test_trigger_reports_an_unexpected_backend_exception_as_an_error_event(monkeypatch):
    """A defect in a backend must reach the task as an event it can act on, not crash the triggerer's run."""
    clock = Clock(monkeypatch)
    fakes.FakeSettlingRouter.states = ["Updating", "Bug"]
    (event,) = events(make_trigger(deadline_s=10_000.0))
    assert event["status"] == "error" and event["checks"] == 1, event
    assert event["message"] == "checking endpoint 'e' raised an unexpected KeyError: 'EndpointStatus'"
    assert clock.sleeps == [5.0]
    with pytest.raises(ServingChangeError) as err:
        check_settled(event)
    assert not err.value.final
