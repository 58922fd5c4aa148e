"""Register canary-rollouts with Airflow (the packages themselves are imported normally)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class CanaryRolloutsPlugin(AirflowPlugin):
    """Marker plugin: makes the project visible in ``airflow plugins``."""

    name = "canary_rollouts"
