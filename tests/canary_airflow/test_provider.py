"""The canary connection types are registered with Airflow (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

import warnings


def test_connection_types_reach_airflow_connection_form():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "canary-rollouts" in manager.providers, "run `make setup`: the package's entry point is not installed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooks = manager.hooks
    expected = {"canary_serving": "CanaryServingHook", "canary_metrics": "CanaryMetricsHook",
                "canary_registry": "CanaryRegistryHook", "canary_lock": "CanaryLockHook"}
    for conn_type, hook in expected.items():
        assert hooks[conn_type] is not None
        assert hooks[conn_type].hook_class_name == f"canary_airflow.hooks.{hook}"
    assert hooks["canary_airflow_api"].hook_class_name == "canary_airflow.run_notes.CanaryAirflowApiHook"
    assert manager.field_behaviours["canary_serving"]["relabeling"] == {"password": "Admin token"}
