"""End to end on SageMaker + CloudWatch served by moto: whole rollout DAGs run with `airflow dags test`.

What is real: Airflow (`airflow dags test`, deferrable tasks and triggers run in line), the spec's
``sagemaker`` serving and ``cloudwatch`` metrics backends reached through an Airflow AWS connection
(the amazon provider's hook), and a moto 5.2 server (``ThreadedMotoServer`` in this process) answering
every SageMaker and CloudWatch call: models, endpoint configs, DescribeEndpoint,
UpdateEndpointWeightsAndCapacities, PutMetricData and GetMetricData.

What is not moto, and says so:

* ``UpdateEndpoint`` (every rollout needs it: the candidate's variant is added, the losing one removed)
  comes from ``moto_harness.update_endpoint_extension``, which applies the new config's variants to the
  endpoint as AWS does when an update finishes, and holds the endpoint ``Updating`` for
  ``UPDATING_S`` seconds, so the deferrable tasks really defer and their triggers really wait;
* traffic: moto serves no model and publishes no ``Invocations``. :class:`SimulatedTraffic` stands in
  for SageMaker's per-variant metrics: every second it reads the variants' current weights back from
  moto, splits ~``RPS`` requests by them, draws errors at each version's rate and publishes
  ``Invocations``, ``Invocation4XXErrors``/``Invocation5XXErrors`` and ``ModelLatency`` into
  ``AWS/SageMaker`` with ``EndpointName``/``VariantName`` dimensions. A weight shift therefore changes
  what the gate reads, as on AWS (without the minute or two of CloudWatch ingestion delay).

The rollouts: a good candidate promoted, a faulty one rolled back at the first stage, and one whose
observe task fails (a metrics store that cannot be read), where ``finalize`` must return traffic to
stable through a deferred wait. The registry is the local one (the registry backends have their own
end-to-end tests).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fast_spec import FIRST_STAGE_PCT, fast_spec
from moto_harness import moto_server, update_endpoint_extension

from canary.backends.aws import aws_client
from canary.backends.base import ConnInfo
from canary.backends.sagemaker import SageMakerTrafficRouter
from canary.devstack.demo import LocalStack, migrate, run_rollout, seed_registry

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

MODEL, ENDPOINT = "e2e-sm-model", "e2e-sm"
CONN_ID = "aws_canary_e2e"
MISSING_STORE_CONN_ID = "missing_metrics_store"
#: Seconds an endpoint stays Updating after UpdateEndpoint (the extension's; AWS takes minutes).
UPDATING_S = 3.0
RPS = 500.0  # simulated: costs nothing, and a stage reaches its decision sooner
BASE = 0.01
#: Per-version error rates; v3 fails 16% of requests (5XX) and must be rolled back at the first stage.
ERROR_RATES = {"v1": BASE, "v2": BASE, "v3": BASE + 0.15, "v4": BASE}
#: Same endpoint, a metrics backend that cannot be built (period_s 7): its observe task fails.
BROKEN_MODEL = "e2e-sm-broken"
ROLE = "arn:aws:iam::123456789012:role/sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/churn:latest"


def rollout_spec() -> dict[str, Any]:
    spec = fast_spec(MODEL, ENDPOINT, shadow={"enabled": False}, backends={
        "serving": {"name": "sagemaker", "conn_id": CONN_ID, "options": {"poll_interval_s": 0.5, "wait_timeout_s": 60}},
        # 1 s high-resolution periods; settle_s keeps the second still being published out of the window.
        "metrics": {"name": "cloudwatch", "conn_id": CONN_ID, "options": {"period_s": 1, "settle_s": 1}},
    })
    # CloudWatch windows end settle_s early and cover whole periods only: a stage's minimum duration must
    # leave room for warm-up + settle_s + a period or so of data, else the stage has no data and halts.
    spec["stages"][1]["min_duration"] = "7s"
    return spec


def broken_spec() -> dict[str, Any]:
    spec = rollout_spec()
    spec["model"] = BROKEN_MODEL
    # A metrics store that cannot be read: the backend builds (validate_request refuses only what cannot be
    # built, e.g. a bad option), but its first read fails, so the observe task fails after traffic moved.
    spec["backends"]["metrics"] = {"name": "local", "conn_id": MISSING_STORE_CONN_ID}
    return spec


class SimulatedTraffic:
    """Publish per-variant SageMaker metrics every second, split by the weights moto reports (see module doc)."""

    def __init__(self, conn: ConnInfo, *, endpoint: str, rps: float, error_rates: Mapping[str, float],
                 seed: int = 7) -> None:
        self.sagemaker = aws_client(conn, "sagemaker")
        self.cloudwatch = aws_client(conn, "cloudwatch")
        self.endpoint = endpoint
        self.rps = rps
        self.error_rates = dict(error_rates)
        self.rng = np.random.default_rng(seed)
        self.published: dict[str, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simulated-sagemaker-traffic", daemon=True)

    def __enter__(self) -> SimulatedTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        second = int(time.time())
        while not self._stop.wait(max(0.0, second + 1 - time.time())):
            try:
                self.publish(second)
            except Exception as err:  # keep publishing; the test asserts that nothing went wrong
                self.errors.append(f"{type(err).__name__}: {err}")
            second += 1

    def publish(self, second: int) -> None:
        """Publish one second of traffic, split by the endpoint's current variant weights."""
        variants = self.sagemaker.describe_endpoint(EndpointName=self.endpoint)["ProductionVariants"]
        weights = np.array([float(v.get("CurrentWeight") or 0.0) for v in variants])
        if weights.sum() <= 0:
            return
        counts = self.rng.multinomial(self.rng.poisson(self.rps), weights / weights.sum())
        stamp = datetime.fromtimestamp(second + 0.5, UTC)
        data: list[dict[str, Any]] = []
        for variant, n in zip(variants, counts, strict=True):
            name = variant["VariantName"]
            errors = int(self.rng.binomial(n, self.error_rates[name.removeprefix("v-")]))
            dims = [{"Name": "EndpointName", "Value": self.endpoint}, {"Name": "VariantName", "Value": name}]
            data += [
                {"MetricName": "Invocations", "Dimensions": dims, "Timestamp": stamp, "Value": float(n),
                 "StorageResolution": 1},
                {"MetricName": "Invocation4XXErrors", "Dimensions": dims, "Timestamp": stamp, "Value": 0.0,
                 "StorageResolution": 1},
                {"MetricName": "Invocation5XXErrors", "Dimensions": dims, "Timestamp": stamp, "Value": float(errors),
                 "StorageResolution": 1},
            ]
            if n:
                latency_us = self.rng.gamma(4.0, 5_000.0, size=int(n))
                data.append({"MetricName": "ModelLatency", "Dimensions": dims, "Timestamp": stamp,
                             "Unit": "Microseconds", "StorageResolution": 1,
                             "StatisticValues": {"SampleCount": float(n), "Sum": float(latency_us.sum()),
                                                 "Minimum": float(latency_us.min()),
                                                 "Maximum": float(latency_us.max())}})
            self.published[name] = self.published.get(name, 0) + int(n)
        self.cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=data)


