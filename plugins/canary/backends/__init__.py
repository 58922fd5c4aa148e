"""Backend factory: backends are chosen by name in the spec; an unknown name is a configuration error."""

from __future__ import annotations

import importlib
from typing import Any

from canary.backends.base import (
    ConnInfo,
    LabelledMetricsSource,
    MetricsSource,
    ModelRegistry,
    PendingChange,
    SegmentedMetricsSource,
    SettlingTrafficRouter,
    ShadowOutputSource,
    ShadowSummary,
    TargetableMetricsSource,
    TargetingTrafficRouter,
    TrafficRouter,
    pending_change,
    shadow_outputs,
    within_population,
    without_waiting,
)
from canary.errors import ConfigError

__all__ = [
    "KNOWN_BACKENDS", "LABELLED_METRICS", "SEGMENTED_METRICS", "ConnInfo", "LabelledMetricsSource", "MetricsSource", "ModelRegistry", "PendingChange",
    "SegmentedMetricsSource", "SettlingTrafficRouter", "ShadowOutputSource", "ShadowSummary", "TARGETED_METRICS",
    "TARGETING_SERVING", "TargetableMetricsSource", "TargetingTrafficRouter", "TrafficRouter", "build_backend",
    "pending_change", "shadow_outputs", "within_population", "without_waiting",
]

#: role -> backend name -> "module:factory". Factories take ``(conn: ConnInfo, **options)``.
#: Imports are lazy so that reading a spec never pulls in a backend's SDK. Each backend also declares
#: the model of its spec options in :data:`canary.backends.options.BACKEND_OPTIONS` (same role and name).
KNOWN_BACKENDS: dict[str, dict[str, str]] = {
    "serving": {
        "local": "canary.backends.local_serving:LocalTrafficRouter",
        "sagemaker": "canary.backends.sagemaker:SageMakerTrafficRouter",
    },
    "metrics": {
        "local": "canary.backends.local_metrics:LocalMetricsSource",
        "prometheus": "canary.backends.prometheus:PrometheusMetricsSource",
        "cloudwatch": "canary.backends.cloudwatch:CloudWatchMetricsSource",
    },
    "registry": {
        "local": "canary.backends.local_registry:LocalModelRegistry",
        "mlflow": "canary.backends.mlflow_registry:MlflowModelRegistry",
    },
    # Endpoint leases (one rollout per endpoint, canary.backends.base.EndpointLock).
    "lock": {
        "local": "canary.backends.local_lock:LocalEndpointLock",
        "postgres": "canary.backends.postgres_lock:PostgresEndpointLock",
    },
}

#: The metrics backends that split their statistics by a request attribute (``analysis.segments``; they
#: implement :class:`SegmentedMetricsSource`). CloudWatch keeps per-variant metrics only.
SEGMENTED_METRICS = frozenset({"local", "prometheus"})
#: The serving backends that can expose the canary to a targeted population only (``targeting``; they implement
#: :class:`TargetingTrafficRouter`). A SageMaker endpoint splits its traffic by variant weights alone.
TARGETING_SERVING = frozenset({"local"})
#: The metrics backends that can read a targeted population's statistics (they implement
#: :class:`TargetableMetricsSource`): the request attributes must be in the store (labels, for Prometheus).
TARGETED_METRICS = frozenset({"local", "prometheus"})
#: The metrics backends that join late ground-truth labels to the requests they are about (metric kind
#: ``prediction_quality``; they implement :class:`LabelledMetricsSource`).
LABELLED_METRICS = frozenset({"local"})


def build_backend(role: str, name: str, conn: ConnInfo, **options: Any) -> Any:
    """Build the ``role`` backend called ``name`` from a connection.

    :raises ConfigError: for an unknown role or name; the message lists the known ones.
    """
    if role not in KNOWN_BACKENDS:
        raise ConfigError(f"unknown backend role {role!r}; known: {', '.join(KNOWN_BACKENDS)}")
    known = KNOWN_BACKENDS[role]
    if name not in known:
        raise ConfigError(f"unknown {role} backend {name!r}; known: {', '.join(sorted(known))}")
    module_name, attr = known[name].split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(conn, **options)
