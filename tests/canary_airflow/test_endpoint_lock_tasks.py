"""One rollout per endpoint in the Airflow layer: the first task takes, waits for or refuses the lease;
later steps renew it; the wait trigger and the observe trigger (asyncio, patched clock).

Backends are faked at their interfaces (``fakes``); the lease store is the real local one (SQLite in
the test's directory), reached through an Airflow connection like in production.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import fakes
import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from clock import PatchedClock

from canary.backends import build_backend
from canary.backends.base import ConnInfo, LeaseHolder
from canary.rollout.observe import StageWatch
from canary.spec.model import parse_spec
from canary_airflow import endpoint_lock
from canary_airflow.endpoint_lock import WAIT_TIMEOUT_SLACK_S
from canary_airflow.operators import PLAN_TASK_ID, SetTrafficOperator, ValidateRolloutRequestOperator
from canary_airflow.triggers import CanaryObserveTrigger, EndpointLeaseTrigger

KEY = "local/e"  # serving backend "local", endpoint "e"
OTHER = LeaseHolder(dag_id="canary_rollout__other", run_id="manual__other")
ME = LeaseHolder(dag_id="canary_rollout__m", run_id="run-2")
NOW = 1_000_000.0


def spec_data(**concurrency: Any) -> dict[str, Any]:
    return {
        "model": "m", "endpoint": "e", "shadow": {"enabled": False},
        "backends": {"metrics": {"name": "fake", "conn_id": "fake_metrics"},
                     "registry": {"name": "fake", "conn_id": "fake_registry"},
                     "lock": {"name": "local", "conn_id": "test_lock"}},
        "stages": [{"weight": 10, "min_duration": "20s", "max_duration": "60s", "min_requests": 100},
                   {"weight": 100, "min_duration": "10s", "max_duration": "30s", "min_requests": 10}],
        "analysis": {"poll_interval": "5s"},
        "concurrency": {"max_wait": "10m", "poll_interval": "15s", "lease_ttl": "5m", **concurrency},
    }


Clock = PatchedClock


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch, NOW)


@pytest.fixture
def store(tmp_path, monkeypatch, clock):
    """The real local lease store behind connection ``test_lock``; returned with the test's clock."""
    path = tmp_path / "locks.db"
    monkeypatch.setenv("AIRFLOW_CONN_TEST_LOCK", json.dumps({"conn_type": "canary_lock", "extra": {"path": str(path)}}))
    return build_backend("lock", "local", ConnInfo(extra={"path": str(path)}), clock=clock)


@pytest.fixture(autouse=True)
def fake_backends(monkeypatch, tmp_path):
    # validate_request builds every backend: the spec's local serving backend needs its (default) connection.
    fakes.install_stack(monkeypatch, connections={"fake_metrics": "canary_metrics", "fake_registry": "canary_registry",
                                                  "canary_serving_default": "canary_serving"},
                        versions=("v1", "v2", "v3"), route=False)
    fakes.FakeMetrics.stats_fn = None


def write_spec(tmp_path, **concurrency: Any) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(spec_data(**concurrency)))
    return str(path)


def validate(tmp_path, conf: dict[str, Any] | None = None, **concurrency: Any) -> tuple[Any, dict[str, Any]]:
    task = ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=write_spec(tmp_path, **concurrency))
    ctx = {"params": {}, "dag_run": SimpleNamespace(conf={"version": "v2", **(conf or {})}), "run_id": ME.run_id,
           "dag": SimpleNamespace(dag_id=ME.dag_id), "ti": None}
    return task, ctx


def defer(task, ctx, event=None) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        task.resume_after_lease_wait(ctx, event) if event else task.execute(ctx)
    return deferred.value


# -- the first task: take, wait, refuse --------------------------------------------------------------

def test_a_free_endpoint_is_taken_before_the_plan_is_frozen(tmp_path, store, clock):
    task, ctx = validate(tmp_path)
    plan = task.execute(ctx)
    assert (plan["candidate"], plan["stable"]) == ("v2", "v1")
    lease = store.get(KEY)
    assert lease.holder == ME and lease.expires_at_s == clock.now + 300.0


