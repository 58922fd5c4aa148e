"""``canary lock list|release`` against the real stores (a SQLite file; PostgreSQL on 127.0.0.1:5432)."""

from __future__ import annotations

import json
import secrets
import time

from services import require_service

from canary.backends import build_backend
from canary.backends.base import ConnInfo, LeaseHolder
from canary.cli import main
from canary.cli.lock import conn_from_env, conn_from_uri

A = LeaseHolder(dag_id="canary_rollout__a", run_id="manual__1")
B = LeaseHolder(dag_id="canary_rollout__b", run_id="manual__2")


def test_list_and_release_on_the_local_store(tmp_path, capsys):
    path = tmp_path / "locks.db"
    store = build_backend("lock", "local", ConnInfo(), path=path)
    store.acquire("local/api", A, ttl_s=3600)
    store.acquire("local/churn", B, ttl_s=1)
    time.sleep(1.1)  # local/churn's lease is expired now
    assert main(["lock", "list", "--path", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("local/api: active, held by canary_rollout__a run manual__1 (since ")
    assert lines[1].startswith("local/churn: EXPIRED, held by canary_rollout__b run manual__2")
    assert main(["lock", "list", "--json", "--path", str(path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(x["key"], x["expired"]) for x in listed] == [("local/api", False), ("local/churn", True)]

    assert main(["lock", "release", "--endpoint", "api", "--path", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("released local/api: active, held by canary_rollout__a run manual__1")
    assert "that lease was active" in out.err
    assert store.get("local/api") is None and store.get("local/churn") is not None
    assert main(["lock", "release", "--endpoint", "api", "--path", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "no lease on local/api"


def test_local_store_from_the_connection_or_the_default(tmp_path, monkeypatch, capsys):
    path = tmp_path / "conn.db"
    build_backend("lock", "local", ConnInfo(), path=path).acquire("sagemaker/fraud", A, ttl_s=60)
    monkeypatch.setenv("AIRFLOW_CONN_CANARY_LOCK_DEFAULT", json.dumps({"conn_type": "canary_lock",
                                                                       "extra": {"path": str(path)}}))
    assert main(["lock", "list"]) == 0
    assert capsys.readouterr().out.startswith("sagemaker/fraud: active")
    monkeypatch.delenv("AIRFLOW_CONN_CANARY_LOCK_DEFAULT")
    monkeypatch.setenv("CANARY_LOCK_PATH", str(tmp_path / "empty.db"))
    assert main(["lock", "list"]) == 0
    assert capsys.readouterr().out.strip() == "no endpoint leases"


def test_postgres_without_a_connection_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("AIRFLOW_CONN_CANARY_LOCK_DEFAULT", raising=False)
    assert main(["lock", "list", "--backend", "postgres"]) == 2
    assert "set AIRFLOW_CONN_CANARY_LOCK_DEFAULT (JSON or URI) or pass --dsn" in capsys.readouterr().err


def test_connection_uri_and_json_are_parsed_like_airflow(monkeypatch):
    conn = conn_from_uri("x", "postgresql://svc%40corp:p%2Fw@db.internal:6432/leases?sslmode=require")
    assert (conn.host, conn.port, conn.login, conn.password, conn.schema) == ("db.internal", 6432, "svc@corp",
                                                                             "p/w", "leases")
    assert conn.extra == {"sslmode": "require"}
    monkeypatch.setenv("AIRFLOW_CONN_MY_LOCK", json.dumps({"conn_type": "postgres", "host": "h", "port": 5432,
                                                           "login": "u", "extra": json.dumps({"sslmode": "disable"})}))
    env = conn_from_env("my_lock")
    assert (env.host, env.port, env.login, env.extra) == ("h", 5432, "u", {"sslmode": "disable"})


def test_list_and_release_on_postgres(capsys):
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3).close()
        up = True
    except psycopg2.Error:
        up = False
    require_service(up, "PostgreSQL not reachable on 127.0.0.1:5432 (user postgres, db test)")
    dsn = "postgresql://postgres@127.0.0.1:5432/test"
    store = build_backend("lock", "postgres", conn_from_uri("t", dsn))  # the default table, as rollouts use it
    key = f"local/cli-test-{secrets.token_hex(4)}"
    try:
        store.acquire(key, A, ttl_s=600)
        assert main(["lock", "list", "--backend", "postgres", "--dsn", dsn]) == 0
        assert f"{key}: active, held by canary_rollout__a run manual__1" in capsys.readouterr().out
        assert main(["lock", "release", "--backend", "postgres", "--dsn", dsn, "--endpoint", key.split("/")[1]]) == 0
        assert capsys.readouterr().out.startswith(f"released {key}: active")
        assert store.get(key) is None
    finally:
        store.break_lease(key)
