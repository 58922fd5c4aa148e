"""Event-driven rollout starts (``canary_registry_events``): registry watchers and pushed asset events."""

from __future__ import annotations

from canary_airflow.registry_events import build_registry_events_dag

canary_registry_events = build_registry_events_dag()
