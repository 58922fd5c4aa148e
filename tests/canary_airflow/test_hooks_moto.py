"""AWS backends built by the hooks outlive their assumed-role credentials (real moto server, real refresh).

The Airflow AWS connection assumes a role (``role_arn``, ``assume_role_method: assume_role``) whose
credentials live ``DURATION_S`` = 5 s (AWS: 15 min to 12 h). botocore refreshes assumed-role credentials
15 min before they expire and must by 10 min before; those windows are scaled down with them (3 s and
2 s: ``RefreshableCredentials``' own class settings), so the credentials are used for 2 s, then botocore
calls the provider's refresh, which calls STS ``AssumeRole`` again. Nothing in the refresh is faked. A
request is signed with credentials that have at least 2 s left (the mandatory window); the extension
judges expiry at the request's signing time (``X-Amz-Date``), so however late a loaded machine delivers
a request, only one signed with expired credentials is refused.

moto's STS issues the credentials, and moto's IAM auth is on: every request's signature, session token
and permissions are checked against what STS issued and the role's policy. moto does not check
``Expiration``; the test-side extension ``expiring_credentials`` (``tests/moto_harness.py``) refuses a
request signed with expired credentials (``ExpiredTokenException``), as AWS does, and logs the access
key that signed each request. With credentials frozen when the backend is built (the hook before this
test existed), every call after the first 5 s is refused.

botocore refuses ``DurationSeconds`` below AWS's 900 s minimum before sending; the connection turns
client-side parameter validation off (``config_kwargs``), which also shows ``config_kwargs`` reaching the
STS client the provider assumes the role with. STS is reached through ``service_config.sts.endpoint_url``
(the provider never sends ``AssumeRole`` to the connection's global ``endpoint_url``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
import requests
from moto_harness import (
    CredentialLog,
    SeenRequest,
    expiring_credentials,
    moto_server,
    update_endpoint_extension,
)

from canary.backends.aws import aws_client
from canary.backends.base import ConnInfo
from canary.backends.sagemaker import SageMakerTrafficRouter
from canary.errors import BackendError
from canary_airflow.hooks import CanaryMetricsHook, CanaryServingHook
from canary_airflow.serving_changes import ServingChangeTrigger

pytestmark = pytest.mark.integration

CONN_ID = "aws_canary_role"
ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/canary-rollouts"
REGION = "us-east-1"
IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/churn:latest"
#: Lifetime of the assumed-role credentials, and botocore's refresh windows scaled to it (AWS: 15/10 min).
DURATION_S, ADVISORY_REFRESH_S, MANDATORY_REFRESH_S = 5, 3, 2
PERIOD_S = 60
T0 = (int(datetime.now(UTC).timestamp()) // 3600 - 2) * 3600


def allow(*actions: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": list(actions),
                                                               "Resource": "*"}]})


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def log(moto_url: str, monkeypatch) -> Iterator[CredentialLog]:
    """An account with an endpoint ``churn`` (v1), an hour of its metrics, a role to assume and the connection."""
    import moto.settings
    from botocore.credentials import RefreshableCredentials

    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    setup = {"endpoint_url": moto_url, "region_name": REGION, "aws_access_key_id": "testing",
             "aws_secret_access_key": "testing"}
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="airflow")
    iam.put_user_policy(UserName="airflow", PolicyName="assume", PolicyDocument=allow("sts:AssumeRole"))
    key = iam.create_access_key(UserName="airflow")["AccessKey"]
    iam.create_role(RoleName="canary-rollouts", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/airflow"}}]}))
    # AWS names CloudWatch's actions cloudwatch:*, moto 5.2 by its endpoint prefix, monitoring:*.
    iam.put_role_policy(RoleName="canary-rollouts", PolicyName="rollouts",
                        PolicyDocument=allow("sagemaker:*", "cloudwatch:*", "monitoring:*"))
    sagemaker = boto3.client("sagemaker", **setup)
    for version in ("v1", "v2"):
        sagemaker.create_model(ModelName=f"churn-{version}", PrimaryContainer={"Image": IMAGE},
                               ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/sagemaker")
    sagemaker.create_endpoint_config(EndpointConfigName="churn-initial", ProductionVariants=[
        {"VariantName": "v-v1", "ModelName": "churn-v1", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1,
         "InitialVariantWeight": 1.0}])
    sagemaker.create_endpoint(EndpointName="churn", EndpointConfigName="churn-initial")
    dims = [{"Name": "EndpointName", "Value": "churn"}, {"Name": "VariantName", "Value": "v-v1"}]
    boto3.client("cloudwatch", **setup).put_metric_data(Namespace="AWS/SageMaker", MetricData=[
        {"MetricName": "Invocations", "Dimensions": dims, "Value": 100.0,
         "Timestamp": datetime.fromtimestamp(T0 + minute * PERIOD_S + 30, UTC)} for minute in range(3)])

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({
        "conn_type": "aws", "login": key["AccessKeyId"], "password": key["SecretAccessKey"], "extra": {
            "region_name": REGION, "endpoint_url": moto_url, "service_config": {"sts": {"endpoint_url": moto_url}},
            "role_arn": ROLE_ARN, "assume_role_method": "assume_role",
            "assume_role_kwargs": {"DurationSeconds": DURATION_S},
            "config_kwargs": {"parameter_validation": False}}}))
    monkeypatch.setattr(RefreshableCredentials, "_advisory_refresh_timeout", ADVISORY_REFRESH_S)
    monkeypatch.setattr(RefreshableCredentials, "_mandatory_refresh_timeout", MANDATORY_REFRESH_S)
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto's IAM auth on from now
    with expiring_credentials() as credential_log:
        yield credential_log


def outlived_first_credentials(seen: list[SeenRequest]) -> bool:
    """Return whether a request in ``seen`` was signed after the credentials of the first one had expired."""
    if not seen:
        return False
    first = CredentialLog.assumed_role(seen[0].access_key)
    return first is not None and any(r.at > first.expiration for r in seen)


def assert_rotated_and_never_refused(seen: list[SeenRequest]) -> None:
    """Every request succeeded, each signed with credentials of the role, and they changed after expiry."""
    assert seen and not [r for r in seen if r.refused], [r for r in seen if r.refused]
    assert all(r.at.microsecond == 0 for r in seen)  # judged at the signing time (X-Amz-Date), not arrival
    roles = {r.access_key: CredentialLog.assumed_role(r.access_key) for r in seen}
    assert all(role is not None and role.role_arn == ROLE_ARN for role in roles.values()), roles
    first, last = seen[0], seen[-1]
    assert last.access_key != first.access_key
    assert roles[first.access_key].expiration < last.at  # the first credentials were dead by then
    assert len(roles) >= 2


def frozen_client(access_key: str, moto_url: str, service: str) -> Any:
    """A client holding the credentials STS issued with ``access_key``, frozen (what the old hook built)."""
    role = CredentialLog.assumed_role(access_key)
    return aws_client(ConnInfo(conn_id="frozen", login=access_key, password=role.secret_access_key, extra={
        "region_name": REGION, "endpoint_url": moto_url, "aws_session_token": role.session_token}), service,
        max_attempts=1)


def test_serving_change_trigger_outlives_its_assumed_role_credentials(log: CredentialLog, moto_url: str) -> None:
    from botocore.exceptions import ClientError

    with update_endpoint_extension(updating_s=math.inf) as control:
        router = CanaryServingHook("sagemaker", CONN_ID, endpoint="churn", poll_interval_s=0.2).router
        router.without_waiting().deploy("v2")
        pending = router.without_waiting().pending_change()
        assert pending is not None and pending.state == "Updating"
        before = {r.access_key for r in log.requests}
        trigger = ServingChangeTrigger(serving={"name": "sagemaker", "conn_id": CONN_ID,
                                                "options": {"endpoint": "churn", "poll_interval_s": 0.2}},
                                       pending=pending.to_dict(), deadline_s=time.time() + 60)

        def trigger_calls() -> list[SeenRequest]:
            return [r for r in log.seen("sagemaker", "DescribeEndpoint") if r.access_key not in before]

        async def go() -> list[dict]:
            events = asyncio.ensure_future(collect(trigger))
            while not outlived_first_credentials(trigger_calls()):  # the endpoint stays Updating meanwhile
                assert not events.done(), events.result()
                await asyncio.sleep(0.05)
            control.finish("churn")
            return await events

        (event,) = asyncio.run(asyncio.wait_for(go(), timeout=60))
    assert event["status"] == "settled", event
    calls = trigger_calls()
    assert_rotated_and_never_refused(calls)
    # The trigger's first credentials, had they been frozen into its client, are refused now.
    with pytest.raises(ClientError, match="ExpiredTokenException"):
        frozen_client(calls[0].access_key, moto_url, "sagemaker").describe_endpoint(EndpointName="churn")


def test_cloudwatch_source_built_once_outlives_its_assumed_role_credentials(log: CredentialLog) -> None:
    source = asyncio.run(CanaryMetricsHook("cloudwatch", CONN_ID, endpoint="churn").aclient())  # as the trigger
    first = source.version_stats("v1", start_s=T0, end_s=T0 + 3 * PERIOD_S)
    assert first.requests == 300
    deadline = time.monotonic() + 60
    while not outlived_first_credentials(log.seen("cloudwatch", "GetMetricData")):
        assert time.monotonic() < deadline, log.seen("cloudwatch")
        time.sleep(0.2)  # the poll interval of this stand-in for the observe trigger
        assert source.version_stats("v1", start_s=T0, end_s=T0 + 3 * PERIOD_S) == first
    assert_rotated_and_never_refused(log.seen("cloudwatch", "GetMetricData"))


def test_a_router_with_frozen_credentials_fails_once_they_expire(log: CredentialLog, moto_url: str) -> None:
    """The control: what the hooks did before (freeze the credentials when building the backend) fails here."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    creds = AwsBaseHook(aws_conn_id=CONN_ID, client_type="sagemaker").get_credentials()
    router = SageMakerTrafficRouter(ConnInfo(conn_id=CONN_ID, login=creds.access_key, password=creds.secret_key, extra={
        "region_name": REGION, "endpoint_url": moto_url, "aws_session_token": creds.token}), endpoint="churn")
    assert router.get_weights() == {"v1": 100}
    deadline = time.monotonic() + 60
    with pytest.raises(BackendError, match="ExpiredTokenException"):
        while time.monotonic() < deadline:
            router.get_weights()
            time.sleep(0.2)
    refused = [r for r in log.seen("sagemaker", "DescribeEndpoint") if r.refused]
    assert refused and refused[0].access_key == creds.access_key
    assert refused[0].at >= CredentialLog.assumed_role(creds.access_key).expiration


async def collect(trigger: ServingChangeTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]
