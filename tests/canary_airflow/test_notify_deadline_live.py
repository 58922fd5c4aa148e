"""The stuck-rollout alert for real: a real ``airflow standalone`` (scheduler, triggerer, API server) fires the
Deadline Alert that :func:`canary_airflow.notify.stuck_deadline` builds, and its callback, run by the
triggerer, sends the ``stuck`` notice to an HTTP receiver on loopback.

Only the interval is shortened (a real spec's budget is at least 10 minutes; :func:`stuck_budget` is
table-tested on its own): the probe DAG's one task sleeps past it, so the run is still going when the
scheduler looks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from notify_receivers import http_receiver

from canary.devstack.processes import Processes, free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "notify_deadline_probe"
PROBE = textwrap.dedent('''
    from datetime import datetime, timedelta

    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG

    from canary.spec.model import parse_spec
    from canary_airflow.notify import stuck_deadline

    spec = parse_spec({"model": "probe", "endpoint": "e", "stages": [{"weight": 100}],
                       "notify": [{"notifier": "http", "conn_id": "probe_webhook", "events": ["stuck"],
                                   "options": {"endpoint": "/hooks/stuck"}}]})
    alert = stuck_deadline(spec)
    alert.interval = timedelta(seconds=2)  # the only change: fire while the task below still sleeps

    with DAG("notify_deadline_probe", schedule=None, start_date=datetime(2025, 1, 1), catchup=False,
             deadline=alert):
        BashOperator(task_id="still_going", bash_command="sleep 60")
''')
STARTUP_TIMEOUT_S = 180.0


def airflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def wait_for(what: str, check, proc, log_file: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"airflow standalone exited while waiting for {what}:\n{log_file.read_text()[-3000:]}")
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; see {log_file}")


def test_the_scheduler_fires_the_stuck_alert_and_the_triggerer_sends_it(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "probe.py").write_text(PROBE)
    home, port = tmp_path / "airflow", free_port()
    procs = Processes()
    with http_receiver() as receiver:
        env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
               "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
               "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False", "AIRFLOW__API__HOST": "127.0.0.1",
               "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
               "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
               "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
               "AIRFLOW_CONN_PROBE_WEBHOOK": receiver.connection(),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        log_file = tmp_path / "airflow.log"
        try:
            proc = procs.start("airflow", [str(Path(sys.executable).parent / "airflow"), "standalone"], env=env,
                               stdout=open(log_file, "w"), stderr=subprocess.STDOUT)
            wait_for(f"DAG {DAG_ID} to be parsed", lambda: DAG_ID in airflow(env, "dags", "list", "-o", "plain").stdout,
                     proc, log_file, STARTUP_TIMEOUT_S)
            triggered = airflow(env, "dags", "trigger", DAG_ID, "-c", '{"version": "v7"}')
            assert triggered.returncode == 0, triggered.stderr
            wait_for("the stuck notice", lambda: bool(receiver.received), proc, log_file, 120.0)
        finally:
            procs.stop_all()
    (got,) = receiver.received
    assert got.path == "/hooks/stuck"
    assert got.body["event"] == "stuck" and got.body["dag_id"] == DAG_ID
    assert got.body["subject"].startswith("probe: rollout of v7 still running after ")
    run_id = quote(got.body["run_id"], safe="")
    assert got.body["link"] == f"http://127.0.0.1:{port}/dags/{DAG_ID}/runs/{run_id}/plugin/rollout"