def test_a_busy_endpoint_defers_to_the_wait_trigger_without_a_worker_slot(tmp_path, store, clock):
    store.acquire(KEY, OTHER, ttl_s=3600)
    task, ctx = validate(tmp_path)
    deferred = defer(task, ctx)
    trigger = deferred.trigger
    assert isinstance(trigger, EndpointLeaseTrigger) and deferred.method_name == "resume_after_lease_wait"
    assert (trigger.key, trigger.dag_id, trigger.run_id) == (KEY, ME.dag_id, ME.run_id)
    assert trigger.lock == {"name": "local", "conn_id": "test_lock", "options": {}}
    assert (trigger.deadline_s, trigger.waiting_since_s, trigger.poll_interval_s) == (NOW + 600, NOW, 15.0)
    assert deferred.timeout == timedelta(seconds=600 + WAIT_TIMEOUT_SLACK_S)
    assert store.get(KEY).holder == OTHER  # waiting takes nothing


def test_losing_the_race_after_the_wait_defers_again_with_the_same_deadline(tmp_path, store, clock):
    store.acquire(KEY, OTHER, ttl_s=3600)
    task, ctx = validate(tmp_path)
    first = defer(task, ctx).trigger
    clock.now += 120
    free = {"status": "free", "key": KEY, "holder": None, "deadline_s": first.deadline_s,
            "waiting_since_s": first.waiting_since_s, "error": None}
    again = defer(ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=task.spec_path), ctx, free).trigger
    assert (again.deadline_s, again.waiting_since_s) == (NOW + 600, NOW)


def test_after_the_wait_the_request_is_resolved_again_under_the_lease(tmp_path, store, clock):
    store.acquire(KEY, OTHER, ttl_s=3600)
    task, ctx = validate(tmp_path)
    first = defer(task, ctx).trigger
    # The rollout that held the endpoint promoted v3 and released it.
    fakes.FakeRegistry.aliases["m"]["champion"] = "v3"
    assert store.release(KEY, OTHER)
    clock.now += 200
    free = {"status": "free", "key": KEY, "holder": None, "deadline_s": first.deadline_s,
            "waiting_since_s": first.waiting_since_s, "error": None}
    plan = ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=task.spec_path) \
        .resume_after_lease_wait(ctx, free)
    assert (plan["candidate"], plan["stable"]) == ("v2", "v3")
    assert store.get(KEY).holder == ME


def test_a_request_refused_after_the_wait_leaves_the_endpoint_free(tmp_path, store, clock):
    store.acquire(KEY, OTHER, ttl_s=3600)
    task, ctx = validate(tmp_path)
    first = defer(task, ctx).trigger
    fakes.FakeRegistry.aliases["m"]["champion"] = "v2"  # the other rollout promoted our candidate
    store.release(KEY, OTHER)
    free = {"status": "free", "key": KEY, "holder": None, "deadline_s": first.deadline_s,
            "waiting_since_s": first.waiting_since_s, "error": None}
    with pytest.raises(AirflowFailException, match="rollout refused: version: .*already the champion"):
        ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=task.spec_path).resume_after_lease_wait(ctx, free)
    assert store.get(KEY) is None


def test_a_retried_first_task_waits_only_what_is_left_of_max_wait_since_the_run_started(tmp_path, store, clock):
    from datetime import UTC, datetime

    lease = store.acquire(KEY, OTHER, ttl_s=3600)
    task, ctx = validate(tmp_path)
    started = datetime.fromtimestamp(NOW - 200, tz=UTC)
    ctx = {**ctx, "ti": SimpleNamespace(try_number=2),
           "dag_run": SimpleNamespace(conf=ctx["dag_run"].conf, start_date=started)}
    trigger = defer(task, ctx).trigger
    assert (trigger.waiting_since_s, trigger.deadline_s) == (NOW - 200, NOW + 400)
    # Retried after max_wait has passed since the run started: refused at once, naming the holder.
    ctx["dag_run"].start_date = datetime.fromtimestamp(NOW - 601, tz=UTC)
    with pytest.raises(AirflowFailException, match="concurrency.max_wait: waited 10m for endpoint local/e, "
                                                   "still held by canary_rollout__other"):
        ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=task.spec_path).execute(ctx)
    assert store.get(KEY).holder == lease.holder
    # The first try always gets the full wait.
    first = defer(ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=task.spec_path),
                  {**ctx, "ti": SimpleNamespace(try_number=1)}).trigger
    assert (first.waiting_since_s, first.deadline_s) == (NOW, NOW + 600)


