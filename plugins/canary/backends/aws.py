"""AWS clients for the SageMaker and CloudWatch backends: built from a connection, errors in domain terms.

Connection: in Airflow, the hook hands over a :class:`~canary.backends.base.ClientFactory` built on the
amazon provider's ``AwsBaseHook`` session, so every field of the AWS connection is honoured and
assumed-role credentials refresh (see :func:`aws_client`). Outside Airflow, a plain boto3 session is built
from ``login`` = access key id, ``password`` = secret key, ``extra.region_name``, ``extra.endpoint_url``
(or ``extra.service_config.<service>.endpoint_url``), ``extra.aws_session_token``; without a login,
boto3's default credential chain is used. Credentials are never logged or put into error messages.
"""

from __future__ import annotations

from typing import Any

from canary.backends.base import ConnInfo
from canary.errors import BackendError, ConfigError

#: Hints for error codes, appended to the message.
_HINTS = {
    "AccessDeniedException": "the connection's credentials lack this SageMaker permission",
    "ResourceLimitExceeded": "an account quota (instances or endpoint configs) is exhausted",
    "ThrottlingException": "throttled after the client's retries",
    "ResourceNotFound": "the resource does not exist",
}
_CONFIG_KEYS_FORBIDDEN_IN_EXTRA = ("role_arn", "assume_role_method")


def client_config(*, max_attempts: int = 5) -> Any:
    """Return the backends' default botocore client config: standard retry mode, ``max_attempts`` retries."""
    from botocore.config import Config

    return Config(retries={"mode": "standard", "max_attempts": max_attempts})


def aws_client(conn: ConnInfo, service: str, *, max_attempts: int = 5) -> Any:
    """Build a boto3 client for ``service`` from a connection.

    With ``conn.client_factory`` (the Airflow layer's, on the amazon provider's session) the factory builds
    it, with :func:`client_config` as the default config that the connection's own settings override.
    Otherwise a plain boto3 session is built from the connection's fields (module docstring); ``role_arn``
    is not assumed there, so the core stays free of STS logic: use the Airflow hook for roles.
    """
    config = client_config(max_attempts=max_attempts)
    if conn.client_factory is not None:
        return conn.client_factory(service, config=config)
    import boto3  # lazy: reading a spec or building a DAG must not import boto3

    extra = dict(conn.extra or {})
    for key in _CONFIG_KEYS_FORBIDDEN_IN_EXTRA:
        if extra.get(key):
            raise ConfigError(f"connection {conn.conn_id!r}: extra.{key} is honoured only through an Airflow AWS "
                              "connection (the hook assumes the role and refreshes its credentials); outside "
                              "Airflow, give the role's credentials or a profile boto3 reads")
    service_config = (extra.get("service_config") or {}).get(service) or {}
    endpoint_url = service_config.get("endpoint_url") or extra.get("endpoint_url")
    kwargs: dict[str, Any] = {"region_name": extra.get("region_name"), "config": config}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if conn.login or conn.password:
        if not (conn.login and conn.password):
            raise ConfigError(f"connection {conn.conn_id!r}: set both login (access key id) and password "
                              "(secret access key), or neither to use the default credential chain")
        kwargs.update(aws_access_key_id=conn.login, aws_secret_access_key=conn.password,
                      aws_session_token=extra.get("aws_session_token"))
    return boto3.session.Session().client(service, **kwargs)


def client_error(backend: str, operation: str, what: str, err: Exception) -> BackendError:
    """Turn a botocore error into a :class:`BackendError` naming the operation, resource and error code."""
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        code = error.get("Code", "Unknown")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        hint = _HINTS.get(code)
        message = f"{operation} on {what} failed: {code}: {error.get('Message', '')}".rstrip(": ")
        return BackendError(backend, f"{message} ({hint})" if hint else message, status=status)
    return BackendError(backend, f"{operation} on {what} failed: {type(err).__name__}: {err}")


__all__ = ["aws_client", "client_config", "client_error"]
