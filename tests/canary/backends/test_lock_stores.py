"""Endpoint leases: the semantics table on both real stores (SQLite file, PostgreSQL server), fake clock only.

The PostgreSQL cases run against the server on 127.0.0.1:5432 (skipped locally when it is missing,
failing under CI=true), each in its own table that is dropped afterwards.
"""

from __future__ import annotations

import secrets
import threading

import pytest
from services import require_service

from canary.backends import build_backend
from canary.backends.base import ConnInfo, EndpointBusyError, EndpointLock, Lease, LeaseHolder, LeaseLostError
from canary.backends.sql_lock import named_to_pyformat
from canary.errors import BackendError, ConfigError
from canary.rollout.lease import blocking_lease, endpoint_lease_key

PG = ConnInfo(conn_id="pg", host="127.0.0.1", port=5432, login="postgres", schema="test")
A = LeaseHolder(dag_id="canary_rollout__model-a", run_id="manual__1")
B = LeaseHolder(dag_id="canary_rollout__model-b", run_id="manual__2")
KEY = endpoint_lease_key("local", "api")
TTL = 600.0


class Clock:
    def __init__(self, now_s: float = 1_000_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def postgres_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect(host=PG.host, port=PG.port, user=PG.login, dbname=PG.schema, connect_timeout=3).close()
        return True
    except Exception:
        return False


@pytest.fixture(params=["local", "postgres"])
def store(request, tmp_path):
    """Yield ``(make_lock, clock)``: ``make_lock()`` builds another client of the same real store."""
    clock = Clock()
    if request.param == "local":
        conn = ConnInfo(conn_id="lock", extra={"path": str(tmp_path / "locks.db")})
        yield (lambda: build_backend("lock", "local", conn, clock=clock)), clock
        return
    require_service(postgres_available(), "PostgreSQL not reachable on 127.0.0.1:5432 (user postgres, db test)")
    table = f"canary_leases_test_{secrets.token_hex(4)}"
    yield (lambda: build_backend("lock", "postgres", PG, table=table, clock=clock)), clock
    import psycopg2

    with psycopg2.connect(host=PG.host, port=PG.port, user=PG.login, dbname=PG.schema) as conn, \
            conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")


def test_the_stores_implement_the_protocol(store):
    make, _ = store
    assert isinstance(make(), EndpointLock)


def test_acquire_a_free_endpoint_then_the_other_holder_is_refused_naming_the_holder(store):
    make, clock = store
    lock = make()
    lease = lock.acquire(KEY, A, ttl_s=TTL)
    assert (lease.key, lease.holder, lease.acquired_at_s, lease.expires_at_s) == (KEY, A, clock.now_s,
                                                                                  clock.now_s + TTL)
    clock.now_s += 10
    with pytest.raises(EndpointBusyError) as busy:
        make().acquire(KEY, B, ttl_s=TTL)
    assert busy.value.lease == lease
    assert "canary_rollout__model-a run manual__1" in str(busy.value) and "local/api is busy" in str(busy.value)
    assert lock.get(KEY) == lease


def test_acquire_is_reentrant_for_the_holder_and_keeps_the_start_time(store):
    make, clock = store
    first = make().acquire(KEY, A, ttl_s=TTL)
    clock.now_s += 30
    again = make().acquire(KEY, A, ttl_s=TTL)
    assert again.acquired_at_s == first.acquired_at_s
    assert again.renewed_at_s == clock.now_s and again.expires_at_s == clock.now_s + TTL


def test_renew_extends_the_lease(store):
    make, clock = store
    lock = make()
    lock.acquire(KEY, A, ttl_s=TTL)
    clock.now_s += TTL - 1
    renewed = lock.renew(KEY, A, ttl_s=2 * TTL)
    assert renewed.expires_at_s == clock.now_s + 2 * TTL
    clock.now_s += TTL  # past the first expiry, within the renewed one
    with pytest.raises(EndpointBusyError):
        lock.acquire(KEY, B, ttl_s=TTL)


def test_an_expired_lease_is_taken_by_the_next_rollout_and_the_old_holder_has_lost_it(store):
    make, clock = store
    lock = make()
    lock.acquire(KEY, A, ttl_s=TTL)
    clock.now_s += TTL  # expires_at is exclusive: expired now
    taken = lock.acquire(KEY, B, ttl_s=TTL)
    assert taken.holder == B and taken.acquired_at_s == clock.now_s
    with pytest.raises(LeaseLostError) as lost:
        lock.renew(KEY, A, ttl_s=TTL)
    assert lost.value.current == taken and "now held by canary_rollout__model-b run manual__2" in str(lost.value)
    assert lock.release(KEY, A) is False  # not the holder: nothing changes
    assert lock.get(KEY) == taken


def test_renew_retakes_an_expired_or_broken_lease_nobody_else_took(store):
    make, clock = store
    lock = make()
    lock.acquire(KEY, A, ttl_s=TTL)
    clock.now_s += TTL + 5
    assert lock.renew(KEY, A, ttl_s=TTL).holder == A
    assert lock.break_lease(KEY).holder == A
    assert lock.renew(KEY, A, ttl_s=TTL).expires_at_s == clock.now_s + TTL


def test_release_only_by_the_holder_and_idempotent(store):
    make, _ = store
    lock = make()
    lock.acquire(KEY, A, ttl_s=TTL)
    assert lock.release(KEY, B) is False and lock.get(KEY) is not None
    assert lock.release(KEY, A) is True and lock.get(KEY) is None
    assert lock.release(KEY, A) is False
    assert make().acquire(KEY, B, ttl_s=TTL).holder == B


def test_keys_are_independent_and_listed(store):
    make, clock = store
    lock = make()
    other = endpoint_lease_key("local", "churn")
    lock.acquire(KEY, A, ttl_s=TTL)
    lock.acquire(other, B, ttl_s=TTL)
    assert [(lease.key, lease.holder) for lease in lock.list_leases()] == [(KEY, A), (other, B)]
    assert lock.break_lease("local/none") is None


def test_blocking_lease_ignores_expired_and_own_leases(store):
    make, clock = store
    lock = make()
    assert blocking_lease(lock, KEY, B, clock.now_s) is None
    lease = lock.acquire(KEY, A, ttl_s=TTL)
    assert blocking_lease(lock, KEY, B, clock.now_s) == lease
    assert blocking_lease(lock, KEY, A, clock.now_s) is None
    assert blocking_lease(lock, KEY, B, clock.now_s + TTL) is None


def test_racing_acquirers_of_a_free_endpoint_exactly_one_wins(store):
    make, _ = store
    holders = [LeaseHolder(dag_id=f"canary_rollout__m{i}", run_id="r") for i in range(8)]
    winners, busy, errors = [], [], []
    barrier = threading.Barrier(len(holders))

    def race(holder: LeaseHolder) -> None:
        lock = make()
        barrier.wait()
        try:
            winners.append(lock.acquire(KEY, holder, ttl_s=TTL).holder)
        except EndpointBusyError as err:
            busy.append(err.lease.holder)
        except Exception as err:  # surfaced below: a store error must fail the test, not hide
            errors.append(err)

    threads = [threading.Thread(target=race, args=(h,)) for h in holders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(winners) == 1 and len(busy) == len(holders) - 1
    assert set(busy) == set(winners)  # every loser was told who won
    assert make().get(KEY).holder == winners[0]


def test_lease_round_trips_as_a_dict():
    lease = Lease(key=KEY, holder=A, acquired_at_s=1.0, renewed_at_s=2.0, expires_at_s=3.0)
    assert Lease.from_dict(lease.to_dict()) == lease


def test_unknown_lock_backend_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown lock backend 'redis'; known: local, postgres"):
        build_backend("lock", "redis", ConnInfo())


def test_local_store_defaults_to_airflow_home(monkeypatch, tmp_path):
    monkeypatch.delenv("CANARY_LOCK_PATH", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    lock = build_backend("lock", "local", ConnInfo(conn_id="canary_lock_default"))
    assert lock.path == tmp_path / "home" / "canary_locks.db"
    monkeypatch.setenv("CANARY_LOCK_PATH", str(tmp_path / "elsewhere.db"))
    assert build_backend("lock", "local", ConnInfo()).path == tmp_path / "elsewhere.db"


def test_local_store_error_names_the_file(tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    lock = build_backend("lock", "local", ConnInfo(extra={"path": str(tmp_path / "not-a-dir" / "locks.db")}))
    with pytest.raises(BackendError, match=r"local-lock: get lease 'local/api' in .*not-a-dir/locks.db"):
        lock.get(KEY)


def test_postgres_store_unreachable_is_a_backend_error_naming_the_server():
    lock = build_backend("lock", "postgres", ConnInfo(conn_id="pg", host="127.0.0.1", port=9, login="x"),
                         connect_timeout_s=2)
    with pytest.raises(BackendError, match=r"postgres-lock: acquire lease 'local/api' in postgres 127.0.0.1:9/"):
        lock.acquire(KEY, A, ttl_s=TTL)


def test_postgres_store_needs_a_host_and_a_plain_table_name():
    with pytest.raises(ConfigError, match="needs a host"):
        build_backend("lock", "postgres", ConnInfo(conn_id="pg"))
    with pytest.raises(ConfigError, match="table"):
        build_backend("lock", "postgres", PG, table="leases; DROP TABLE x")


def test_named_parameters_become_pyformat_but_casts_stay():
    assert named_to_pyformat("a = :key AND b::text = :run_id") == "a = %(key)s AND b::text = %(run_id)s"
