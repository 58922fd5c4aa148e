"""The distributed setup, natively: the rollout DAGs on the CeleryExecutor with PostgreSQL and Redis.

What ``docker-compose.yaml`` with ``docker-compose.celery.yaml`` runs as containers, run as separate
processes on this machine: a fresh PostgreSQL database (Airflow's metadata DB, Celery's result backend
and the ``postgres`` endpoint-lock store), a Redis database index as the Celery broker, and
``airflow api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and ``airflow celery worker``
(concurrency 2) with a temporary ``AIRFLOW_HOME``, plus the embedded stack. The worker alone reports a
marker hostname (``[core] hostname_callable``), so a task instance carrying it ran there.

Two models share endpoint ``dist``: ``dist-a`` rolls out a good candidate (promoted) and ``dist-b``,
started while ``dist-a`` holds the endpoint, waits for the lease in PostgreSQL, then rolls out a
faulty one (rolled back at its first stage). Everything is stopped, the database dropped and the
Redis index flushed at teardown.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import requests
import yaml
from fast_spec import fast_spec
from services import require_service

from canary.airflow_api import AirflowClient
from canary.backends.base import ConnInfo
from canary.devstack.demo import LocalStack, local_stack
from canary.devstack.processes import Processes, free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
ENDPOINT = "dist"
FIRST, SECOND = "dist-a", "dist-b"
#: dist-a: v1 stable, v2 good. dist-b's champion is v2 (what dist-a promotes), its candidate v4 fails 30%.
FAULTS = {"v1": "error_rate=0.01", "v2": "error_rate=0.01", "v4": "error_rate=0.3"}
LOCK_CONN_ID = "canary_lock_dist"
LEASE_TABLE = "canary_endpoint_leases"
STARTUP_TIMEOUT_S = 180.0
RUN_TIMEOUT_S = 240.0
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer", "celery-worker")


def dag(model: str) -> str:
    return f"canary_rollout__{model}"


def postgres_up() -> bool:
    try:
        import psycopg2

        psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3).close()
        return True
    except Exception:
        return False


def redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=3).ping())
    except Exception:
        return False


def pg_query(dbname: str, sql: str, params: tuple = ()) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5)
    try:
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def free_redis_db() -> int:
    """Return an empty Redis database index other than 0 (the one other users of the server take)."""
    import redis

    indexes = list(range(1, 16))
    secrets.SystemRandom().shuffle(indexes)
    for index in indexes:
        if redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index, socket_timeout=3).dbsize() == 0:
            return index
    raise RuntimeError(f"no empty Redis database among 1-15 on {REDIS_HOST}:{REDIS_PORT}")


def wait_for(what: str, check, *, timeout_s: float, procs: dict | None = None, interval_s: float = 0.5):
    """Poll ``check`` until it returns something truthy; fail at once if a component exited."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for name, (proc, log_file) in (procs or {}).items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited ({proc.returncode}) while waiting for {what}:\n"
                                   + log_file.read_text()[-3000:])
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def stack_registry(stack: LocalStack):
    from canary.backends.local_registry import LocalModelRegistry

    return LocalModelRegistry(ConnInfo(conn_id="t", extra={"path": str(stack.registry_file)}))


def when(ti: dict, field_name: str) -> float:
    return datetime.fromisoformat(ti[field_name].replace("Z", "+00:00")).timestamp()


