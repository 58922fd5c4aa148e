from __future__ import annotations

import json

import pytest

from canary.backends.local_registry import LocalModelRegistry
from canary.backends.local_serving import LocalTrafficRouter
from canary.errors import ConfigError
from canary_airflow.hooks import CanaryRegistryHook, CanaryServingHook, aws_conn_info


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


def test_aws_connections_follow_the_amazon_provider_conventions(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_CANARY", json.dumps({
        "conn_type": "aws", "login": "AKIDEXAMPLE", "password": "secret",
        "extra": {"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:5000"}}))
    info = aws_conn_info("aws_canary")
    assert (info.login, info.password) == ("AKIDEXAMPLE", "secret")
    assert info.extra == {"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:5000"}
    assert "secret" not in repr(info)
