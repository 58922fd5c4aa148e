"""The rollout history store on SQLite and on PostgreSQL: round trips, idempotent looks, listing.

PostgreSQL is the server on 127.0.0.1:5432 (user postgres, trust auth) with a database of its own,
``canary_history_test``, created here; its tables are dropped before each test.
"""

from __future__ import annotations

import threading

import pytest
from services import require_service

from canary.errors import BackendError, ConfigError
from canary.history import Look, RolloutEvent, RolloutHistory, RolloutRecord, StartedBy, open_history

PG_DB = "canary_history_test"
PG_URL = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{PG_DB}"


def postgres_database() -> bool:
    """Create the test database if needed; return False when the server is not reachable."""
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3)
    except Exception:
        return False
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,))
        if cur.fetchone() is None:
            cur.execute(f"CREATE DATABASE {PG_DB}")
    conn.close()
    return True


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    require_service(postgres_database(), "PostgreSQL not reachable on 127.0.0.1:5432 (user postgres, db test)")
    from canary.history.sql import _engine, metadata

    metadata.drop_all(_engine(PG_URL))  # a clean store for each test
    return PG_URL


@pytest.fixture
def history(url) -> RolloutHistory:
    return open_history(url)


def rollout(run_id: str = "run_1", *, dag_id: str = "canary_rollout__m", model: str = "m",
            started_at_s: float = 1000.0) -> RolloutRecord:
    return RolloutRecord(dag_id=dag_id, run_id=run_id, model=model, endpoint="e", candidate="v2", stable="v1",
                         started_by=StartedBy.API, started_by_detail="user admin", reason="weekly retrain",
                         started_at_s=started_at_s, stages_planned=(10, 50, 100),
                         spec={"model": model, "stages": [{"weight": 10}], "analysis": {"alpha": 0.05}})


def look(at_s: float, *, stage_index: int = 0, run_id: str = "run_1", decision: str = "continue") -> Look:
    return Look(dag_id="canary_rollout__m", run_id=run_id, stage_index=stage_index, look_at_s=at_s, weight_pct=10,
                decision=decision, reason="observing: error_rate", elapsed_s=at_s - 1000.0, eta_s=120.5,
                evidence={"canary_requests": 97, "stable_requests": 880,
                          "metrics": [{"metric": "error_rate", "evidence": {"e_value": 3.1, "threshold": 200.0}}]})


def test_the_store_implements_the_protocol(history):
    assert isinstance(history, RolloutHistory)


def test_a_rollout_round_trips_from_start_to_finish(history):
    record = rollout()
    history.start(record)
    assert history.rollout("canary_rollout__m", "run_1") == record
    assert history.rollout("canary_rollout__m", "run_1").running
    history.finish("canary_rollout__m", "run_1", outcome="rolled_back", reason="error_rate: e-value 881 >= 200",
                   finished_at_s=1300.0, stages_reached=2, report_location="/reports/m/run_1.json")
    done = history.rollout("canary_rollout__m", "run_1")
    assert (done.outcome, done.outcome_reason, done.finished_at_s, done.stages_reached, done.report_location) == (
        "rolled_back", "error_rate: e-value 881 >= 200", 1300.0, 2, "/reports/m/run_1.json")
    assert done.spec == record.spec and done.stages_planned == (10, 50, 100) and not done.running
    assert history.rollout("canary_rollout__m", "other") is None


def test_a_retried_start_replaces_the_record(history):
    history.start(rollout())
    history.start(rollout(started_at_s=1005.0))
    assert [r.started_at_s for r in history.rollouts()] == [1005.0]


def test_finishing_a_run_that_never_started_names_it(history):
    with pytest.raises(KeyError, match="canary_rollout__m/ghost"):
        history.finish("canary_rollout__m", "ghost", outcome="failed", reason="x", finished_at_s=1.0,
                       stages_reached=0)


def test_looks_round_trip_in_time_order(history):
    for at in (1010.0, 1000.0, 1005.0):
        assert history.add_look(look(at)) is True
    looks = history.looks("canary_rollout__m", "run_1")
    assert [lk.look_at_s for lk in looks] == [1000.0, 1005.0, 1010.0]
    assert looks[0] == look(1000.0)


def test_a_retried_poll_records_its_look_once(history):
    assert history.add_look(look(1000.0)) is True
    assert history.add_look(look(1000.0)) is False  # the same poll again (a retried try, a second trigger)
    assert history.add_look(look(1000.0002)) is False  # the same look time, to the millisecond
    assert history.add_look(look(1000.0, stage_index=1)) is True  # another stage's look at that time is its own
    assert history.add_look(look(1000.0, decision="rollback")) is False  # the first record of a look stays
    looks = history.looks("canary_rollout__m", "run_1")
    assert [(lk.stage_index, lk.decision) for lk in looks] == [(0, "continue"), (1, "continue")]


