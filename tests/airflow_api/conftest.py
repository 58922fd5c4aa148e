"""One real Airflow (``airflow standalone``) per test session, with the embedded stack behind it.

Started once on a free loopback port with a temporary ``AIRFLOW_HOME``: API server, scheduler,
dag-processor and triggerer run the rollout DAGs of a temporary specs directory against the real
serving layer, metrics store and registry. Everything is stopped (process groups) at teardown.
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
from pathlib import Path

import pytest
import requests
import yaml
from fast_spec import fast_spec

from canary.airflow_api import AirflowApiError, AirflowClient
from canary.backends.base import ConnInfo
from canary.devstack.demo import LocalStack, local_stack
from canary.devstack.processes import Processes, free_port

MODEL, ENDPOINT = "api-model", "api"
#: Other models (same endpoint; the nightly DAG only reads their registry entries).
NO_CANDIDATE_MODEL, TRIED_MODEL, OPTED_OUT_MODEL = "api-nocand", "api-tried", "api-optout"
BASE = 0.01
FAULTS = {"v1": f"error_rate={BASE}", "v2": f"error_rate={BASE}", "v3": f"error_rate={BASE + 0.15}"}
STARTUP_TIMEOUT_S = 150.0


def opted_in_spec(model: str) -> dict:
    """The shared fast spec on this endpoint, opted in to the nightly schedule."""
    return fast_spec(model, ENDPOINT, owner="api-tests", schedule={"nightly_cron": "0 2 * * *"})


@dataclass
class AirflowServer:
    """A running Airflow and the stack behind it."""

    url: str
    username: str
    password: str
    stack: LocalStack
    home: Path
    reports_dir: Path
    log_file: Path
    #: The rollout history store the API server reads (the UI pages) and the tasks write.
    history_url: str = ""
    #: The environment the Airflow processes run with (another Airflow process of this deployment reuses it).
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> AirflowClient:
        return AirflowClient(self.url, username=self.username, password=self.password)

    def cli_env(self) -> dict[str, str]:
        return {"CANARY_AIRFLOW_URL": self.url, "CANARY_AIRFLOW_USERNAME": self.username,
                "CANARY_AIRFLOW_PASSWORD": self.password}

    def registry(self):
        from canary.backends.local_registry import LocalModelRegistry

        return LocalModelRegistry(ConnInfo(conn_id="t", extra={"path": str(self.stack.registry_file)}))

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.client().request("PATCH", f"/api/v2/dags/{dag_id}", json_body={"is_paused": paused})

    def has_dag(self, dag_id: str) -> bool:
        """Whether the API knows ``dag_id`` yet (the dag-processor has parsed and stored it)."""
        try:
            self.client().request("GET", f"/api/v2/dags/{dag_id}")
        except AirflowApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    def runs(self, dag_id: str) -> list[dict]:
        return self.client().request("GET", f"/api/v2/dags/{dag_id}/dagRuns",
                                     params={"order_by": "-run_after", "limit": 50})["dag_runs"]

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float = 120.0) -> str:
        client, deadline = self.client(), time.time() + timeout_s
        while time.time() < deadline:
            state = client.dag_run(dag_id, run_id)["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(1)
        raise AssertionError(f"{dag_id} {run_id} not finished after {timeout_s:.0f}s; see {self.log_file}")


def _seed(server_registry) -> None:
    reg = server_registry
    # MODEL: v1 champion (the stack seeds v1..v3); the nightly test adds its own candidates later.
    for model, versions, tags in ((NO_CANDIDATE_MODEL, ["v1"], {}),
                                  (TRIED_MODEL, ["v1", "v2"], {"v2": {"rollout.result": "rolled_back"}}),
                                  (OPTED_OUT_MODEL, ["v1", "v2"], {})):
        for version in versions:
            reg.register_version(model, version, tags=tags.get(version))
        reg.set_alias(model, "champion", "v1")


def _wait_for(what: str, check, proc, log_file: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"airflow standalone exited ({proc.returncode}) while waiting for {what}:\n"
                               + log_file.read_text()[-3000:])
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}; see {log_file}")


@pytest.fixture(scope="session")
def airflow_server(tmp_path_factory) -> Iterator[AirflowServer]:
    root = tmp_path_factory.mktemp("airflow_api")
    specs = root / "specs"
    specs.mkdir()
    for model in (MODEL, NO_CANDIDATE_MODEL, TRIED_MODEL):
        (specs / f"{model}.yaml").write_text(yaml.safe_dump(opted_in_spec(model)))
    (specs / f"{OPTED_OUT_MODEL}.yaml").write_text(yaml.safe_dump(fast_spec(OPTED_OUT_MODEL, ENDPOINT)))
    procs = Processes()
    try:
        with local_stack(root / "stack", procs, model=MODEL, endpoint=ENDPOINT, versions=("v1", "v2", "v3"),
                         faults=FAULTS, rps=120) as stack:
            port, home = free_port(), root / "airflow"
            url = f"http://127.0.0.1:{port}"
            reports = root / "reports"
            env = {
                **stack.airflow_env(home),
                "CANARY_SPECS_DIR": str(specs),
                "CANARY_REPORTS_DIR": str(reports),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(port),
                # Links built by tasks (HITL, the "Rollout report" extra link) point at this server.
                "AIRFLOW__API__BASE_URL": url,
                # Task processes report back through the execution API: it must be this server.
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                # Named explicitly, so tests read and seed the very store the server's pages show.
                "CANARY_HISTORY_URL": f"sqlite:///{home / 'canary_history.db'}",
            }
            env.pop("CANARY_NIGHTLY_CRON", None)
            # A known admin password (the simple auth manager keeps it), so tasks can write run notes.
            home.mkdir(parents=True, exist_ok=True)
            admin_password = secrets.token_urlsafe(16)
            (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": admin_password}))
            env["AIRFLOW_CONN_CANARY_AIRFLOW_API_DEFAULT"] = json.dumps(
                {"conn_type": "canary_airflow_api", "host": url, "login": "admin", "password": admin_password})
            _seed(AirflowServer(url, "", "", stack, home, reports, root).registry())
            log_file = root / "airflow.log"
            started = time.time()
            proc = procs.start("airflow", [str(Path(sys.executable).parent / "airflow"), "standalone"], env=env,
                               stdout=open(log_file, "w"), stderr=subprocess.STDOUT)
            passwords = home / "simple_auth_manager_passwords.json.generated"
            _wait_for("the API server", lambda: passwords.exists()
                      and requests.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200,
                      proc, log_file, STARTUP_TIMEOUT_S)
            server = AirflowServer(url, "admin", json.loads(passwords.read_text())["admin"], stack, home, reports,
                                   log_file, history_url=env["CANARY_HISTORY_URL"], env=env)
            client = server.client()
            dag_ids = [f"canary_rollout__{m}" for m in (MODEL, NO_CANDIDATE_MODEL, TRIED_MODEL, OPTED_OUT_MODEL)]
            for dag_id in [*dag_ids, "nightly_rollouts"]:
                _wait_for(f"DAG {dag_id} to be parsed", lambda d=dag_id: client.request("GET", f"/api/v2/dags/{d}"),
                          proc, log_file, STARTUP_TIMEOUT_S)
            server.set_paused(f"canary_rollout__{MODEL}", False)
            print(f"\nairflow standalone ready on {url} after {time.time() - started:.0f}s (log {log_file})")
            yield server
    finally:
        procs.stop_all()
