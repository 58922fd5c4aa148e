"""Hooks own the Airflow connections and build the core's backends from them."""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

from airflow.sdk import BaseHook

from canary.backends import ConnInfo, MetricsSource, ModelRegistry, TrafficRouter, build_backend


def conn_info(conn: Any) -> ConnInfo:
    """Convert an Airflow connection into the core's credential-carrying value."""
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    return ConnInfo(conn_id=conn.conn_id, host=conn.host, port=conn.port, schema=conn.schema,
                    login=conn.login, password=conn.password, extra=extra)


class CanaryBackendHook(BaseHook):
    """Base of the three backend hooks: one connection, one backend chosen by name.

    :param backend: the backend name from the spec (e.g. ``local``).
    :param conn_id: the Airflow connection to use; defaults to the hook's ``default_conn_name``.
    :param options: backend options from the spec (e.g. ``endpoint``).
    """

    role: ClassVar[str]
    conn_name_attr = "conn_id"

    def __init__(self, backend: str = "local", conn_id: str | None = None, **options: Any) -> None:
        super().__init__()
        self.backend = backend
        self.conn_id = conn_id or self.default_conn_name
        self.options = options

    @cached_property
    def client(self) -> Any:
        """Build the backend lazily from the connection (the connection is read once)."""
        return build_backend(self.role, self.backend, conn_info(self.get_connection(self.conn_id)), **self.options)

    async def aclient(self) -> Any:
        """Build the backend in a trigger: connections must be read asynchronously there."""
        conn = await self.aget_connection(self.conn_id)
        return build_backend(self.role, self.backend, conn_info(conn), **self.options)


class CanaryServingHook(CanaryBackendHook):
    """Traffic split of a model endpoint (embedded serving layer, SageMaker, ...)."""

    role = "serving"
    default_conn_name = "canary_serving_default"
    conn_type = "canary_serving"
    hook_name = "Canary model serving"

    @property
    def router(self) -> TrafficRouter:
        return self.client


class CanaryMetricsHook(CanaryBackendHook):
    """Per-version request, error, latency, prediction and KPI statistics."""

    role = "metrics"
    default_conn_name = "canary_metrics_default"
    conn_type = "canary_metrics"
    hook_name = "Canary metrics store"

    @property
    def source(self) -> MetricsSource:
        return self.client


class CanaryRegistryHook(CanaryBackendHook):
    """Model registry: resolves versions and records rollout outcomes."""

    role = "registry"
    default_conn_name = "canary_registry_default"
    conn_type = "canary_registry"
    hook_name = "Canary model registry"

    @property
    def registry(self) -> ModelRegistry:
        return self.client