def test_two_threads_recording_the_same_look_at_once_record_it_once(url):
    stores = [open_history(url), open_history(url)]
    stores[0].add_look(look(999.0))  # the schema exists: the race is on the row, not the tables
    barrier = threading.Barrier(2)
    results: list[bool] = []

    def poll(store: RolloutHistory) -> None:
        barrier.wait()
        results.append(store.add_look(look(1000.0)))

    threads = [threading.Thread(target=poll, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]
    assert [lk.look_at_s for lk in stores[0].looks("canary_rollout__m", "run_1")] == [999.0, 1000.0]


def test_a_restarted_trigger_adds_its_new_looks_and_loses_none(history):
    first = [look(1000.0 + 5 * i) for i in range(4)]
    for lk in first:
        history.add_look(lk)
    restarted = [look(1012.5 + 5 * i) for i in range(3)]  # overlaps the first copy's last looks in time
    for lk in [*first[-2:], *restarted]:
        history.add_look(lk)
    assert [lk.look_at_s for lk in history.looks("canary_rollout__m", "run_1")] == [
        1000.0, 1005.0, 1010.0, 1012.5, 1015.0, 1017.5, 1022.5]


def test_events_replace_by_kind_and_key_and_come_in_time_order(history):
    history.add_event(RolloutEvent(dag_id="canary_rollout__m", run_id="run_1", at_s=1010.0, kind="gate",
                                   key="stage_1", data={"action": "next_stage"}))
    history.add_event(RolloutEvent(dag_id="canary_rollout__m", run_id="run_1", at_s=1000.0, kind="traffic",
                                   key="stage_1", data={"weights": {"v1": 90, "v2": 10}}))
    history.add_event(RolloutEvent(dag_id="canary_rollout__m", run_id="run_1", at_s=1011.0, kind="gate",
                                   key="stage_1", data={"action": "rollback"}))  # the gate's retry
    events = history.events("canary_rollout__m", "run_1")
    assert [(e.kind, e.key, e.at_s, dict(e.data)) for e in events] == [
        ("traffic", "stage_1", 1000.0, {"weights": {"v1": 90, "v2": 10}}),
        ("gate", "stage_1", 1011.0, {"action": "rollback"})]


def test_reports_are_kept_per_kind_and_replaced(history):
    history.put_report("canary_rollout__m", "run_1", "md", "# first")
    history.put_report("canary_rollout__m", "run_1", "md", "# second")
    history.put_report("canary_rollout__m", "run_1", "json", "{}")
    assert history.report("canary_rollout__m", "run_1", "md") == "# second"
    assert history.report("canary_rollout__m", "run_1", "html") is None
    with pytest.raises(ValueError, match="report kind 'pdf'"):
        history.put_report("canary_rollout__m", "run_1", "pdf", "x")


def test_rollouts_are_listed_newest_first_and_filtered(history):
    history.start(rollout("a", model="m", started_at_s=1000.0))
    history.start(rollout("b", model="n", dag_id="canary_rollout__n", started_at_s=3000.0))
    history.start(rollout("c", model="m", started_at_s=2000.0))
    history.finish("canary_rollout__m", "a", outcome="promoted", reason="ok", finished_at_s=1500.0, stages_reached=3)
    assert [r.run_id for r in history.rollouts()] == ["b", "c", "a"]
    assert [r.run_id for r in history.rollouts(model="m")] == ["c", "a"]
    assert [r.run_id for r in history.rollouts(outcome="promoted")] == ["a"]
    assert [r.run_id for r in history.rollouts(outcome="running")] == ["b", "c"]
    assert [r.run_id for r in history.rollouts(model="m", outcome="running")] == ["c"]
    assert [r.run_id for r in history.rollouts(limit=2)] == ["b", "c"]
    assert history.rollouts(model="nobody") == []


def test_a_run_id_is_found_across_dags(history):
    history.start(rollout("same", dag_id="canary_rollout__m", started_at_s=1000.0))
    history.start(rollout("same", dag_id="canary_rollout__n", model="n", started_at_s=2000.0))
    assert [r.dag_id for r in history.find_run("same")] == ["canary_rollout__n", "canary_rollout__m"]


def test_a_store_whose_folder_cannot_be_made_is_a_config_error_naming_the_url(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="fix CANARY_HISTORY_URL"):
        open_history(f"sqlite:///{tmp_path / 'file' / 'history.db'}")


def test_a_store_that_cannot_be_written_is_a_backend_error_naming_the_run():
    store = open_history("sqlite:////proc/history.db")  # the folder exists, the file cannot be created
    with pytest.raises(BackendError, match="could not record a look of run 'run_1'"):
        store.add_look(look(1000.0))
