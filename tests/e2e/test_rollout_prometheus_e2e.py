"""End to end with Prometheus as the metrics store: rollout DAGs run with `airflow dags test`.

The embedded serving layer and traffic generator serve the model; a real Prometheus scrapes the
serving layer's ``/metrics`` every second, and the spec's metrics backend is ``prometheus`` reached
through an Airflow connection given as ``AIRFLOW_CONN_CANARY_PROMETHEUS_E2E``. Prometheus holds no
per-request pairs, so these specs run without a shadow test.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from fast_spec import FIRST_STAGE_PCT, fast_spec
from services import require_prometheus

from canary.backends.base import ConnInfo
from canary.devstack.demo import local_stack, migrate, run_rollout
from canary.devstack.processes import Processes, prometheus_server, wait_for_scrape

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

MODEL, ENDPOINT = "e2e-prom-model", "e2e-prom"
CONN_ID = "canary_prometheus_e2e"
BASE = 0.01
# v3 fails 16% of requests: it must be rolled back at the first stage.
FAULTS = {"v1": f"error_rate={BASE}", "v2": f"error_rate={BASE}", "v3": f"error_rate={BASE + 0.15}"}


def rollout_spec() -> dict:
    return fast_spec(MODEL, ENDPOINT, shadow={"enabled": False},
                     backends={"metrics": {"name": "prometheus", "conn_id": CONN_ID}})


@pytest.fixture(scope="module")
def e2e(request, tmp_path_factory):
    require_prometheus()
    root = tmp_path_factory.mktemp("e2e-prom")
    specs = root / "specs"
    specs.mkdir()
    (specs / f"{MODEL}.yaml").write_text(yaml.safe_dump(rollout_spec()))
    procs = Processes()
    try:
        with local_stack(root / "stack", procs, model=MODEL, endpoint=ENDPOINT, versions=("v1", "v2", "v3"),
                         faults=FAULTS, rps=120) as stack:
            target = urlsplit(stack.url).netloc
            with prometheus_server(root / "prometheus", targets=[target]) as prom_url:
                wait_for_scrape(prom_url, 'up{job="serving"} == 1')
                migrate(root / "airflow", stack)
                prom = urlsplit(prom_url)
                conn = {"conn_type": "canary_metrics", "host": prom.hostname, "port": prom.port}
                env = {"CANARY_SPECS_DIR": str(specs), f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(conn)}
                yield stack, root / "airflow", env, prom_url
    finally:
        procs.stop_all()


def registry(stack):
    from canary.backends.local_registry import LocalModelRegistry

    return LocalModelRegistry(ConnInfo(conn_id="t", extra={"path": str(stack.registry_file)}))


def api_queries(prom_url: str) -> float:
    """Return how many instant queries Prometheus has answered (its own /metrics)."""
    text = requests.get(f"{prom_url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line)


def test_good_candidate_is_promoted_on_prometheus_metrics(e2e):
    stack, home, env, prom_url = e2e
    queries_before = api_queries(prom_url)
    report = run_rollout(stack, home, "v2", extra_env=env)
    assert api_queries(prom_url) > queries_before + 4  # the gate read its windows from Prometheus
    assert report["outcome"] == "promoted", report
    assert stack.weights() == {"v2": 100}
    assert registry(stack).champion(MODEL) == "v2"
    assert [s["decision"] for s in report["timeline"]] == ["advance", "advance"]


def test_faulty_candidate_is_rolled_back_on_prometheus_metrics(e2e):
    stack, home, env, _ = e2e
    before = registry(stack).champion(MODEL)
    report = run_rollout(stack, home, "v3", extra_env=env)
    assert report["outcome"] == "rolled_back", report
    assert len(report["timeline"]) == 1 and report["timeline"][0]["decision"] == "rollback"
    assert report["timeline"][0]["weight_pct"] == FIRST_STAGE_PCT
    assert stack.weights() == {before: 100}
    assert registry(stack).champion(MODEL) == before

