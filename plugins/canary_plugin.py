"""Register canary-rollouts with Airflow (the packages themselves are imported normally)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.plugins_manager import AirflowPlugin


class CanaryRolloutsPlugin(AirflowPlugin):
    """Shows the project in ``airflow plugins``; the API server serves the MLflow webhook receiver and the
    rollout pages (a "Rollout" tab on every DAG run, a "Rollouts" page in the navigation).

    The receiver's app is built only when the API server asks for it, so no other component imports
    FastAPI for it.
    """

    name = "canary_rollouts"
    # The rollout pages (canary_airflow.ui) in the Airflow UI, each an iframe of the plugin app. A relative
    # href resolves against the UI's <base href>, i.e. the API server's base URL.
    external_views = [
        {"name": "Rollout", "href": "canary/rollouts/{DAG_ID}/{RUN_ID}", "destination": "dag_run",
         "url_route": "rollout"},
        {"name": "Rollouts", "href": "canary/rollouts", "destination": "nav", "url_route": "rollouts"},
    ]

    @cached_property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from canary_airflow.webhook_receiver import URL_PREFIX, create_app

        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "canary-rollouts webhook receiver and pages"}]
