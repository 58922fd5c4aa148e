"""Fault injection, fast subset: whole rollouts on the embedded stack with a fault between Airflow and the serving
layer, and the fail-safe invariant checked after each (``canary.rollout.invariant``).

The fault proxy (``canary.devstack.faultproxy``) sits in front of the serving layer's admin API: the rollout
(``airflow dags test``) reaches the serving layer only through it, the checker reads the serving layer directly.
Each test appends a row (fault, where, outcome, seconds from the fault to the safe state, invariant held) to
FAULT_ROWS; ``make faults`` prints them as a table with one JSON line last (tests/e2e/conftest.py).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
import yaml
from embedded_e2e import invariant_violations_of, register_against_the_serving_version
from fast_spec import FIRST_STAGE_PCT, fast_spec
from services import require_prometheus

from canary.devstack.demo import local_stack, migrate, run_rollout
from canary.devstack.faultproxy import FaultProxy, FaultRule
from canary.devstack.processes import Processes, prometheus_server, wait_for_scrape

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL, ENDPOINT = "e2e-faults", "e2e-faults"
PROM_MODEL, PROM_CONN = "e2e-faults-prom", "canary_prometheus_faults"  # same endpoint, metrics from Prometheus
# v2 fails 30% of requests (rolled back at the first stage within seconds); v3 and v4 are as healthy as stable.
FAULTS = {"v1": "error_rate=0.01", "v2": "error_rate=0.3", "v3": "error_rate=0.01", "v4": "error_rate=0.01"}
#: Rows for the ``make faults`` table: fault, where injected, outcome, seconds from fault to safe state, held.
FAULT_ROWS: list[dict[str, object]] = []


@pytest.fixture(scope="module")
def stack_and_proxy(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-faults")
    specs = root / "specs"
    specs.mkdir()
    (specs / f"{MODEL}.yaml").write_text(yaml.safe_dump(fast_spec(MODEL, ENDPOINT, shadow={"enabled": False})))
    (specs / f"{PROM_MODEL}.yaml").write_text(yaml.safe_dump(fast_spec(
        PROM_MODEL, ENDPOINT, shadow={"enabled": False},
        backends={"metrics": {"name": "prometheus", "conn_id": PROM_CONN}})))
    procs = Processes()
    try:
        with local_stack(root / "stack", procs, model=MODEL, endpoint=ENDPOINT, versions=("v1", "v2", "v3", "v4"),
                         faults=FAULTS, rps=120) as stack, FaultProxy(stack.url).running() as proxy:
            migrate(root / "airflow", stack)
            serving = {"conn_type": "canary_serving", "host": "127.0.0.1", "port": proxy.port,
                       "password": stack.token}
            env = {"CANARY_SPECS_DIR": str(specs), "AIRFLOW_CONN_CANARY_SERVING_DEFAULT": json.dumps(serving)}
            yield stack, proxy, root / "airflow", env
    finally:
        procs.stop_all()


@pytest.fixture
def faults(stack_and_proxy):
    stack, proxy, home, env = stack_and_proxy
    proxy.clear()
    yield stack, proxy, home, env
    proxy.clear()


def weights_body(predicate):
    """A body predicate on a PUT /weights: ``predicate(weights)``."""
    def match(body: bytes) -> bool:
        try:
            return predicate(json.loads(body)["weights"])
        except (ValueError, KeyError, TypeError):
            return False
    return match


def restored_at(proxy, stable: str, after_s: float) -> float | None:
    """Return when the serving layer first accepted "all traffic on stable" after ``after_s`` (monotonic)."""
    found = [e for e in proxy.forwarded("PUT", "/weights$") if e.at_s >= after_s and e.status == 200
             and weights_body(lambda w: w == {stable: 100})(e.body)]
    return found[0].at_s if found else None


def finish(stack, report, fault: str, where: str, fault_at_s: float | None, safe_at_s: float | None, *,
           model: str = MODEL) -> list[str]:
    violations = invariant_violations_of(stack, report, model)
    FAULT_ROWS.append({"fault": fault, "where": where, "outcome": report["outcome"],
                       "time_to_safe_s": None if fault_at_s is None or safe_at_s is None
                       else round(safe_at_s - fault_at_s, 1),
                       "invariant_held": not violations, "violations": violations})
    return violations


def test_transient_5xx_on_deploy_and_traffic_changes_are_retried(faults):
    stack, proxy, home, env = faults
    register_against_the_serving_version(stack, MODEL, "v2")
    proxy.add(FaultRule("deploy 503 twice", method="PUT", path="/versions/v2$", times=2))
    proxy.add(FaultRule("weights 503 twice", method="PUT", path="/weights$", times=2,
                        body=weights_body(lambda w: 0 < w.get("v2", 0) < 100)))
    report = run_rollout(stack, home, "v2", extra_env=env)
    assert report["outcome"] == "rolled_back", report  # reached its verdict despite the faults
    assert len(proxy.injected("deploy 503 twice")) == 2 and len(proxy.injected("weights 503 twice")) == 2
    fault_at = proxy.injected("deploy 503 twice")[0].at_s
    assert finish(stack, report, "HTTP 503 twice per call", "deploy + set traffic", fault_at,
                  restored_at(proxy, report["stable"], fault_at)) == []


def test_a_serving_layer_refusing_every_traffic_change_leaves_stable_serving(faults):
    stack, proxy, home, env = faults
    before = register_against_the_serving_version(stack, MODEL, "v3")
    proxy.add(FaultRule("weights always 503", method="PUT", path="/weights$",
                        body=weights_body(lambda w: 0 < w.get("v3", 0))))
    report = run_rollout(stack, home, "v3", extra_env=env)
    assert report["outcome"] == "failed" and "stage_1.set_traffic" in report["reason"], report
    assert stack.weights() == {before: 100}
    # Traffic never left stable: the safe state held throughout (the teardown's "all on stable" is accepted).
    fault_at = proxy.injected("weights always 503")[0].at_s
    assert finish(stack, report, "HTTP 503 on every traffic change", "set traffic (stage 1)", fault_at,
                  restored_at(proxy, before, fault_at)) == []


def test_an_outage_during_the_rollback_is_waited_out_and_traffic_returns_to_stable(faults):
    stack, proxy, home, env = faults
    before = register_against_the_serving_version(stack, MODEL, "v2")
    outage = proxy.add(FaultRule("down for 12 s at the rollback", method="PUT", path="/weights$", action="drop",
                                 for_s=12.0, body=weights_body(lambda w: w == {before: 100})))
    report = run_rollout(stack, home, "v2", extra_env=env)
    assert report["outcome"] == "rolled_back", report
    assert outage.applied >= 2, "the rollback never met the outage"
    fault_at = proxy.injected(outage.name)[0].at_s
    safe_at = restored_at(proxy, before, fault_at)
    assert safe_at is not None and safe_at - fault_at >= 11.0  # it kept trying until the outage ended
    assert stack.weights() == {before: 100}
    assert finish(stack, report, "serving unreachable for 12 s", "rollback (stage 1)", fault_at, safe_at) == []


def test_a_router_that_ignores_the_weights_is_halted_on_the_sample_ratio(faults):
    stack, proxy, home, env = faults
    before = register_against_the_serving_version(stack, MODEL, "v4")

    def a_third(body: bytes) -> bytes:
        weights = json.loads(body)["weights"]
        weights["v4"] = max(1, weights["v4"] // 3)
        weights[before] = 100 - weights["v4"]
        return json.dumps({"weights": weights}).encode()

    proxy.add(FaultRule("applies a third of the canary weight", method="PUT", path="/weights$", action="rewrite",
                        rewrite=a_third, body=weights_body(lambda w: 0 < w.get("v4", 0) < 100)))
    report = run_rollout(stack, home, "v4", extra_env=env)
    assert report["outcome"] == "rolled_back", report
    assert "sample-ratio mismatch" in report["reason"], report["reason"]
    assert report["timeline"][0]["weight_pct"] == FIRST_STAGE_PCT and stack.weights() == {before: 100}
    fault_at = proxy.injected("applies a third of the canary weight")[0].at_s
    assert finish(stack, report, "router applies 1/3 of the weight", "set traffic (stage 1)", fault_at,
                  restored_at(proxy, before, fault_at)) == []


@pytest.fixture(scope="module")
def prometheus_behind_a_proxy(stack_and_proxy, tmp_path_factory):
    """A real Prometheus scraping the serving layer, reached by the rollout through a second fault proxy."""
    require_prometheus()
    stack, _proxy, home, env = stack_and_proxy
    with prometheus_server(tmp_path_factory.mktemp("faults-prom"), targets=[urlsplit(stack.url).netloc]) as url, \
            FaultProxy(url).running() as prom_proxy:
        wait_for_scrape(url, 'up{job="serving"} == 1')
        conn = {"conn_type": "canary_metrics", "host": "127.0.0.1", "port": prom_proxy.port}
        yield prom_proxy, {**env, f"AIRFLOW_CONN_{PROM_CONN.upper()}": json.dumps(conn)}


def test_a_metrics_outage_during_observation_is_waited_out(faults, prometheus_behind_a_proxy):
    stack, proxy, home, _ = faults
    prom_proxy, env = prometheus_behind_a_proxy
    prom_proxy.clear()
    before = register_against_the_serving_version(stack, PROM_MODEL, "v2")
    outage = prom_proxy.add(FaultRule("Prometheus 503 for 8 s", path="^/api/v1/query", for_s=8.0))
    report = run_rollout(stack, home, "v2", extra_env=env, model=PROM_MODEL)
    # The polls failed for 8 s, then read the metrics again: the 30% error rate is what stopped it, not the outage.
    assert report["outcome"] == "rolled_back" and "error_rate" in report["reason"], report
    assert outage.applied >= 2 and stack.weights() == {before: 100}
    fault_at = prom_proxy.injected(outage.name)[0].at_s
    assert finish(stack, report, "metrics store 503 for 8 s", "observe (stage 1)", fault_at,
                  restored_at(proxy, before, fault_at), model=PROM_MODEL) == []


def test_metrics_that_say_no_data_never_promote(faults, prometheus_behind_a_proxy):
    stack, proxy, home, _ = faults
    prom_proxy, env = prometheus_behind_a_proxy
    prom_proxy.clear()
    before = register_against_the_serving_version(stack, PROM_MODEL, "v3")  # as healthy as stable
    empty = b'{"status": "success", "data": {"resultType": "matrix", "result": []}}'
    prom_proxy.add(FaultRule("Prometheus answers no series", path="^/api/v1/query", action="respond", status=200,
                             response=empty))
    report = run_rollout(stack, home, "v3", extra_env=env, model=PROM_MODEL)
    assert report["outcome"] == "rolled_back", report  # halted on missing data, rolled back by policy
    assert report["reason"].startswith(f"stage 1 ({FIRST_STAGE_PCT}%): halted: no metrics data after "), report["reason"]
    assert stack.weights() == {before: 100}
    fault_at = prom_proxy.injected("Prometheus answers no series")[0].at_s
    assert finish(stack, report, "metrics store answers no series", "observe (stage 1)", fault_at,
                  restored_at(proxy, before, fault_at), model=PROM_MODEL) == []
