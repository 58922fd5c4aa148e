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


def test_the_plugin_adds_the_rollout_tab_and_page_to_the_airflow_ui():
    from airflow import plugins_manager
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    from canary_airflow import links, ui

    views, _ = plugins_manager._get_ui_plugins()
    ours = {v["url_route"]: ExternalViewResponse.model_validate(v) for v in views
            if v["href"].startswith("canary/")}
    tab, page = ours[ui.RUN_TAB_ROUTE], ours[ui.NAV_ROUTE]
    assert (tab.name, tab.destination, tab.href) == ("Rollout", "dag_run", "canary/rollouts/{DAG_ID}/{RUN_ID}")
    assert (page.name, page.destination, page.href) == ("Rollouts", "nav", "canary/rollouts")
    # The extra link points at the tab Airflow shows for this url_route.
    assert links.rollout_tab_url("d", "r", base_url="http://x/").endswith(f"/plugin/{tab.url_route}")
    apps, _ = plugins_manager.get_fastapi_plugins()
    [app] = [a for a in apps if a["url_prefix"] == "/canary"]
    paths = {r.path for r in app["app"].routes}
    assert {"/rollouts", "/rollouts/{dag_id}/{run_id:path}", "/api/rollouts", "/mlflow/webhook"} <= paths
