"""Hooks own the Airflow connections and build the core's backends from them."""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

from airflow.sdk import BaseHook

from canary.backends import ConnInfo, MetricsSource, ModelRegistry, TrafficRouter, build_backend
from canary.backends.base import EndpointLock


def conn_info(conn: Any) -> ConnInfo:
    """Convert an Airflow connection into the core's credential-carrying value."""
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    return ConnInfo(conn_id=conn.conn_id, host=conn.host, port=conn.port, schema=conn.schema,
                    login=conn.login, password=conn.password, extra=extra)


#: Backends reached through an Airflow AWS connection (every field the amazon provider honours).
AWS_BACKENDS = frozenset({"sagemaker", "cloudwatch"})


class AwsClientFactory:
    """Build boto3 clients exactly as the amazon provider's ``AwsBaseHook`` does for a connection.

    A :class:`~canary.backends.base.ClientFactory`: the client comes from the hook's session, so
    ``role_arn`` (with ``assume_role_method``, ``assume_role_kwargs``), ``profile_name``, ``region_name``,
    ``endpoint_url``, ``service_config.<service>``, ``verify``, ``config_kwargs`` and a custom
    ``[aws] session_factory`` all apply, and assumed-role credentials are botocore refreshable credentials:
    a backend built once (as a trigger builds it) re-assumes the role before they expire instead of
    carrying keys frozen when it was built. Reads the connection when called (and assumes the role then):
    call it off the event loop.

    :param aws_conn_id: the Airflow AWS connection (``conn_type: aws``).
    """

    def __init__(self, aws_conn_id: str) -> None:
        self.aws_conn_id = aws_conn_id

    def __call__(self, service: str, *, config: Any) -> Any:
        """Return a ``service`` client; the connection's ``config_kwargs`` override ``config`` field by field."""
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        hook = AwsBaseHook(aws_conn_id=self.aws_conn_id, client_type=service)
        connection_config = hook.conn_config.botocore_config
        merged = config.merge(connection_config) if connection_config is not None else config
        return hook.get_client_type(region_name=hook.region_name, config=merged)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.aws_conn_id!r})"


def aws_conn_info(aws_conn_id: str) -> ConnInfo:
    """Return the core's connection value for an Airflow AWS connection: clients come from the provider's hook.

    Nothing is resolved here: the backend's constructor calls the :class:`AwsClientFactory`, which reads
    the connection (so build AWS backends off the event loop, as :meth:`CanaryBackendHook.aclient` does).
    """
    return ConnInfo(conn_id=aws_conn_id, client_factory=AwsClientFactory(aws_conn_id))


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
            from asgiref.sync import sync_to_async

            # The provider's hook reads the connection (and may call STS) synchronously, inside the
            # backend's constructor: build the whole backend in a thread, never on the event loop.
            return await sync_to_async(build_backend)(self.role, self.backend, aws_conn_info(self.conn_id),
                                                      **self.options)
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
