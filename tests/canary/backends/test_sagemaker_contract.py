"""Contract tests of the exact SageMaker API calls the traffic router makes.

A real boto3 client with ``botocore.stub.Stubber``: requests and responses are validated against the
SageMaker service model, so this fakes only at the AWS API boundary. It covers the paths a moto server
cannot run: ``UpdateEndpoint`` (deploy, remove, shadow), shadow variants (moto drops them), endpoint
states other than InService, and error responses.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from canary.backends.aws import aws_client
from canary.backends.base import ConnInfo, TrafficRouter
from canary.backends.sagemaker import SageMakerTrafficRouter
from canary.errors import BackendError, ConfigError

ENDPOINT = "churn"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SECRET = "s3cr3t-never-shown"
ARN = f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{ENDPOINT}"


def endpoint(config: str = "churn-cfg1", status: str = "InService", variants: list[dict[str, Any]] | None = None,
             **more: Any) -> dict[str, Any]:
    return {"EndpointName": ENDPOINT, "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{ENDPOINT}",
            "EndpointConfigName": config, "EndpointStatus": status, "CreationTime": NOW, "LastModifiedTime": NOW,
            "ProductionVariants": variants if variants is not None else [live("v-v1", 1.0, 2)], **more}


def live(name: str, weight: float | None, count: int) -> dict[str, Any]:
    variant: dict[str, Any] = {"VariantName": name, "CurrentInstanceCount": count, "DesiredInstanceCount": count}
    if weight is not None:  # SageMaker (and moto) may omit CurrentWeight
        variant["CurrentWeight"] = weight
    return variant


def spec_variant(name: str, model: str, weight: float, count: int = 1) -> dict[str, Any]:
    return {"VariantName": name, "ModelName": model, "InstanceType": "ml.m5.large", "InitialInstanceCount": count,
            "InitialVariantWeight": weight}


def config(name: str, variants: list[dict[str, Any]], shadow: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body = {"EndpointConfigName": name, "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:1:endpoint-config/{name}",
            "ProductionVariants": variants, "CreationTime": NOW}
    if shadow:
        body["ShadowProductionVariants"] = shadow
    return body


class Harness:
    def __init__(self) -> None:
        self.client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="AKIATEST",
                                   aws_secret_access_key=SECRET)
        self.stub = Stubber(self.client)
        self.sleeps: list[float] = []
        self.now = 0.0

    def router(self, **options: Any) -> SageMakerTrafficRouter:
        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.now += seconds

        return SageMakerTrafficRouter(ConnInfo(conn_id="aws_test"), endpoint=ENDPOINT, sagemaker_client=self.client,
                                      poll_interval_s=10.0, wait_timeout_s=60.0, sleep=sleep,
                                      clock=lambda: self.now, **options)

    def ok(self, method: str, response: dict[str, Any], params: dict[str, Any] | None = None) -> None:
        self.stub.add_response(method, response, params)

    def error(self, method: str, code: str, message: str, status: int = 400,
              params: dict[str, Any] | None = None) -> None:
        self.stub.add_client_error(method, service_error_code=code, service_message=message,
                                   http_status_code=status, expected_params=params)

    def create_and_switch(self, router: SageMakerTrafficRouter, body: dict[str, Any]) -> str:
        """Expect a new config with ``body`` to be created and the endpoint switched to it."""
        name = router.config_name(body)
        self.error("describe_endpoint_config", "ValidationException", "Could not find endpoint configuration",
                   params={"EndpointConfigName": name})
        self.ok("create_endpoint_config", {"EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:1:endpoint-config/{name}"},
                {"EndpointConfigName": name, **body})
        self.ok("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/churn"},
                {"EndpointName": ENDPOINT, "EndpointConfigName": name})
        return name


@pytest.fixture
def aws() -> Any:
    harness = Harness()
    with harness.stub:
        yield harness
        harness.stub.assert_no_pending_responses()


def test_router_satisfies_the_protocol(aws: Harness) -> None:
    assert isinstance(aws.router(), TrafficRouter)


def test_deploy_adds_the_variant_at_weight_zero_with_the_primarys_instances(aws: Harness) -> None:
    router = aws.router()
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 1.0, 3)]), {"EndpointName": ENDPOINT})
    aws.ok("describe_endpoint_config", config("churn-cfg1", [spec_variant("v-v1", "churn-v1", 1.0, 2)]),
           {"EndpointConfigName": "churn-cfg1"})
    aws.ok("describe_model", {"ModelName": "churn-v2", "ModelArn": "arn:aws:sagemaker:us-east-1:1:model/churn-v2",
                              "CreationTime": NOW}, {"ModelName": "churn-v2"})
    # The current instance count (3, after autoscaling) replaces the config's stale 2.
    body = {"ProductionVariants": [spec_variant("v-v1", "churn-v1", 1.0, 3), spec_variant("v-v2", "churn-v2", 0.0, 3)]}
    name = aws.create_and_switch(router, body)
    aws.ok("describe_endpoint", endpoint(name, "Updating"))
    aws.ok("describe_endpoint", endpoint(name, "InService"))
    router.deploy("v2")
    assert aws.sleeps == [10.0]


def test_deploy_keeps_current_weights_and_honours_overrides(aws: Harness) -> None:
    router = aws.router(instance_type="ml.g5.xlarge", initial_instance_count=1, model_name_template="m-{version}",
                        wait=False)
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 70.0, 2), live("v-v2", 30.0, 1)]))
    aws.ok("describe_endpoint_config", config("churn-cfg1", [spec_variant("v-v1", "m-v1", 1.0, 2),
                                                             spec_variant("v-v2", "m-v2", 0.0, 1)]))
    aws.ok("describe_model", {"ModelName": "m-v3", "ModelArn": "arn:aws:sagemaker:us-east-1:1:model/m-v3",
                              "CreationTime": NOW}, {"ModelName": "m-v3"})
    new = dict(spec_variant("v-v3", "m-v3", 0.0, 1), InstanceType="ml.g5.xlarge")
    aws.create_and_switch(router, {"ProductionVariants": [spec_variant("v-v1", "m-v1", 70.0, 2),
                                                          spec_variant("v-v2", "m-v2", 30.0, 1), new]})
    router.deploy("v3")  # wait=False: no DescribeEndpoint after UpdateEndpoint


def test_deploy_is_a_no_op_when_the_variant_exists(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 1.0, 1), live("v-v2", None, 1)]))
    aws.router().deploy("v2")


def test_deploy_retry_reuses_the_config_it_created(aws: Harness) -> None:
    router = aws.router(wait=False)
    aws.ok("describe_endpoint", endpoint())
    aws.ok("describe_endpoint_config", config("churn-cfg1", [spec_variant("v-v1", "churn-v1", 1.0, 1)]))
    aws.ok("describe_model", {"ModelName": "churn-v2", "ModelArn": "arn:aws:sagemaker:us-east-1:1:model/churn-v2",
                              "CreationTime": NOW})
    body = {"ProductionVariants": [spec_variant("v-v1", "churn-v1", 1.0, 2), spec_variant("v-v2", "churn-v2", 0.0, 2)]}
    name = router.config_name(body)
    aws.ok("describe_endpoint_config", config(name, body["ProductionVariants"]), {"EndpointConfigName": name})
    aws.ok("update_endpoint", {"EndpointArn": ARN}, {"EndpointName": ENDPOINT, "EndpointConfigName": name})
    router.deploy("v2")


def test_deploy_of_a_model_that_does_not_exist_names_model_and_code(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint())
    aws.ok("describe_endpoint_config", config("churn-cfg1", [spec_variant("v-v1", "churn-v1", 1.0)]))
    aws.error("describe_model", "ValidationException", "Could not find model churn-v9.")
    with pytest.raises(BackendError) as err:
        aws.router().deploy("v9")
    text = str(err.value)
    for part in ("DescribeModel", "'churn'", "'v-v9'", "'churn-v9'", "ValidationException", "Could not find model"):
        assert part in text
    assert err.value.status == 400


def test_deploy_waits_for_an_update_in_progress_first(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint(status="Updating"))
    aws.ok("describe_endpoint", endpoint(status="Updating"))
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 1.0, 1), live("v-v2", 0.0, 1)]))
    aws.router().deploy("v2")
    assert aws.sleeps == [10.0]


def test_set_weights_sends_every_variant_with_float_weights_and_instance_counts(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 1.0, 2), live("v-v2", None, 1)]))
    aws.ok("update_endpoint_weights_and_capacities", {"EndpointArn": ARN}, {
        "EndpointName": ENDPOINT,
        "DesiredWeightsAndCapacities": [
            {"VariantName": "v-v1", "DesiredWeight": 90.0, "DesiredInstanceCount": 2},
            {"VariantName": "v-v2", "DesiredWeight": 10.0, "DesiredInstanceCount": 1}]})
    aws.ok("describe_endpoint", endpoint(status="Updating"))
    aws.ok("describe_endpoint", endpoint())
    aws.router().set_weights({"v1": 90, "v2": 10})


def test_set_weights_gives_unnamed_variants_zero(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 50.0, 1), live("v-v2", 50.0, 1)]))
    aws.ok("update_endpoint_weights_and_capacities", {"EndpointArn": ARN}, {
        "EndpointName": ENDPOINT,
        "DesiredWeightsAndCapacities": [
            {"VariantName": "v-v1", "DesiredWeight": 100.0, "DesiredInstanceCount": 1},
            {"VariantName": "v-v2", "DesiredWeight": 0.0, "DesiredInstanceCount": 1}]})
    aws.router(wait=False).set_weights({"v1": 100})


def test_set_weights_is_a_no_op_when_the_split_is_already_there(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 0.9, 1), live("v-v2", 0.1, 1)]))
    aws.router().set_weights({"v1": 90, "v2": 10})


@pytest.mark.parametrize("weights", [{"v1": 90, "v2": 20}, {"v1": 100.0}, {"v1": -5, "v2": 105}])
def test_set_weights_rejects_a_split_that_is_not_percents_summing_to_100(aws: Harness, weights: dict) -> None:
    with pytest.raises(BackendError, match="summing to 100"):
        aws.router().set_weights(weights)


def test_set_weights_refuses_a_version_that_is_not_deployed(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint())
    with pytest.raises(BackendError, match=r"\['v7'\] are not deployed \(deployed: \['v1'\]\)"):
        aws.router().set_weights({"v1": 50, "v7": 50})


def test_set_weights_with_wait_false_refuses_an_updating_endpoint(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint(status="Updating"))
    with pytest.raises(BackendError, match="'churn' is Updating"):
        aws.router(wait=False).set_weights({"v1": 100})


def test_get_weights_normalises_current_weights_to_percent(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 2.0, 1), live("v-v2", 1.0, 1), live("v-v3", None, 1)]))
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 0.0, 1)]))
    router = aws.router()
    assert router.get_weights() == {"v1": 67, "v2": 33, "v3": 0}
    assert router.get_weights() == {"v1": 0}


def test_remove_creates_a_config_without_the_variant(aws: Harness) -> None:
    router = aws.router()
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 100.0, 2), live("v-v2", 0.0, 1)]))
    aws.ok("describe_endpoint_config", config("churn-cfg1", [spec_variant("v-v1", "churn-v1", 1.0, 2),
                                                             spec_variant("v-v2", "churn-v2", 0.0, 1)]))
    name = aws.create_and_switch(router, {"ProductionVariants": [spec_variant("v-v1", "churn-v1", 100.0, 2)]})
    aws.ok("describe_endpoint", endpoint(name))
    router.remove("v2")


def test_remove_is_a_no_op_when_absent_and_refuses_a_variant_with_traffic(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint())
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 90.0, 1), live("v-v2", 10.0, 1)]))
    router = aws.router()
    router.remove("v9")
    with pytest.raises(BackendError, match="while it holds weight 10"):
        router.remove("v2")


def test_update_rolled_back_by_sagemaker_is_an_error(aws: Harness) -> None:
    router = aws.router()
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 100.0, 1), live("v-v2", 0.0, 1)]))
    aws.ok("describe_endpoint_config", config("churn-cfg1", [spec_variant("v-v1", "churn-v1", 1.0),
                                                             spec_variant("v-v2", "churn-v2", 0.0)]))
    name = aws.create_and_switch(router, {"ProductionVariants": [spec_variant("v-v1", "churn-v1", 100.0)]})
    aws.ok("describe_endpoint", endpoint("churn-cfg1", FailureReason="Image pull failed"))
    with pytest.raises(BackendError, match=f"not '{name}': the update was rolled back \\(Image pull failed\\)"):
        router.remove("v2")


@pytest.mark.parametrize("status", ["Failed", "OutOfService"])
def test_wait_stops_on_a_failed_endpoint(aws: Harness, status: str) -> None:
    aws.ok("describe_endpoint", endpoint(status=status, FailureReason="capacity"))
    with pytest.raises(BackendError, match=f"is {status}: capacity"):
        aws.router().wait_until_in_service()


def test_wait_is_bounded(aws: Harness) -> None:
    for _ in range(7):
        aws.ok("describe_endpoint", endpoint(status="Updating"))
    with pytest.raises(BackendError, match="still Updating after 60s"):
        aws.router().wait_until_in_service()
    assert sum(aws.sleeps) == 60.0


def test_endpoint_status_is_one_describe_call_for_a_deferred_wait(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint(status="Updating"))
    assert aws.router().endpoint_status() == {"status": "Updating", "config": "churn-cfg1", "failure_reason": None}


def test_set_mirror_runs_the_candidate_as_the_only_shadow_variant(aws: Harness) -> None:
    """SageMaker pairs one production variant with one shadow variant: the 0% candidate becomes the shadow."""
    router = aws.router()
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 100.0, 2), live("v-v2", 0.0, 1)]))
    aws.ok("describe_endpoint_config", config("churn-cfg1", [spec_variant("v-v1", "churn-v1", 1.0, 2),
                                                             spec_variant("v-v2", "churn-v2", 0.0, 1)]))
    aws.ok("describe_model", {"ModelName": "churn-v2", "ModelArn": "arn:aws:sagemaker:us-east-1:1:model/churn-v2",
                              "CreationTime": NOW}, {"ModelName": "churn-v2"})
    stable = spec_variant("v-v1", "churn-v1", 1.0, 2)
    shadow = spec_variant("v-v2", "churn-v2", 1.0, 1)
    name = aws.create_and_switch(router, {"ProductionVariants": [stable], "ShadowProductionVariants": [shadow]})
    aws.ok("describe_endpoint", endpoint(name, variants=[live("v-v1", 1.0, 2)]))
    router.set_mirror("v2", 100)

    # Stopping removes the shadow variant and keeps the production variant as it is.
    aws.ok("describe_endpoint", endpoint(name, variants=[live("v-v1", 1.0, 2)]))
    aws.ok("describe_endpoint_config", config(name, [stable], [shadow]))
    stopped = aws.create_and_switch(router, {"ProductionVariants": [stable]})
    aws.ok("describe_endpoint", endpoint(stopped, variants=[live("v-v1", 1.0, 2)]))
    router.set_mirror(None)


def test_set_mirror_refuses_a_sampling_percentage(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint())
    aws.ok("describe_endpoint_config", config("churn-cfg1", [spec_variant("v-v1", "churn-v1", 1.0)]))
    with pytest.raises(BackendError, match="mirroring 50% is not supported"):
        aws.router().set_mirror("v2", 50)


def test_set_mirror_refuses_two_serving_variants(aws: Harness) -> None:
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 50.0, 1), live("v-v2", 50.0, 1)]))
    aws.ok("describe_endpoint_config", config("churn-cfg1", [spec_variant("v-v1", "churn-v1", 1.0),
                                                             spec_variant("v-v2", "churn-v2", 1.0)]))
    with pytest.raises(BackendError, match="exactly one serving production variant"):
        aws.router().set_mirror("v3")


@pytest.mark.parametrize(("code", "status", "hint"), [
    ("ValidationException", 400, None),
    ("AccessDeniedException", 403, "lack this SageMaker permission"),
    ("ResourceLimitExceeded", 400, "quota"),
])
def test_client_errors_carry_operation_endpoint_code_and_message(aws: Harness, code: str, status: int,
                                                                  hint: str | None) -> None:
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 1.0, 1), live("v-v2", 0.0, 1)]))
    aws.error("update_endpoint_weights_and_capacities", code, "The variant is not in service.", status)
    with pytest.raises(BackendError) as err:
        aws.router().set_weights({"v1": 50, "v2": 50})
    text = str(err.value)
    assert text.startswith("sagemaker: UpdateEndpointWeightsAndCapacities on endpoint 'churn' failed: "
                           f"{code}: The variant is not in service.")
    assert err.value.status == status
    assert (hint in text) if hint else "(" not in text
    assert SECRET not in text and "AKIATEST" not in text
    assert err.value.__cause__ is not None


def test_missing_endpoint_is_a_backend_error(aws: Harness) -> None:
    aws.error("describe_endpoint", "ValidationException", "Could not find endpoint churn.")
    with pytest.raises(BackendError, match="DescribeEndpoint on endpoint 'churn' failed: ValidationException"):
        aws.router().get_weights()


def test_client_from_connection_follows_the_aws_connection_conventions() -> None:
    conn = ConnInfo(conn_id="aws_default", login="AKIAEXAMPLE", password=SECRET,
                    extra={"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:1",
                           "aws_session_token": "token",
                           "service_config": {"cloudwatch": {"endpoint_url": "http://127.0.0.1:2"}}})
    sagemaker = aws_client(conn, "sagemaker")
    cloudwatch = aws_client(conn, "cloudwatch")
    assert sagemaker.meta.region_name == "eu-west-1"
    assert sagemaker.meta.endpoint_url == "http://127.0.0.1:1"
    assert cloudwatch.meta.endpoint_url == "http://127.0.0.1:2"
    assert SECRET not in repr(conn)


@pytest.mark.parametrize(("conn", "match"), [
    (ConnInfo(login="AKIA", extra={"region_name": "us-east-1"}), "set both login"),
    (ConnInfo(extra={"region_name": "us-east-1", "role_arn": "arn:aws:iam::1:role/r"}), "role_arn"),
])
def test_client_from_connection_rejects_what_the_core_cannot_honour(conn: ConnInfo, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        aws_client(conn, "sagemaker")


def test_bad_options_are_configuration_errors() -> None:
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    with pytest.raises(ConfigError, match="model_name_template"):
        SageMakerTrafficRouter(ConnInfo(), endpoint=ENDPOINT, model_name_template="{model}-{version}",
                               sagemaker_client=client)
    with pytest.raises(ConfigError, match="initial_instance_count"):
        SageMakerTrafficRouter(ConnInfo(), endpoint=ENDPOINT, initial_instance_count=0, sagemaker_client=client)


def test_without_waiting_returns_after_update_endpoint_and_pending_change_names_the_config(aws: Harness) -> None:
    """The deferrable path: issue the change, check once, hand the expected config to a trigger."""
    from canary.backends import PendingChange

    router = aws.router().without_waiting()
    aws.ok("describe_endpoint", endpoint(variants=[live("v-v1", 100.0, 1), live("v-v2", 0.0, 1)]))
    aws.ok("describe_endpoint_config", config("churn-cfg1", [spec_variant("v-v1", "churn-v1", 1.0),
                                                             spec_variant("v-v2", "churn-v2", 0.0)]))
    name = aws.create_and_switch(router, {"ProductionVariants": [spec_variant("v-v1", "churn-v1", 100.0)]})
    router.remove("v2")  # no DescribeEndpoint after UpdateEndpoint: nothing waits
    assert aws.sleeps == []

    aws.ok("describe_endpoint", endpoint(name, "Updating"), {"EndpointName": ENDPOINT})
    pending = router.pending_change()
    assert pending == PendingChange(backend="sagemaker", resource="endpoint 'churn'", state="Updating",
                                    token={"endpoint": ENDPOINT, "expected_config": name}, poll_interval_s=10.0,
                                    timeout_s=60.0)
    assert PendingChange.from_dict(json.loads(json.dumps(pending.to_dict()))) == pending
    # Another process (the trigger) with a fresh router checks against the token, not its own history.
    aws.ok("describe_endpoint", endpoint(name, "InService"))
    assert aws.router().pending_change(pending) is None


def test_pending_change_fails_on_a_rolled_back_update_and_on_a_failed_endpoint(aws: Harness) -> None:
    from canary.backends import PendingChange
    from canary.errors import ChangeFailedError

    pending = PendingChange(backend="sagemaker", resource="endpoint 'churn'", state="Updating",
                            token={"endpoint": ENDPOINT, "expected_config": "churn-new"})
    aws.ok("describe_endpoint", endpoint("churn-cfg1", FailureReason="Image pull failed"))
    with pytest.raises(ChangeFailedError, match="InService on config 'churn-cfg1', not 'churn-new': the update "
                                                "was rolled back \\(Image pull failed\\)"):
        aws.router().pending_change(pending)
    aws.ok("describe_endpoint", endpoint("churn-new", "Failed", FailureReason="capacity"))
    with pytest.raises(ChangeFailedError, match="'churn' is Failed: capacity; fix the endpoint"):
        aws.router().pending_change(pending)
    # A weight shift names no config: InService on any config is settled.
    aws.ok("describe_endpoint", endpoint("churn-cfg1"))
    assert aws.router().pending_change() is None
