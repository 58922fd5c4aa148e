"""Register canary-rollouts with Airflow (the packages themselves are imported normally)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.plugins_manager import AirflowPlugin


class CanaryRolloutsPlugin(AirflowPlugin):
    """Shows the project in ``airflow plugins``; the API server also serves the MLflow webhook receiver.

    The receiver's app is built only when the API server asks for it, so no other component imports
    FastAPI for it.
    """

    name = "canary_rollouts"

    @cached_property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from canary_airflow.webhook_receiver import URL_PREFIX, create_app

        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "canary-rollouts MLflow webhook receiver"}]
