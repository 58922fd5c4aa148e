from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from canary.backends.local_registry import LocalModelRegistry
from canary.backends.local_serving import LocalTrafficRouter
from canary.errors import ConfigError
from canary_airflow.hooks import (
    AwsClientFactory,
    CanaryMetricsHook,
    CanaryRegistryHook,
    CanaryServingHook,
    aws_conn_info,
)


def test_hooks_build_the_named_backend_from_the_connection(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_MY_SERVING", json.dumps(
        {"conn_type": "canary_serving", "host": "127.0.0.1", "port": 8790, "password": "s3cret"}))
    monkeypatch.setenv("AIRFLOW_CONN_CANARY_REGISTRY_DEFAULT", json.dumps(
        {"conn_type": "canary_registry", "extra": {"path": str(tmp_path / "r.json")}}))
    router = CanaryServingHook("local", "my_serving", endpoint="churn").router
    assert isinstance(router, LocalTrafficRouter)
    assert "s3cret" not in repr(router)
    registry = CanaryRegistryHook("local").registry  # default connection id
    assert isinstance(registry, LocalModelRegistry) and registry.path == tmp_path / "r.json"


def test_unknown_backend_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MY_SERVING", json.dumps({"conn_type": "canary_serving", "host": "h"}))
    with pytest.raises(ConfigError, match="unknown serving backend 'k8s'; known: local, sagemaker"):
        _ = CanaryServingHook("k8s", "my_serving").router


def aws_connection(monkeypatch, conn_id: str, **extra: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(
        {"conn_type": "aws", "login": "AKIDEXAMPLE", "password": "secret", "extra": extra}))


def test_aws_conn_info_resolves_nothing_and_hands_over_the_providers_client_factory(monkeypatch):
    aws_connection(monkeypatch, "aws_canary", region_name="eu-west-1")
    info = aws_conn_info("aws_canary")
    # No credentials frozen into the value: the backend's client comes from the provider's session.
    assert (info.login, info.password, dict(info.extra)) == (None, None, {})
    assert isinstance(info.client_factory, AwsClientFactory) and info.client_factory.aws_conn_id == "aws_canary"
    assert "secret" not in repr(info)


@pytest.mark.parametrize("verify", [False, "/etc/ssl/certs/corporate-ca.pem"])
def test_every_aws_connection_field_reaches_the_backends_clients(monkeypatch, verify):
    aws_connection(monkeypatch, "aws_canary", region_name="eu-west-1", endpoint_url="http://127.0.0.1:5000",
                   verify=verify, config_kwargs={"connect_timeout": 7, "read_timeout": 11},
                   service_config={"cloudwatch": {"endpoint_url": "http://127.0.0.1:5002"}})
    sagemaker = CanaryServingHook("sagemaker", "aws_canary", endpoint="churn").router._client
    cloudwatch = CanaryMetricsHook("cloudwatch", "aws_canary", endpoint="churn").source._client
    for client in (sagemaker, cloudwatch):
        assert client.meta.region_name == "eu-west-1"
        assert client._endpoint.http_session._verify == verify
        config = client.meta.config
        assert (config.connect_timeout, config.read_timeout) == (7, 11)  # config_kwargs
        # The backends' default (client_config: standard mode, 5 retries) where the connection is silent.
        assert config.retries == {"mode": "standard", "total_max_attempts": 6}
        assert "Airflow/" in config.user_agent_extra  # built by the provider's hook
        assert client._request_signer._credentials.get_frozen_credentials().access_key == "AKIDEXAMPLE"
    assert sagemaker.meta.endpoint_url == "http://127.0.0.1:5000"
    assert cloudwatch.meta.endpoint_url == "http://127.0.0.1:5002"  # service_config wins for its service


def test_connection_config_kwargs_override_the_backends_default_retries(monkeypatch):
    aws_connection(monkeypatch, "aws_canary", region_name="eu-west-1",
                   config_kwargs={"retries": {"mode": "adaptive", "max_attempts": 9}})
    client = CanaryServingHook("sagemaker", "aws_canary", endpoint="churn").router._client
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 10}


def test_aws_profile_from_the_connection_supplies_the_credentials(monkeypatch, tmp_path):
    credentials = tmp_path / "credentials"
    credentials.write_text("[canary]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AIRFLOW_CONN_AWS_PROFILE", json.dumps(
        {"conn_type": "aws", "extra": {"profile_name": "canary", "region_name": "eu-west-1"}}))
    client = CanaryMetricsHook("cloudwatch", "aws_profile", endpoint="churn").source._client
    assert client._request_signer._credentials.get_frozen_credentials().access_key == "AKIDPROFILE"


def test_aws_backends_are_built_off_the_event_loop_in_triggers(monkeypatch):
    """The provider reads the connection (and may call STS) synchronously: aclient builds in a thread."""
    import threading

    aws_connection(monkeypatch, "aws_canary", region_name="eu-west-1")
    built_in: list[threading.Thread] = []
    factory_call = AwsClientFactory.__call__

    def spy(self, service, *, config):
        built_in.append(threading.current_thread())
        return factory_call(self, service, config=config)

    monkeypatch.setattr(AwsClientFactory, "__call__", spy)
    router = asyncio.run(CanaryServingHook("sagemaker", "aws_canary", endpoint="churn").aclient())
    assert router._client.meta.region_name == "eu-west-1"
    assert built_in and built_in[0] is not threading.main_thread()
