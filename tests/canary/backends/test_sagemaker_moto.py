"""The SageMaker traffic router against a real moto server (``ThreadedMotoServer`` on 127.0.0.1).

What moto 5.2 runs here: CreateModel/EndpointConfig/Endpoint, DescribeEndpoint(Config), DescribeModel and
UpdateEndpointWeightsAndCapacities, so reading and shifting weights, the no-op deploy of a variant that is
already there and the error on a missing endpoint are exercised end to end over HTTP.

What moto cannot exercise (covered by ``test_sagemaker_contract.py`` with the exact boto3 calls instead):
``UpdateEndpoint`` is not implemented (moto answers HTTP 500). The tests marked "extension" add it on the
test side (``moto_harness.update_endpoint_extension``: the endpoint takes the new config's variants, as
AWS does when the update finishes) to run deploy and remove against moto's configs and endpoints; the
update itself is then the extension's, not moto's. Shadow variants (``ShadowProductionVariants``) are silently
dropped from endpoint configs; endpoints are InService at once, so waits never poll; a variant created
at weight 0 comes back without ``CurrentWeight``; ``InvokeEndpoint`` ignores the weights.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from canary.backends.aws import aws_client
from canary.backends.base import ConnInfo
from canary.backends.sagemaker import SageMakerTrafficRouter
from canary.errors import BackendError, ChangeFailedError

pytestmark = pytest.mark.integration

ROLE = "arn:aws:iam::123456789012:role/sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/churn:latest"


def create_endpoint(client: Any, endpoint: str, weights: dict[str, float]) -> None:
    """Create one model per version and an endpoint with a variant ``v-<version>`` per version."""
    variants = []
    for version, weight in weights.items():
        client.create_model(ModelName=f"{endpoint}-{version}", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
        variants.append({"VariantName": f"v-{version}", "ModelName": f"{endpoint}-{version}",
                         "InstanceType": "ml.m5.large", "InitialInstanceCount": 1, "InitialVariantWeight": weight})
    client.create_endpoint_config(EndpointConfigName=f"{endpoint}-initial", ProductionVariants=variants)
    client.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-initial")


def test_weights_shift_and_read_back(aws_conn: ConnInfo) -> None:
    create_endpoint(aws_client(aws_conn, "sagemaker"), "churn", {"v1": 1.0, "v2": 0.0})
    router = SageMakerTrafficRouter(aws_conn, endpoint="churn", poll_interval_s=0.1)
    assert router.get_weights() == {"v1": 100, "v2": 0}
    router.deploy("v2")  # already a variant: no UpdateEndpoint call, which moto could not answer
    for split in ({"v1": 95, "v2": 5}, {"v1": 50, "v2": 50}, {"v2": 100}, {"v1": 100}):
        router.set_weights(split)
        assert router.get_weights() == {"v1": split.get("v1", 0), "v2": split.get("v2", 0)}


def test_weights_stay_whole_percents_with_three_variants(aws_conn: ConnInfo) -> None:
    create_endpoint(aws_client(aws_conn, "sagemaker"), "fraud", {"a": 1.0, "b": 1.0, "c": 1.0})
    router = SageMakerTrafficRouter(aws_conn, endpoint="fraud")
    assert router.get_weights() == {"a": 34, "b": 33, "c": 33}
    router.set_weights({"a": 80, "b": 15, "c": 5})
    assert router.get_weights() == {"a": 80, "b": 15, "c": 5}
    with pytest.raises(BackendError, match=r"\['z'\] are not deployed"):
        router.set_weights({"a": 50, "z": 50})


def test_missing_endpoint_is_a_backend_error(aws_conn: ConnInfo) -> None:
    router = SageMakerTrafficRouter(aws_conn, endpoint="nowhere")
    with pytest.raises(BackendError, match="DescribeEndpoint on endpoint 'nowhere' failed: ValidationException"):
        router.get_weights()


def test_extension_deploy_shift_promote_and_remove_on_moto(aws_conn: ConnInfo) -> None:
    """UpdateEndpoint is the test-side extension; configs, models, DescribeEndpoint and weights are moto's."""
    from moto_harness import update_endpoint_extension

    client = aws_client(aws_conn, "sagemaker")
    create_endpoint(client, "churn", {"v1": 1.0})
    client.create_model(ModelName="churn-v2", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    with update_endpoint_extension(updating_s=0.3):
        router = SageMakerTrafficRouter(aws_conn, endpoint="churn", poll_interval_s=0.1, wait_timeout_s=10)
        router.deploy("v2")  # waits (polls moto) until the endpoint is InService on the new config
        described = client.describe_endpoint(EndpointName="churn")
        assert described["EndpointStatus"] == "InService"
        config = client.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
        assert [(v["VariantName"], v["ModelName"], v["InitialInstanceCount"]) for v in config["ProductionVariants"]] \
            == [("v-v1", "churn-v1", 1), ("v-v2", "churn-v2", 1)]
        assert router.get_weights() == {"v1": 100, "v2": 0}
        router.deploy("v2")  # a retry is a no-op
        router.set_weights({"v1": 50, "v2": 50})
        assert router.get_weights() == {"v1": 50, "v2": 50}
        router.set_weights({"v2": 100})
        router.remove("v1")
        assert router.get_weights() == {"v2": 100}
        assert [v["VariantName"] for v in client.describe_endpoint(EndpointName="churn")["ProductionVariants"]] \
            == ["v-v2"]

    with update_endpoint_extension(updating_s=math.inf) as control:  # Updating until finished below
        quick = router.without_waiting()
        quick.deploy("v1")  # returns while the endpoint is Updating; the deferrable tasks check once
        pending = quick.pending_change()
        assert pending is not None and pending.state == "Updating"
        assert pending.token["expected_config"] == client.describe_endpoint(EndpointName="churn")["EndpointConfigName"]
        with pytest.raises(BackendError, match="'churn' is Updating; wait until it is InService"):
            quick.set_weights({"v1": 50, "v2": 50})  # nothing is stacked on an update in progress
        control.finish("churn")
        assert SageMakerTrafficRouter(aws_conn, endpoint="churn").pending_change(pending) is None
        assert router.get_weights() == {"v1": 0, "v2": 100}


def test_pending_change_on_another_config_is_a_change_failure(aws_conn: ConnInfo) -> None:
    from canary.backends import PendingChange

    create_endpoint(aws_client(aws_conn, "sagemaker"), "churn", {"v1": 1.0})
    pending = PendingChange(backend="sagemaker", resource="endpoint 'churn'", state="Updating",
                            token={"endpoint": "churn", "expected_config": "churn-never-applied"})
    with pytest.raises(ChangeFailedError, match="InService on config 'churn-initial', not 'churn-never-applied'"):
        SageMakerTrafficRouter(aws_conn, endpoint="churn").pending_change(pending)
