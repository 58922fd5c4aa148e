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


# -- the evidence journal: every poll is a look in the rollout history ---------------------------------

def journal_trigger(**kwargs) -> CanaryObserveTrigger:
    base = make_trigger()
    _, data = base.serialize()
    return CanaryObserveTrigger(**{**data, "dag_id": "canary_m", "run_id": "run_1", **kwargs})


def recorded_looks():
    from canary_airflow.history import rollout_history

    return rollout_history().looks("canary_m", "run_1")


def test_a_trigger_stored_before_the_history_existed_still_deserialises():
    _, data = make_trigger().serialize()
    old = {k: v for k, v in data.items() if k not in ("dag_id", "run_id")}  # the kwargs earlier releases stored
    rebuilt = CanaryObserveTrigger(**old)
    assert rebuilt.dag_id is None and rebuilt.run_id is None
    path, kwargs = journal_trigger().serialize()
    assert (kwargs["dag_id"], kwargs["run_id"]) == ("canary_m", "run_1")
    assert CanaryObserveTrigger(**json.loads(json.dumps(kwargs))).serialize() == (path, kwargs)


def test_every_poll_is_recorded_once_with_its_time_evidence_and_eta(monkeypatch):
    clock = Clock(monkeypatch, start_s=1000.0)
    fakes.FakeMetrics.stats_fn = fakes.constant_rate_stats({"v1": (90.0, 0.01), "v2": (10.0, 0.20)})
    payload = first_event(journal_trigger())
    looks = recorded_looks()
    assert len(looks) == payload["polls"] >= 2
    assert [lk.look_at_s for lk in looks] == [1000.0 + 5.0 * i for i in range(len(looks))]
    assert looks[-1].look_at_s == clock.now
    last = looks[-1]
    assert (last.decision, last.metric) == ("rollback", "guardrail.max_error_rate")
    assert last.weight_pct == 10 and last.eta_s == 0.0 and last.evidence["canary_requests"] > 0
    assert last.observed_weight_pct == pytest.approx(10.0, abs=2.0)
    assert all(lk.stage_index == 0 and lk.elapsed_s == lk.look_at_s - 1000.0 for lk in looks)


def test_a_retried_or_duplicated_trigger_records_each_look_once_and_a_restart_loses_none(monkeypatch):
    fakes.FakeMetrics.stats_fn = fakes.constant_rate_stats({"v1": (90.0, 0.01), "v2": (10.0, 0.01)})
    Clock(monkeypatch, start_s=1000.0)
    first = first_event(journal_trigger())
    once = recorded_looks()
    assert len(once) == first["polls"]
    Clock(monkeypatch, start_s=1000.0)  # the same trigger again (a retried try, a second triggerer): same looks
    first_event(journal_trigger())
    assert recorded_looks() == once
    Clock(monkeypatch, start_s=1002.5)  # restarted later: its looks fall between the first ones, all are kept
    again = first_event(journal_trigger())
    looks = recorded_looks()
    assert len(looks) == len(once) + again["polls"]
    assert {lk.look_at_s for lk in once} <= {lk.look_at_s for lk in looks}


def test_a_failing_history_never_changes_the_event(monkeypatch, capsys):
    fakes.FakeMetrics.stats_fn = fakes.constant_rate_stats({"v1": (90.0, 0.01), "v2": (10.0, 0.20)})
    Clock(monkeypatch, start_s=1000.0)
    without = first_event(make_trigger())
    monkeypatch.setenv("CANARY_HISTORY_URL", "sqlite:////proc/no/such/dir/history.db")  # cannot be written
    Clock(monkeypatch, start_s=1000.0)
    broken = first_event(journal_trigger())
    assert broken == without
    assert "rollout history: could not record look" in capsys.readouterr().out


def test_the_log_has_one_line_per_look_in_one_group_per_stage(monkeypatch, capsys):
    Clock(monkeypatch, start_s=1000.0)
    fakes.FakeMetrics.stats_fn = fakes.constant_rate_stats({"v1": (90.0, 0.01), "v2": (10.0, 0.01)})
    capsys.readouterr()
    payload = first_event(journal_trigger())
    out = capsys.readouterr().out.splitlines()
    groups = [i for i, line in enumerate(out) if "::group::stage 1 at 10% canary: looks" in line]
    ends = [i for i, line in enumerate(out) if "::endgroup::" in line]
    looks = [line for line in out if " stage 1 (10%) at " in line]
    assert len(groups) == 1 and len(ends) == 1 and groups[0] < ends[0]
    assert len(looks) == payload["polls"]
    assert all(groups[0] < out.index(line) < ends[0] for line in looks)
    last = looks[-1]
    assert "canary 600 req" in last and "error_rate CONTINUE e " in last and "ETA" not in last
    assert "TIMEOUT: undecided" in last and " | ETA 5s | " in looks[-2]


def test_a_look_that_cannot_be_described_never_changes_the_event(monkeypatch, capsys):
    fakes.FakeMetrics.stats_fn = fakes.constant_rate_stats({"v1": (90.0, 0.01), "v2": (10.0, 0.20)})
    Clock(monkeypatch, start_s=1000.0)
    expected = first_event(make_trigger())

    def broken(*args, **kwargs):
        raise ZeroDivisionError("an estimate that went wrong")

    import canary.rollout.observe

    monkeypatch.setattr(canary.rollout.observe, "look_of_poll", broken)
    Clock(monkeypatch, start_s=1000.0)
    assert first_event(journal_trigger()) == expected
    assert "could not describe look" in capsys.readouterr().out
    assert recorded_looks() == []
