"""Provider metadata: makes the canary connection types appear in Airflow's connection form."""

from __future__ import annotations

from typing import Any

_NOT_USED = ["schema", "login"]


def get_provider_info() -> dict[str, Any]:
    """Return the provider description Airflow's ProvidersManager reads (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "canary-rollouts",
        "name": "Canary rollouts",
        "description": "Statistically gated canary rollouts of ML models.",
        "versions": ["0.1.0"],
        "connection-types": [
            {
                "hook-class-name": "canary_airflow.hooks.CanaryServingHook",
                "connection-type": "canary_serving",
                "hook-name": "Canary model serving",
                "ui-field-behaviour": {
                    "hidden-fields": _NOT_USED,
                    "relabeling": {"password": "Admin token"},
                    "placeholders": {"host": "127.0.0.1", "port": "8790"},
                },
            },
            {
                "hook-class-name": "canary_airflow.hooks.CanaryMetricsHook",
                "connection-type": "canary_metrics",
                "hook-name": "Canary metrics store",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema"],
                    "relabeling": {},
                    "placeholders": {"extra": '{"path": "/data/metrics.db"} (local) or {"token": "..."} (Prometheus)',
                                     "host": "prometheus.monitoring (Prometheus) or empty (local)"},
                },
            },
            {
                "hook-class-name": "canary_airflow.hooks.CanaryRegistryHook",
                "connection-type": "canary_registry",
                "hook-name": "Canary model registry",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema"],
                    "relabeling": {},
                    "placeholders": {"extra": '{"path": "/data/registry.json"} (local)',
                                     "host": "https://mlflow.internal (MLflow) or empty (local)"},
                },
            },
            {
                "hook-class-name": "canary_airflow.hooks.CanaryLockHook",
                "connection-type": "canary_lock",
                "hook-name": "Canary endpoint lock",
                "ui-field-behaviour": {
                    "hidden-fields": [],
                    "relabeling": {"schema": "Database"},
                    "placeholders": {"extra": '{"path": "/data/canary_locks.db"} (local) or empty (postgres)',
                                     "host": "postgres.internal (postgres) or empty (local)"},
                },
            },
            {
                "hook-class-name": "canary_airflow.run_notes.CanaryAirflowApiHook",
                "connection-type": "canary_airflow_api",
                "hook-name": "Canary: Airflow REST API (run notes)",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"host": "API server URL"},
                    "placeholders": {"host": "http://airflow-apiserver:8080", "extra": '{"token": "..."} (optional)'},
                },
            },
        ],
    }
