"""Hooks own the Airflow connections and build the core's backends from them."""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

from airflow.sdk import BaseHook

from canary.backends import ConnInfo, MetricsSource, ModelRegistry, TrafficRouter, build_backend
from canary.rollout.lease import EndpointLock


def conn_info(conn: Any) -> ConnInfo:
    """Convert an Airflow connection into the core's credential-carrying value."""
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    return ConnInfo(conn_id=conn.conn_id, host=conn.host, port=conn.port, schema=conn.schema,
                    login=conn.login, password=conn.password, extra=extra)


#: Backends reached through an Airflow AWS connection (keys, role_arn, profile, endpoint_url).
AWS_BACKENDS = frozenset({"sagemaker", "cloudwatch"})


def aws_conn_info(aws_conn_id: str) -> ConnInfo:
    """Resolve an Airflow AWS connection (static keys, ``role_arn``, profile) into the core's value.

    Uses the amazon provider's :class:`AwsBaseHook`, so every AWS connection convention works;
    temporary credentials are resolved here, per task or trigger run, and expire with it.
    """
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="sagemaker")
    creds = hook.get_credentials()
    extra: dict[str, Any] = {"region_name": hook.conn_region_name}
    if hook.conn_config.endpoint_url:
        extra["endpoint_url"] = hook.conn_config.endpoint_url
    if creds.token:
        extra["aws_session_token"] = creds.token
    return ConnInfo(conn_id=aws_conn_id, login=creds.access_key, password=creds.secret_key, extra=extra)


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
        if self.backend in AWS_BACKENDS:
            info = aws_conn_info(self.conn_id)
        else:
            info = conn_info(self.get_connection(self.conn_id))
        return build_backend(self.role, self.backend, info, **self.options)

    async def aclient(self) -> Any:
        """Build the backend in a trigger: connections must be read asynchronously there."""
        if self.backend in AWS_BACKENDS:
            from asgiref.sync import sync_to_async  # the provider hook reads the connection synchronously

            info = await sync_to_async(aws_conn_info)(self.conn_id)
        else:
            info = conn_info(await self.aget_connection(self.conn_id))
        return build_backend(self.role, self.backend, info, **self.options)


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


class CanaryLockHook(CanaryBackendHook):
    """Endpoint leases: one rollout per endpoint (see :mod:`canary.rollout.lease`).

    The ``local`` store needs no connection: without ``canary_lock_default`` it uses
    ``$CANARY_LOCK_PATH`` or ``$AIRFLOW_HOME/canary_locks.db``. Any other store needs its connection.
    """

    role = "lock"
    default_conn_name = "canary_lock_default"
    conn_type = "canary_lock"
    hook_name = "Canary endpoint lock"

    def _without_connection(self, err: Exception) -> Any:
        if self.backend != "local" or self.conn_id != self.default_conn_name:
            raise err
        return build_backend(self.role, self.backend, ConnInfo(conn_id=self.conn_id), **self.options)

    @cached_property
    def client(self) -> Any:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            info = conn_info(self.get_connection(self.conn_id))
        except AirflowNotFoundException as err:
            return self._without_connection(err)
        return build_backend(self.role, self.backend, info, **self.options)

    async def aclient(self) -> Any:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            info = conn_info(await self.aget_connection(self.conn_id))
        except AirflowNotFoundException as err:
            return self._without_connection(err)
        return build_backend(self.role, self.backend, info, **self.options)

    @property
    def lock(self) -> EndpointLock:
        return self.client