@dataclass
class Cluster:
    """A running distributed Airflow, the stack behind it and where to look."""

    url: str
    client: AirflowClient
    stack: LocalStack
    database: str
    redis_db: int
    worker_hostname: str
    logs: dict[str, Path]
    local_lock_path: Path
    components: dict = field(default_factory=dict)

    def registry(self):
        return stack_registry(self.stack)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.client.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                                   params={"limit": 100})["task_instances"]

    def wait_run(self, dag_id: str, run_id: str) -> str:
        def finished():
            state = self.client.dag_run(dag_id, run_id)["state"]
            return state if state in ("success", "failed") else None

        return wait_for(f"{dag_id} {run_id} to finish (logs: {self.logs['scheduler'].parent})", finished,
                        timeout_s=RUN_TIMEOUT_S, procs=self.components)

    def leases(self) -> list[tuple]:
        return pg_query(self.database, f"SELECT lease_key, dag_id, run_id FROM {LEASE_TABLE}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    require_service(postgres_up(), f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT} (user {PG_USER})")
    require_service(redis_up(), f"Redis not reachable on {REDIS_HOST}:{REDIS_PORT}")
    import redis

    root = tmp_path_factory.mktemp("distributed")
    database = f"canary_dist_{secrets.token_hex(4)}"
    redis_db = free_redis_db()
    dsn = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"
    pg_admin(f"CREATE DATABASE {database}")
    procs = Processes()
    try:
        specs, dags_dir, home, logs_dir, site = (root / d for d in ("specs", "dags", "airflow", "logs", "site"))
        for d in (specs, dags_dir, home, logs_dir, site):
            d.mkdir()
        lock = {"name": "postgres", "conn_id": LOCK_CONN_ID}
        wait = {"on_busy": "wait", "max_wait": "5m", "poll_interval": "1s"}
        for model in (FIRST, SECOND):
            spec = fast_spec(model, ENDPOINT, owner="dist-tests", shadow={"enabled": False},
                             backends={"lock": lock}, concurrency=wait)
            (specs / f"{model}.yaml").write_text(yaml.safe_dump(spec))
        # Only the rollout DAG file (the repository's own), so only its DAGs start unpaused.
        (dags_dir / "canary_rollouts.py").write_text((ROOT / "dags" / "canary_rollouts.py").read_text())
        worker_hostname = f"canary-celery-worker-{secrets.token_hex(3)}"
        (site / "canary_dist_worker_host.py").write_text(
            f"def hostname() -> str:\n    return {worker_hostname!r}\n")
        with local_stack(root / "stack", procs, model=FIRST, endpoint=ENDPOINT, versions=("v1", "v2"),
                         faults=FAULTS, rps=120) as stack:
            registry = stack_registry(stack)
            for version in ("v2", "v4"):
                registry.register_version(SECOND, version)
            registry.set_alias(SECOND, "champion", "v2")

            port = free_port()
            url = f"http://127.0.0.1:{port}"
            local_lock_path = root / "local-lock-never-used.db"
            env = {
                **stack.airflow_env(home),  # the stack's connections, .venv/bin first on PATH
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_dir),
                "CANARY_SPECS_DIR": str(specs),
                "CANARY_REPORTS_DIR": str(root / "reports"),
                "CANARY_LOCK_PATH": str(local_lock_path),
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": dsn,
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{dsn}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__WORKERS": "1",
                # Task processes on the worker report back through the execution API of this server.
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                # A loaded machine can stall the API server for seconds: a task's first call must not give up.
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                # Log servers on free ports: another Airflow on this machine may hold the defaults.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                f"AIRFLOW_CONN_{LOCK_CONN_ID.upper()}": json.dumps(
                    {"conn_type": "canary_lock", "host": PG_HOST, "port": PG_PORT, "login": PG_USER,
                     "schema": database}),
            }
            env.pop("CANARY_NIGHTLY_CRON", None)
            admin_password = secrets.token_urlsafe(16)
            (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": admin_password}))
            airflow = str(Path(sys.executable).parent / "airflow")
            started = time.time()
            with open(logs_dir / "db-migrate.log", "w") as migrate_log:
                subprocess.run([airflow, "db", "migrate"], env=env, stdout=migrate_log, stderr=subprocess.STDOUT,
                               check=True, timeout=300)
            migrated_s = time.time() - started
            commands = {
                "api-server": [airflow, "api-server"],
                "scheduler": [airflow, "scheduler"],
                "dag-processor": [airflow, "dag-processor"],
                "triggerer": [airflow, "triggerer"],
                "celery-worker": [airflow, "celery", "worker", "--concurrency", "2", "--without-mingle",
                                  "--without-gossip"],
            }
            worker_env = {**env, "AIRFLOW__CORE__HOSTNAME_CALLABLE": "canary_dist_worker_host.hostname",
                          "PYTHONPATH": str(site)}
            components, logs = {}, {}
            for name in COMPONENTS:
                logs[name] = logs_dir / f"{name}.log"
                proc = procs.start(name, commands[name], env=worker_env if name == "celery-worker" else env,
                                   stdout=open(logs[name], "w"), stderr=subprocess.STDOUT)
                components[name] = (proc, logs[name])
            client = AirflowClient(url, username="admin", password=admin_password)
            wait_for("the API server", lambda: requests.get(f"{url}/api/v2/monitor/health", timeout=2).ok,
                     timeout_s=STARTUP_TIMEOUT_S, procs=components)
            for model in (FIRST, SECOND):
                wait_for(f"DAG {dag(model)} to be parsed, unpaused",
                         lambda m=model: client.request("GET", f"/api/v2/dags/{dag(m)}")["is_paused"] is False,
                         timeout_s=STARTUP_TIMEOUT_S, procs=components)
            wait_for("the Celery worker", lambda: " ready." in logs["celery-worker"].read_text(),
                     timeout_s=STARTUP_TIMEOUT_S, procs=components)
            print(f"\ndistributed Airflow ready on {url} after {time.time() - started:.0f}s "
                  f"(db migrate {migrated_s:.0f}s; logs {logs_dir})")
            yield Cluster(url, client, stack, database, redis_db, worker_hostname, logs, local_lock_path,
                          components)
    finally:
        procs.stop_all()
        with contextlib.suppress(Exception):
            redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_db, socket_timeout=5).flushdb()
        pg_admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_rollouts_run_on_the_celery_worker_and_share_the_postgres_lease(cluster):
    client, started = cluster.client, time.time()
    first = client.trigger(dag(FIRST), {"version": "v2", "reason": "distributed test"})["dag_run_id"]
    wait_for(f"{FIRST} to take the endpoint", lambda: client.task_instance(
        dag(FIRST), first, "validate_request")["state"] == "success", timeout_s=RUN_TIMEOUT_S,
        procs=cluster.components)
    # The lease lives in PostgreSQL, held by the first run, while that run goes on.
    assert cluster.leases() == [(f"local/{ENDPOINT}", dag(FIRST), first)]
    second = client.trigger(dag(SECOND), {"version": "v4", "reason": "distributed test: waits"})["dag_run_id"]
    wait_for(f"{SECOND} to wait for the endpoint", lambda: client.task_instance(
        dag(SECOND), second, "validate_request")["state"] == "deferred", timeout_s=RUN_TIMEOUT_S,
        procs=cluster.components, interval_s=0.3)
    assert client.dag_run(dag(FIRST), first)["state"] == "running"

    assert cluster.wait_run(dag(FIRST), first) == "success"
    assert cluster.wait_run(dag(SECOND), second) == "failed"  # rolled back, as a rollback run should
    print(f"\nboth rollouts finished {time.time() - started:.0f}s after the first trigger")

    # The first: promoted (report in finalize's XCom, all traffic on v2, registry champion moved).
    report = client.xcom(dag(FIRST), first, "finalize")
    assert (report["outcome"], report["candidate"], report["stable"]) == ("promoted", "v2", "v1"), report
    assert cluster.registry().champion(FIRST) == "v2"
    # The second took the endpoint after the first promoted, then rolled its faulty candidate back.
    report_b = client.xcom(dag(SECOND), second, "finalize")
    assert (report_b["outcome"], report_b["candidate"], report_b["stable"]) == ("rolled_back", "v4", "v2"), report_b
    assert cluster.stack.weights() == {"v2": 100}
    assert cluster.registry().champion(SECOND) == "v2"
    waited = client.task_log(dag(SECOND), second, "validate_request", 1)
    assert f"waiting for endpoint local/{ENDPOINT}: held by {dag(FIRST)} run {first}" in waited, waited[-3000:]
    assert f"took the lease on endpoint local/{ENDPOINT} after waiting" in waited, waited[-3000:]
    promote = client.task_instance(dag(FIRST), first, "promote")
    second_deploy = client.task_instance(dag(SECOND), second, "deploy_canary")
    assert when(client.task_instance(dag(SECOND), second, "validate_request"), "end_date") > when(promote, "end_date")
    assert when(second_deploy, "start_date") > when(promote, "end_date")

    # Every task that ran, ran on the Celery worker: its hostname, its log, Celery's result backend.
    # (The scheduler marks EmptyOperator tasks, the branches' `proceed`, done without running them.)
    ran = [(run, ti) for run, dag_id in ((first, dag(FIRST)), (second, dag(SECOND)))
           for ti in cluster.task_instances(dag_id, run)
           if ti["state"] in ("success", "failed") and ti["operator"] != "EmptyOperator"]
    assert len(ran) >= 18, [(ti["task_id"], ti["state"]) for _run, ti in ran]
    elsewhere = [(ti["task_id"], ti["hostname"]) for _run, ti in ran if ti["hostname"] != cluster.worker_hostname]
    assert not elsewhere, elsewhere
    worker_log = cluster.logs["celery-worker"].read_text()
    executed = [line for line in worker_log.splitlines() if "Executing workload in Celery" in line]
    for run, ti in ran:
        assert any(f"task_id='{ti['task_id']}'" in line and run in line for line in executed), \
            (ti["task_id"], run, worker_log[-3000:])
    celery_results = pg_query(cluster.database, "SELECT count(*) FROM celery_taskmeta")[0][0]
    assert celery_results >= len(ran)  # a deferred task counts once per resumption, too

    # The lease was released in PostgreSQL; the per-host SQLite store was never touched.
    assert cluster.leases() == []
    assert not cluster.local_lock_path.exists()