def create_endpoint(conn: ConnInfo) -> None:
    """Models for every version (the training pipeline's job) and an endpoint serving v1 at 100%."""
    client = aws_client(conn, "sagemaker")
    for version in ERROR_RATES:
        client.create_model(ModelName=f"{ENDPOINT}-{version}", ExecutionRoleArn=ROLE,
                            PrimaryContainer={"Image": IMAGE})
    client.create_endpoint_config(EndpointConfigName=f"{ENDPOINT}-initial", ProductionVariants=[
        {"VariantName": "v-v1", "ModelName": f"{ENDPOINT}-v1", "InstanceType": "ml.m5.large",
         "InitialInstanceCount": 2, "InitialVariantWeight": 1.0}])
    client.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=f"{ENDPOINT}-initial")


@pytest.fixture(scope="module")
def e2e(tmp_path_factory) -> Iterator[tuple[LocalStack, Path, dict[str, str], ConnInfo, SimulatedTraffic]]:
    root = tmp_path_factory.mktemp("e2e-sagemaker")
    specs = root / "specs"
    specs.mkdir()
    (specs / f"{MODEL}.yaml").write_text(yaml.safe_dump(rollout_spec()))
    (specs / f"{BROKEN_MODEL}.yaml").write_text(yaml.safe_dump(broken_spec()))
    # LocalStack only for its state directory, registry file and Airflow environment: no serving layer runs.
    stack = LocalStack(state_dir=root / "stack", port=0, token="unused", model=MODEL, endpoint=ENDPOINT)
    stack.state_dir.mkdir()
    seed_registry(stack, ["v1", "v2", "v3"])
    with moto_server() as url, update_endpoint_extension(updating_s=UPDATING_S):
        extra = {"region_name": "us-east-1", "endpoint_url": url}
        conn = ConnInfo(conn_id=CONN_ID, login="testing", password="testing", extra=extra)
        create_endpoint(conn)
        env = {"CANARY_SPECS_DIR": str(specs), "AWS_DEFAULT_REGION": "us-east-1",
               f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps({"conn_type": "aws", "login": "testing",
                                                               "password": "testing", "extra": extra}),
               f"AIRFLOW_CONN_{MISSING_STORE_CONN_ID.upper()}": json.dumps({
                   "conn_type": "canary_metrics", "extra": {"path": str(root / "no-such-store.db")}})}
        migrate(root / "airflow", stack)
        with SimulatedTraffic(conn, endpoint=ENDPOINT, rps=RPS, error_rates=ERROR_RATES) as traffic:
            yield stack, root / "airflow", env, conn, traffic
        assert traffic.errors == [], traffic.errors[:3]


