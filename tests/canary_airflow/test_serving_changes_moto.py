"""ServingChangeTrigger against a real moto server, with the real SageMaker router built from an Airflow
AWS connection (the amazon provider's hook resolves it).

moto makes an endpoint InService at once, so the plain case settles on the first check; the wait through
``Updating`` uses the test-side UpdateEndpoint extension (``moto_harness``), which holds the endpoint
``Updating`` after the update (as AWS does for minutes) until the test lets it finish.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator

import pytest
import requests
from moto_harness import moto_server, update_endpoint_extension

from canary.backends.aws import aws_client
from canary.backends.base import ConnInfo
from canary.backends.sagemaker import SageMakerTrafficRouter
from canary_airflow.serving_changes import ServingChangeTrigger

pytestmark = pytest.mark.integration

CONN_ID = "aws_moto_trigger"
ROLE = "arn:aws:iam::123456789012:role/sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/churn:latest"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def conn(moto_url: str, monkeypatch) -> ConnInfo:
    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    extra = {"region_name": "us-east-1", "endpoint_url": moto_url}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(
        {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}))
    client = aws_client(ConnInfo(conn_id="t", login="testing", password="testing", extra=extra), "sagemaker")
    for version in ("v1", "v2"):
        client.create_model(ModelName=f"churn-{version}", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    client.create_endpoint_config(EndpointConfigName="churn-initial", ProductionVariants=[
        {"VariantName": "v-v1", "ModelName": "churn-v1", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1,
         "InitialVariantWeight": 1.0}])
    client.create_endpoint(EndpointName="churn", EndpointConfigName="churn-initial")
    return ConnInfo(conn_id=CONN_ID, login="testing", password="testing", extra=extra)


async def collect(trigger: ServingChangeTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def run(trigger: ServingChangeTrigger) -> dict:
    (event,) = asyncio.run(asyncio.wait_for(collect(trigger), timeout=30))
    return event


def trigger_for(pending: dict, timeout_s: float = 20.0) -> ServingChangeTrigger:
    serving = {"name": "sagemaker", "conn_id": CONN_ID, "options": {"endpoint": "churn", "poll_interval_s": 0.2}}
    return ServingChangeTrigger(serving=serving, pending=pending, deadline_s=time.time() + timeout_s)


def test_in_service_endpoint_settles_on_the_first_check(conn: ConnInfo) -> None:
    router = SageMakerTrafficRouter(conn, endpoint="churn", wait=False)
    router.set_weights({"v1": 100})  # already there: no call; moto is InService anyway
    pending = {"backend": "sagemaker", "resource": "endpoint 'churn'", "state": "Updating",
               "token": {"endpoint": "churn", "expected_config": "churn-initial"}, "poll_interval_s": 0.2,
               "timeout_s": 20.0}
    event = run(trigger_for(pending))
    assert event["status"] == "settled" and event["checks"] == 1, event


def test_updating_endpoint_is_polled_until_in_service(conn: ConnInfo) -> None:
    with update_endpoint_extension(updating_s=math.inf) as control:
        router = SageMakerTrafficRouter(conn, endpoint="churn", poll_interval_s=0.2).without_waiting()
        router.deploy("v2")
        pending = router.pending_change()
        assert pending is not None and pending.state == "Updating"
        seen = control.describe_calls["churn"]

        async def go() -> list[dict]:
            events = asyncio.ensure_future(collect(trigger_for(pending.to_dict())))
            while control.describe_calls["churn"] < seen + 2:  # the trigger found it Updating twice
                assert not events.done(), events.result()
                await asyncio.sleep(0.05)
            control.finish("churn")
            return await events

        (event,) = asyncio.run(asyncio.wait_for(go(), timeout=30))
    assert event["status"] == "settled" and event["checks"] == 3, event
    assert SageMakerTrafficRouter(conn, endpoint="churn").get_weights() == {"v1": 100, "v2": 0}


def test_update_that_never_reached_the_expected_config_fails(conn: ConnInfo) -> None:
    pending = {"backend": "sagemaker", "resource": "endpoint 'churn'", "state": "Updating",
               "token": {"endpoint": "churn", "expected_config": "churn-not-applied"}, "poll_interval_s": 0.2,
               "timeout_s": 20.0}
    event = run(trigger_for(pending))
    assert event["status"] == "failed" and "the update was rolled back" in event["message"], event
