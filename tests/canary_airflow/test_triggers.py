from __future__ import annotations

import asyncio
import json

import fakes  # tests/ is on sys.path (rootdir conftest)
import pytest
from clock import PatchedClock

from canary.rollout.observe import StageWatch
from canary.spec.model import parse_spec
from canary_airflow import triggers
from canary_airflow.triggers import CanaryObserveTrigger

with fakes.installed():
    SPEC = parse_spec({
        "model": "m", "endpoint": "e",
        "backends": {"metrics": {"name": "fake", "conn_id": "fake_metrics"}},
        "stages": [{"weight": 10, "min_duration": "20s", "max_duration": "60s", "min_requests": 100},
                   {"weight": 100, "min_duration": "10s", "max_duration": "30s", "min_requests": 10}],
        "analysis": {"poll_interval": "5s", "guardrails": {"max_error_rate": 0.05, "min_requests": 50}},
    })


@pytest.fixture(autouse=True)
def fake_backends(monkeypatch):
    fakes.install(monkeypatch)
    monkeypatch.setenv("AIRFLOW_CONN_FAKE_METRICS", json.dumps({"conn_type": "canary_metrics", "host": "x"}))
    fakes.FakeMetrics.stats_fn = None
    fakes.FakeMetrics.calls = []


Clock = PatchedClock


def make_trigger(stage_index: int = 0, started: float = 1000.0, carry=None) -> CanaryObserveTrigger:
    stage = SPEC.stages[stage_index]
    watch = StageWatch(stage_index=stage_index, stable="v1", candidate="v2", stage_started_at_s=started,
                       carry_state=carry)
    return CanaryObserveTrigger(spec=SPEC.model_dump(mode="json", by_alias=True),
                                stage=stage.model_dump(mode="json", by_alias=True), watch=watch.to_dict(),
                                metrics={"name": "fake", "conn_id": "fake_metrics", "options": {}})


def first_event(trigger: CanaryObserveTrigger) -> dict:
    async def go():
        async for event in trigger.run():
            return event.payload
        raise AssertionError("trigger ended without an event")

    return asyncio.run(go())


def test_serialize_round_trip_is_json_and_rebuilds_the_same_trigger():
    trigger = make_trigger(carry={"log_e": [0.5]})
    path, kwargs = trigger.serialize()
    assert path == "canary_airflow.triggers.CanaryObserveTrigger"
    rebuilt = CanaryObserveTrigger(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (path, kwargs)


def test_rolls_back_a_bad_canary_via_the_guardrail(monkeypatch):
    clock = Clock(monkeypatch, start_s=1000.0)
    fakes.FakeMetrics.stats_fn = fakes.constant_rate_stats({"v1": (90.0, 0.01), "v2": (10.0, 0.20)})
    payload = first_event(make_trigger())
    assert payload["result"]["decision"] == "rollback"
    assert payload["result"]["metric"] == "guardrail.max_error_rate"
    assert payload["polls"] >= 1 and all(s == 5.0 for s in clock.sleeps)


def test_no_data_halts_after_min_duration_and_never_advances(monkeypatch):
    clock = Clock(monkeypatch, start_s=1000.0)
    payload = first_event(make_trigger())
    assert payload["result"]["decision"] == "halt"
    assert "no metrics data" in payload["result"]["reason"]
    assert clock.now - 1000.0 >= SPEC.stages[0].min_duration_s


def test_bake_stage_advances_after_min_duration(monkeypatch):
    Clock(monkeypatch, start_s=1000.0)
    fakes.FakeMetrics.stats_fn = fakes.constant_rate_stats({"v1": (0.0, 0.0), "v2": (100.0, 0.0)})
    payload = first_event(make_trigger(stage_index=1))
    assert payload["result"]["decision"] == "advance"
    assert payload["result"]["evidence"]["elapsed_s"] >= 10


def test_backend_errors_are_retried_with_sleeps_then_halt(monkeypatch):
    clock = Clock(monkeypatch, start_s=1000.0)
    from canary.errors import BackendError

    def broken(version, start_s, end_s):
        raise BackendError("fake", "connection refused")

    fakes.FakeMetrics.stats_fn = broken
    payload = first_event(make_trigger())
    assert payload["result"]["decision"] == "halt"
    assert "connection refused" in payload["result"]["reason"]
    assert len(clock.sleeps) == triggers.MAX_CONSECUTIVE_BACKEND_ERRORS - 1
    assert all(s > 0 for s in clock.sleeps)


def test_same_inputs_same_decision_whatever_the_poll_cadence(monkeypatch):
    """A restarted trigger (fresh instance, same kwargs) decides the same at the same time."""
    fakes.FakeMetrics.stats_fn = fakes.constant_rate_stats({"v1": (90.0, 0.01), "v2": (10.0, 0.01)})
    Clock(monkeypatch, start_s=1000.0)
    a = first_event(make_trigger())
    Clock(monkeypatch, start_s=1000.0)
    b = first_event(make_trigger())
    assert a["result"]["decision"] == b["result"]["decision"]
    assert a["result"]["reason"] == b["result"]["reason"]