def registry(stack: LocalStack):
    from canary.backends.local_registry import LocalModelRegistry

    return LocalModelRegistry(ConnInfo(conn_id="t", extra={"path": str(stack.registry_file)}))


def variants(conn: ConnInfo) -> dict[str, float]:
    endpoint = aws_client(conn, "sagemaker").describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService", endpoint
    return {v["VariantName"]: float(v.get("CurrentWeight") or 0.0) for v in endpoint["ProductionVariants"]}


def deferrals(stack: LocalStack, version: str) -> list[str]:
    log = (stack.state_dir / f"airflow-{version}.log").read_text()
    return [line for line in log.splitlines() if "deferring until the change has settled" in line]


def test_good_candidate_is_promoted_on_sagemaker_and_cloudwatch(e2e):
    stack, home, env, conn, traffic = e2e
    report = run_rollout(stack, home, "v2", extra_env=env)
    assert report["outcome"] == "promoted", report
    assert [s["decision"] for s in report["timeline"]] == ["advance", "advance"]
    # The gate read CloudWatch: at 50% the canary saw about as many requests as stable.
    first = report["timeline"][0]
    assert first["canary_requests"] >= 150 and first["stable_requests"] >= 150, first
    assert variants(conn) == {"v-v2": 100.0}  # v1's variant retired, its weight went to v2
    assert SageMakerTrafficRouter(conn, endpoint=ENDPOINT).get_weights() == {"v2": 100}
    assert registry(stack).champion(MODEL) == "v2"
    # Deploying v2's variant and retiring v1's are endpoint updates: both tasks deferred and resumed.
    waits = deferrals(stack, "v2")
    assert len(waits) >= 2 and all("endpoint 'e2e-sm' is Updating" in w for w in waits), waits
    assert traffic.published.get("v-v2", 0) > 0


def test_faulty_candidate_is_rolled_back_at_the_first_stage(e2e):
    stack, home, env, conn, _ = e2e
    before = registry(stack).champion(MODEL)
    assert before == "v2" and variants(conn) == {"v-v2": 100.0}
    report = run_rollout(stack, home, "v3", extra_env=env)
    assert report["outcome"] == "rolled_back", report
    assert len(report["timeline"]) == 1 and report["timeline"][0]["decision"] == "rollback"
    assert report["timeline"][0]["weight_pct"] == FIRST_STAGE_PCT
    assert report["timeline"][0]["metric"] in ("error_rate", "guardrail.max_error_rate"), report["timeline"][0]
    assert variants(conn) == {"v-v2": 100.0}  # v3's variant removed, all traffic on v2
    assert registry(stack).champion(MODEL) == "v2"
    tags = registry(stack).get_tags(MODEL, "v3")
    assert tags["rollout.result"] == "rolled_back", tags
    assert tags["rollout.reason"].startswith(f"stage 1 ({FIRST_STAGE_PCT}%): "), tags
    assert len(deferrals(stack, "v3")) >= 2  # deploying v3's variant, removing it


def test_failing_task_on_sagemaker_leaves_traffic_on_stable_through_a_deferred_finalize(e2e):
    """finalize, the safety net, returns traffic to stable even when doing so means waiting for an update."""
    stack, home, env, conn, _ = e2e
    (stable_variant,) = variants(conn)
    stable = stable_variant.removeprefix("v-")
    broken = LocalStack(state_dir=stack.state_dir, port=0, token="unused", model=BROKEN_MODEL, endpoint=ENDPOINT)
    reg = registry(stack)
    reg.register_version(BROKEN_MODEL, stable)
    reg.register_version(BROKEN_MODEL, "v4")
    reg.set_alias(BROKEN_MODEL, "champion", stable)
    report = run_rollout(broken, home, "v4", extra_env=env)
    assert report["outcome"] == "failed", report
    assert "stage_1.observe" in report["reason"], report
    assert variants(conn) == {stable_variant: 100.0}  # v4 had 50%, now its variant is gone
    assert reg.get_tags(BROKEN_MODEL, "v4")["rollout.result"] == "rolled_back"
    finalize_waits = [w for w in deferrals(stack, "v4") if "FinalizeRolloutOperator" in w]
    assert len(finalize_waits) == 1, deferrals(stack, "v4")  # removing v4's variant: Updating, deferred
    log = (stack.state_dir / "airflow-v4.log").read_text()
    assert "unable to open database file" in log