def test_the_wait_ends_at_max_wait_naming_the_running_rollout(tmp_path, store, clock):
    lease = store.acquire(KEY, OTHER, ttl_s=3600)
    task, ctx = validate(tmp_path)
    timeout = {"status": "timeout", "key": KEY, "holder": lease.to_dict(), "deadline_s": NOW + 600,
               "waiting_since_s": NOW, "error": None}
    with pytest.raises(AirflowFailException) as err:
        task.resume_after_lease_wait(ctx, timeout)
    message = str(err.value)
    assert message.startswith("rollout refused: concurrency.max_wait: waited 10m for endpoint local/e, "
                              "still held by canary_rollout__other run manual__other (since "), message
    assert store.get(KEY).holder == OTHER


def test_a_lease_freed_just_at_the_deadline_is_still_taken(tmp_path, store, clock):
    lease = store.acquire(KEY, OTHER, ttl_s=3600)
    store.release(KEY, OTHER)
    task, ctx = validate(tmp_path)
    clock.now += 600
    timeout = {"status": "timeout", "key": KEY, "holder": lease.to_dict(), "deadline_s": NOW + 600,
               "waiting_since_s": NOW, "error": None}
    assert task.resume_after_lease_wait(ctx, timeout)["candidate"] == "v2"
    assert store.get(KEY).holder == ME


def test_refuse_mode_fails_at_once_naming_the_holder(tmp_path, store, clock):
    store.acquire(KEY, OTHER, ttl_s=3600)
    task, ctx = validate(tmp_path, on_busy="refuse")
    with pytest.raises(AirflowFailException) as err:
        task.execute(ctx)
    assert str(err.value).startswith("rollout refused: concurrency.on_busy: endpoint local/e is busy: held by "
                                     "canary_rollout__other run manual__other (since "), str(err.value)
    assert store.get(KEY).holder == OTHER


def test_a_malformed_wait_event_fails_the_task(tmp_path, store):
    task, ctx = validate(tmp_path)
    with pytest.raises(AirflowFailException, match="malformed"):
        task.resume_after_lease_wait(ctx, {"status": "maybe"})


def test_a_dry_run_takes_no_lease_and_is_not_blocked(tmp_path, store, clock):
    store.acquire(KEY, OTHER, ttl_s=3600)
    task, ctx = validate(tmp_path, conf={"dry_run": True}, on_busy="refuse")
    assert task.execute(ctx)["dry_run"] is True
    assert store.get(KEY).holder == OTHER


def test_a_step_renews_the_lease_and_fails_if_another_rollout_took_it(tmp_path, store, clock):
    task, ctx = validate(tmp_path)
    plan = task.execute(ctx)
    ti = SimpleNamespace(xcom_pull=lambda task_ids, key="return_value": plan if task_ids == PLAN_TASK_ID else None)
    step = SetTrafficOperator(task_id="set_traffic", stage_index=0)
    clock.now += 100
    step.plan({"ti": ti})
    assert store.get(KEY).expires_at_s == clock.now + 300.0
    clock.now += 301  # expired: another rollout takes the endpoint
    store.acquire(KEY, OTHER, ttl_s=3600)
    with pytest.raises(AirflowFailException, match="lost the lease on endpoint local/e .*canary_rollout__other"):
        step.plan({"ti": ti})


def test_the_approval_timeout_matches_the_approve_task():
    from canary_airflow import factory

    assert endpoint_lock.APPROVAL_TIMEOUT_S == factory.APPROVAL_TIMEOUT_HOURS * 3600


# -- the wait trigger ---------------------------------------------------------------------------------

def wait_trigger(deadline_s: float = NOW + 60) -> EndpointLeaseTrigger:
    return EndpointLeaseTrigger(lock={"name": "local", "conn_id": "test_lock", "options": {}}, key=KEY,
                                dag_id=ME.dag_id, run_id=ME.run_id, deadline_s=deadline_s, waiting_since_s=NOW,
                                poll_interval_s=15.0)


