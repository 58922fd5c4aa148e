"""One canary rollout DAG per spec in include/rollouts (``canary_rollout__<model>``)."""

from __future__ import annotations

from canary_airflow.factory import register_dags

register_dags(globals())
