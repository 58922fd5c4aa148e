"""The rollout pages honour Airflow's per-DAG permissions: a user who may not read a DAG sees nothing of it.

``airflow standalone`` always uses the simple auth manager, whose roles are all-or-nothing, so this module
starts a second real ``airflow api-server`` of the same deployment (the session's metadata database,
plugins and rollout history store) with a test auth manager that hides ``canary_rollout__api-model``
from the user ``outsider`` (tests/airflow_api/dag_scoped_auth_manager.py), and signs in as each user.

The history is seeded as the rollout tasks' journal would write it, reports included (``put_report``): no
report file exists on any disk, so the pages are shown from the shared store alone, as on a deployment
whose API server does not share a disk with the workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from canary.devstack.processes import Processes, free_port
from canary.history import Look, RolloutRecord, StartedBy, open_history

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

DENIED_DAG = "canary_rollout__api-model"  # a DAG of tests/airflow_api/conftest.py
ALLOWED_DAG = "canary_rollout__api-optout"  # another one, readable by everyone
DENIED_RUN, ALLOWED_RUN = "auth__denied_run", "auth__allowed_run"
OUTSIDER = "outsider"
STARTUP_TIMEOUT_S = 150.0


def seed(history, dag_id: str, run_id: str, model: str, candidate: str, started_s: float) -> None:
    history.start(RolloutRecord(dag_id=dag_id, run_id=run_id, model=model, endpoint="api", candidate=candidate,
                                stable="v1", started_by=StartedBy.API, started_by_detail="admin",
                                reason="auth test", started_at_s=started_s, stages_planned=(50, 100)))
    history.add_look(Look(dag_id=dag_id, run_id=run_id, stage_index=0, look_at_s=started_s + 20, weight_pct=50,
                          decision="rollback", reason=f"error rate of {candidate} above tolerance", elapsed_s=20.0,
                          evidence={"canary_requests": 310, "stable_requests": 305}))
    history.finish(dag_id, run_id, outcome="rolled_back", reason=f"{candidate} failed its first stage",
                   finished_at_s=started_s + 60, stages_reached=1)
    history.put_report(dag_id, run_id, "json", json.dumps({"outcome": "rolled_back", "candidate": candidate,
                                                          "reason": f"{candidate} failed its first stage"}))


@pytest.fixture(scope="module")
def scoped_server(airflow_server, tmp_path_factory) -> Iterator[dict]:
    """Return the URL and users of a second API server with per-DAG permissions, and the seeded runs."""
    root = tmp_path_factory.mktemp("scoped_api")
    passwords = {"admin": "admin-" + str(free_port()), OUTSIDER: "outsider-" + str(free_port())}
    password_file = root / "passwords.json"
    password_file.write_text(json.dumps(passwords))
    history = open_history(airflow_server.history_url)
    now_s = time.time()
    seed(history, DENIED_DAG, DENIED_RUN, "api-model", "secret-candidate", now_s - 600)
    seed(history, ALLOWED_DAG, ALLOWED_RUN, "api-optout", "public-candidate", now_s - 500)
    port = free_port()
    env = {**airflow_server.env,
           "AIRFLOW__CORE__AUTH_MANAGER": "dag_scoped_auth_manager.DagScopedAuthManager",
           "PYTHONPATH": str(Path(__file__).parent),
           "CANARY_TEST_DENIED_DAGS": f"{OUTSIDER}:{DENIED_DAG}",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{OUTSIDER}:viewer",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
           "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}"}
    url, log_file, procs = f"http://127.0.0.1:{port}", root / "api-server.log", Processes()
    try:
        proc = procs.start("api-server", [str(Path(sys.executable).parent / "airflow"), "api-server", "--apps",
                                          "core", "--workers", "1", "--host", "127.0.0.1", "--port", str(port)],
                           env=env, stdout=open(log_file, "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"airflow api-server exited ({proc.returncode}):\n{log_file.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"airflow api-server not up after {STARTUP_TIMEOUT_S:.0f}s; see {log_file}")
            time.sleep(0.5)
        yield {"url": url, "passwords": passwords, "log_file": log_file}
    finally:
        procs.stop_all()  # the seeded rows stay: their run ids are this module's own


def signed_in(server: dict, user: str) -> dict[str, str]:
    reply = requests.post(f"{server['url']}/auth/token", json={"username": user,
                                                              "password": server["passwords"][user]}, timeout=30)
    assert reply.status_code in (200, 201), (reply.status_code, reply.text, server["log_file"])
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def get(server: dict, path: str, user: str) -> requests.Response:
    return requests.get(server["url"] + path, headers=signed_in(server, user), timeout=30)


def run_paths(dag_id: str, run_id: str) -> list[str]:
    run = quote(run_id, safe="")
    return [f"/canary/rollouts/{dag_id}/{run}", f"/canary/api/rollouts/{dag_id}/{run}"]


@pytest.mark.parametrize("path_index", [0, 1], ids=["tab", "json"])
def test_a_user_who_may_not_read_the_dag_gets_403_and_no_data(scoped_server, path_index):
    denied_path = run_paths(DENIED_DAG, DENIED_RUN)[path_index]
    refused = get(scoped_server, denied_path, OUTSIDER)
    assert refused.status_code == 403, (refused.status_code, refused.text[:500])
    assert "secret-candidate" not in refused.text and "api-model" not in refused.text.replace(DENIED_DAG, "")
    # The same user reads a DAG they may read; the admin reads both (the 403 is the DAG's, not the user's).
    allowed = get(scoped_server, run_paths(ALLOWED_DAG, ALLOWED_RUN)[path_index], OUTSIDER)
    assert allowed.status_code == 200 and "public-candidate" in allowed.text, allowed.text[:500]
    admin = get(scoped_server, denied_path, "admin")
    assert admin.status_code == 200 and "secret-candidate" in admin.text, admin.text[:500]


def test_the_lists_leave_out_the_runs_of_dags_the_user_may_not_read(scoped_server):
    outsider_json = get(scoped_server, "/canary/api/rollouts", OUTSIDER).json()["rollouts"]
    admin_json = get(scoped_server, "/canary/api/rollouts", "admin").json()["rollouts"]
    assert ALLOWED_RUN in [r["run_id"] for r in outsider_json]
    assert DENIED_DAG not in {r["dag_id"] for r in outsider_json}
    assert {DENIED_RUN, ALLOWED_RUN} <= {r["run_id"] for r in admin_json}
    page = get(scoped_server, "/canary/rollouts", OUTSIDER)
    assert page.status_code == 200 and "public-candidate" in page.text
    assert "secret-candidate" not in page.text and DENIED_RUN not in page.text
    # Filtering by the hidden model finds nothing, rather than telling the model exists.
    assert get(scoped_server, "/canary/api/rollouts?model=api-model", OUTSIDER).json()["rollouts"] == []


def test_the_tab_is_drawn_from_the_shared_store_without_any_report_file(scoped_server, airflow_server):
    assert not list(airflow_server.reports_dir.rglob(f"*{ALLOWED_RUN}*"))  # no file on any disk
    page = get(scoped_server, run_paths(ALLOWED_DAG, ALLOWED_RUN)[0], OUTSIDER)
    assert page.status_code == 200
    assert "public-candidate failed its first stage" in page.text and "<svg" in page.text, page.text[:1000]