def events(trigger) -> list[dict[str, Any]]:
    async def go():
        return [event.payload async for event in trigger.run()]

    return asyncio.run(go())


def test_wait_trigger_serialise_round_trip():
    path, kwargs = wait_trigger().serialize()
    assert path == "canary_airflow.triggers.EndpointLeaseTrigger"
    rebuilt = EndpointLeaseTrigger(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (path, kwargs)


def test_wait_trigger_fires_free_once_the_holder_released(store, clock):
    store.acquire(KEY, OTHER, ttl_s=3600)
    clock.on_sleep.append(lambda now: store.release(KEY, OTHER) if now >= NOW + 30 else None)
    (event,) = events(wait_trigger())
    assert event["status"] == "free" and event["holder"] is None
    assert (event["deadline_s"], event["waiting_since_s"]) == (NOW + 60, NOW)
    assert clock.sleeps == [15.0, 15.0]
    assert store.get(KEY) is None  # the trigger only reads: the resumed task takes the lease


def test_wait_trigger_treats_an_expired_lease_as_free(store, clock):
    store.acquire(KEY, OTHER, ttl_s=20)
    (event,) = events(wait_trigger())
    assert event["status"] == "free" and clock.sleeps == [15.0, 15.0]


def test_wait_trigger_times_out_at_the_deadline_naming_the_holder(store, clock):
    store.acquire(KEY, OTHER, ttl_s=3600)
    (event,) = events(wait_trigger(deadline_s=NOW + 40))
    assert event["status"] == "timeout"
    assert (event["holder"]["dag_id"], event["holder"]["run_id"]) == (OTHER.dag_id, OTHER.run_id)
    assert clock.sleeps == [15.0, 15.0, 10.0] and clock.now == NOW + 40


def test_wait_trigger_retries_a_failing_store_with_backoff_then_times_out(tmp_path, monkeypatch, clock):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("AIRFLOW_CONN_TEST_LOCK", json.dumps({"conn_type": "canary_lock",
                                                             "extra": {"path": str(tmp_path / "file" / "x.db")}}))
    (event,) = events(wait_trigger(deadline_s=NOW + 10))
    assert event["status"] == "timeout" and "local-lock: get lease" in event["error"]
    assert clock.sleeps[:3] == [2.0, 4.0, 4.0]


# -- the observe trigger renews the lease ------------------------------------------------------------

def observe_trigger(ttl_s: float = 300.0) -> CanaryObserveTrigger:
    spec = parse_spec(spec_data())
    watch = StageWatch(stage_index=0, stable="v1", candidate="v2", stage_started_at_s=NOW)
    return CanaryObserveTrigger(spec=spec.model_dump(mode="json", by_alias=True),
                                stage=spec.stages[0].model_dump(mode="json", by_alias=True), watch=watch.to_dict(),
                                metrics={"name": "fake", "conn_id": "fake_metrics", "options": {}},
                                lease={"lock": {"name": "local", "conn_id": "test_lock", "options": {}}, "key": KEY,
                                       "dag_id": ME.dag_id, "run_id": ME.run_id, "ttl_s": ttl_s})


def test_observe_trigger_round_trip_carries_the_lease():
    path, kwargs = observe_trigger().serialize()
    assert kwargs["lease"]["key"] == KEY
    assert CanaryObserveTrigger(**json.loads(json.dumps(kwargs))).serialize() == (path, kwargs)


def test_observe_trigger_renews_the_lease_at_every_poll(store, clock, monkeypatch):
    store.acquire(KEY, ME, ttl_s=300)
    renewals: list[float] = []
    clock.on_sleep.append(lambda now: renewals.append(store.get(KEY).expires_at_s))
    fakes.FakeMetrics.stats_fn = fakes.constant_rate_stats({"v1": (90.0, 0.01), "v2": (10.0, 0.20)})
    (event,) = events(observe_trigger())
    assert event["result"]["decision"] == "rollback"
    last = store.get(KEY)
    assert last.renewed_at_s > NOW and last.expires_at_s == last.renewed_at_s + 300.0
    assert renewals and all(r2 > r1 for r1, r2 in zip(renewals, renewals[1:], strict=False))


def test_observe_trigger_halts_when_another_rollout_took_the_lease(store, clock):
    store.acquire(KEY, OTHER, ttl_s=3600)
    fakes.FakeMetrics.stats_fn = fakes.constant_rate_stats({"v1": (90.0, 0.01), "v2": (10.0, 0.01)})
    (event,) = events(observe_trigger())
    assert event["result"]["decision"] == "halt" and event["result"]["metric"] == "lease"
    assert "canary_rollout__m run run-2 lost the lease on endpoint local/e" in event["result"]["reason"]
    assert "canary_rollout__other run manual__other" in event["result"]["reason"]


# -- finalize: release after traffic is settled; never touch traffic another rollout owns -------------

class FinalizeTI:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.pushed: dict[str, Any] = {}

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.plan if (task_ids, key) == (PLAN_TASK_ID, "return_value") else None

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def get_task_states(self, dag_id: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
        return {run_ids[0]: {"stage_1.observe": "failed"}}


def finalize(tmp_path, monkeypatch) -> tuple[dict[str, Any], Any]:
    """Run finalize after a failed observe, with 25% on the candidate; return its report and the error."""
    from canary.rollout.plan import RolloutRequest, plan_rollout
    from canary_airflow.operators import FinalizeRolloutOperator

    monkeypatch.setenv("AIRFLOW_CONN_FAKE_SERVING", json.dumps({"conn_type": "canary_serving", "host": "x"}))
    monkeypatch.setenv("CANARY_REPORTS_DIR", str(tmp_path / "reports"))
    data = spec_data()
    data["backends"]["serving"] = {"name": "fake", "conn_id": "fake_serving"}
    plan = plan_rollout(parse_spec(data), RolloutRequest.from_conf({"version": "v2"}), fakes.FakeRegistry(None),
                        run_id=ME.run_id, now_s=NOW).to_dict()
    fakes.FakeRouter.reset({"v1": 75, "v2": 25})
    ti = FinalizeTI(plan)
    ctx = {"ti": ti, "run_id": ME.run_id, "dag": SimpleNamespace(dag_id=ME.dag_id), "dag_run": None, "params": {}}
    with pytest.raises(AirflowFailException) as err:
        FinalizeRolloutOperator(task_id="finalize", stage_count=2, deferrable=False).execute(ctx)
    return ti.pushed["return_value"], err.value


def test_finalize_returns_traffic_to_stable_then_releases_the_lease(tmp_path, monkeypatch, store):
    store.acquire("fake/e", ME, ttl_s=300)
    report, err = finalize(tmp_path, monkeypatch)
    assert fakes.FakeRouter.weights == {"v1": 100}
    assert report["outcome"] == "failed" and "stage_1.observe failed" in str(err)
    assert store.get("fake/e") is None


def test_finalize_leaves_the_traffic_of_a_rollout_that_took_the_endpoint_alone(tmp_path, monkeypatch, store):
    store.acquire("fake/e", OTHER, ttl_s=3600)  # ours expired and another rollout took the endpoint
    report, err = finalize(tmp_path, monkeypatch)
    assert fakes.FakeRouter.weights == {"v1": 75, "v2": 25}  # untouched: it is the other rollout's now
    assert [c for c in fakes.FakeRouter.calls if c[0] in ("set_weights", "remove")] == []
    assert report["outcome"] == "failed"
    assert "lost the lease on endpoint fake/e" in report["reason"] and "canary_rollout__other" in report["reason"]
    assert store.get("fake/e").holder == OTHER


def test_finalize_returns_traffic_even_when_the_lock_store_is_down(tmp_path, monkeypatch, store):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("AIRFLOW_CONN_TEST_LOCK", json.dumps({"conn_type": "canary_lock",
                                                             "extra": {"path": str(tmp_path / "file" / "x.db")}}))
    report, _err = finalize(tmp_path, monkeypatch)
    assert fakes.FakeRouter.weights == {"v1": 100}
    assert report["outcome"] == "failed"
