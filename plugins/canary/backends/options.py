"""The typed ``options`` of every backend (``backends.<role>.options`` in a spec), one pydantic model each.

A spec is checked against the model of the backend it names when it is loaded (``canary validate``, DAG
parse), so an unknown or mistyped option is a spec error naming the field and the allowed options, not a
``TypeError`` in the first task that builds the backend. This module imports only pydantic and
:mod:`canary.spec.defaults`: DAG parse reads it, and must never import a backend's SDK.

Only options a user set are passed to the backend (:meth:`BackendOptions.constructor_kwargs`): the
backend's constructor holds its defaults. An option the core itself reads (CloudWatch ``period_s`` and
``settle_s``, MLflow ``champion_alias``) takes its default from :mod:`canary.spec.defaults`, as the backend does.

A backend registered in :data:`canary.backends.KNOWN_BACKENDS` declares its model in
:data:`BACKEND_OPTIONS` under the same role and name (tests register their fakes in both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from canary.spec import defaults

PositiveSeconds = Annotated[float, Field(gt=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]
#: CloudWatch statistics periods below a minute (high-resolution metrics); longer ones are whole minutes.
CLOUDWATCH_HIGH_RESOLUTION_PERIODS_S = (1, 5, 10, 30)


def valid_cloudwatch_period_s(period_s: int) -> bool:
    """Return whether CloudWatch can aggregate over ``period_s`` seconds (1, 5, 10, 30 or a multiple of 60)."""
    return period_s in CLOUDWATCH_HIGH_RESOLUTION_PERIODS_S or (period_s >= 60 and period_s % 60 == 0)


def exceedance_thresholds_ms(metrics: Mapping[Any, str]) -> dict[float, str]:
    """Return CloudWatch latency exceedance counters by threshold in milliseconds.

    :raises ValueError: a key is not a positive, finite number of milliseconds.
    """
    thresholds: dict[float, str] = {}
    for threshold, metric in metrics.items():
        try:
            bound = math.nan if isinstance(threshold, bool) else float(threshold)
        except (TypeError, ValueError):
            bound = math.nan
        if not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"key {threshold!r} must be a positive number of milliseconds")
        thresholds[bound] = metric
    return thresholds


class BackendOptions(BaseModel):
    """Base of the option models: unknown keys are refused, values are typed (converted as the spec's own
    fields are: ``"60"`` is 60, ``"1m"`` is an error); the backend gets the converted values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def constructor_kwargs(self) -> dict[str, Any]:
        """Return the options the spec set, JSON-able, as keyword arguments of the backend's constructor."""
        return self.model_dump(mode="json", exclude_unset=True)


class NoOptions(BackendOptions):
    """A backend that takes no options (everything it needs is in its connection)."""


# -- serving --------------------------------------------------------------------------------------------

class LocalServingOptions(BackendOptions):
    """``serving: local``, the embedded serving layer's admin API."""

    timeout_s: PositiveSeconds | None = None
    retries: Annotated[int, Field(ge=0)] | None = None
    backoff_s: NonNegativeSeconds | None = None


class SageMakerServingOptions(BackendOptions):
    """``serving: sagemaker``: production variants of one SageMaker endpoint."""

    variant_prefix: str | None = None
    model_name_template: str | None = None
    instance_type: str | None = None
    initial_instance_count: Annotated[int, Field(ge=1)] | None = None
    wait: bool | None = None
    wait_timeout_s: PositiveSeconds | None = None
    poll_interval_s: PositiveSeconds | None = None


# -- metrics --------------------------------------------------------------------------------------------

class LocalMetricsOptions(NoOptions):
    """``metrics: local``, the embedded serving layer's request store (its path is the connection's host)."""


class PrometheusOptions(BackendOptions):
    """``metrics: prometheus``: label names, series names and HTTP behaviour (see the backend's docstring)."""

    metric_prefix: str | None = None
    version_label: str | None = None
    endpoint_label: str | None = None
    mirrored_label: str | None = None
    extra_matchers: dict[str, str] | str | None = None
    latency_unit: Literal["ms", "s"] | None = None
    lookback_s: NonNegativeSeconds | None = None
    timeout_s: PositiveSeconds | None = None
    retries: Annotated[int, Field(ge=0)] | None = None
    backoff_s: NonNegativeSeconds | None = None
    requests_metric: str | None = None
    errors_metric: str | None = None
    latency_metric: str | None = None
    #: ``null`` (or ``""``) turns an optional series off.
    kpi_metric: str | None = None
    prediction_bins_metric: str | None = None
    bin_label: str | None = None
    #: The label holding a request's segment (``analysis.segments``); default: the attribute's own name (``by``).
    segment_label: str | None = None


class CloudWatchOptions(BackendOptions):
    """``metrics: cloudwatch``: SageMaker endpoint metrics, read in whole periods."""

    namespace: str | None = None
    period_s: int = defaults.CLOUDWATCH_PERIOD_S
    settle_s: NonNegativeSeconds = defaults.CLOUDWATCH_SETTLE_S
    variant_prefix: str | None = None
    requests_metric: str | None = None
    error_metrics: list[str] | None = None
    latency_metric: str | None = None
    latency_unit_ms: Annotated[float, Field(gt=0)] | None = None
    #: Threshold in milliseconds -> name of the counter of requests slower than it.
    latency_exceedance_metrics: dict[str, str] | None = None
    exceedance_namespace: str | None = None

    @field_validator("period_s")
    @classmethod
    def _whole_periods(cls, period_s: int) -> int:
        if not valid_cloudwatch_period_s(period_s):
            raise ValueError("must be 1, 5, 10, 30 or a multiple of 60")
        return period_s

    @field_validator("latency_exceedance_metrics", mode="before")
    @classmethod
    def _thresholds_ms(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value  # the type check reports it
        exceedance_thresholds_ms(value)
        return {str(threshold): metric for threshold, metric in value.items()}  # YAML keys may be numbers


# -- registry -------------------------------------------------------------------------------------------

class LocalRegistryOptions(NoOptions):
    """``registry: local``, a JSON file (its path is the connection's ``extra.path``)."""


class MlflowRegistryOptions(BackendOptions):
    """``registry: mlflow``: an MLflow tracking server's model registry."""

    registered_model_name: str | None = None
    champion_alias: str = Field(defaults.CHAMPION_ALIAS, min_length=1)
    request_timeout_seconds: PositiveSeconds | None = None
    max_attempts: Annotated[int, Field(ge=1)] | None = None
    backoff_seconds: NonNegativeSeconds | None = None


# -- lock -----------------------------------------------------------------------------------------------

class LocalLockOptions(BackendOptions):
    """``lock: local``, a SQLite file.

    ``path`` is a file in the lock store's folder (that of :func:`canary.rollout.lease.default_lock_path`):
    a spec never names a file elsewhere; an absolute path belongs in the connection's ``extra.path``.
    """

    path: str | None = None
    table: str | None = None
    busy_timeout_s: PositiveSeconds | None = None

    @field_validator("path")
    @classmethod
    def _in_the_lock_folder(cls, path: str | None) -> str | None:
        if path is None:
            return path
        parts = path.replace("\\", "/").split("/")
        if not path or path.startswith(("/", "~")) or ":" in path or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{path!r} must be a relative file name inside the lock store's folder (no '..', no "
                             "absolute path); put a path elsewhere in the lock connection's extra.path")
        return path


class PostgresLockOptions(BackendOptions):
    """``lock: postgres``, a table in PostgreSQL."""

    table: str | None = None
    connect_timeout_s: PositiveSeconds | None = None


#: role -> backend name -> options model; the same names as :data:`canary.backends.KNOWN_BACKENDS`.
BACKEND_OPTIONS: dict[str, dict[str, type[BackendOptions]]] = {
    "serving": {"local": LocalServingOptions, "sagemaker": SageMakerServingOptions},
    "metrics": {"local": LocalMetricsOptions, "prometheus": PrometheusOptions, "cloudwatch": CloudWatchOptions},
    "registry": {"local": LocalRegistryOptions, "mlflow": MlflowRegistryOptions},
    "lock": {"local": LocalLockOptions, "postgres": PostgresLockOptions},
}


def allowed_options(model: type[BackendOptions]) -> str:
    """Return the options of ``model`` for an error message, e.g. ``period_s, settle_s``."""
    return ", ".join(model.model_fields) or "none"


def option_problems(role: str, name: str, options: Any) -> tuple[BackendOptions | None, list[tuple[str, str]]]:
    """Validate ``backends.<role>.options`` of backend ``name``; return the typed options and the problems.

    Locations are relative to ``backends.<role>.options``; each message names the bad value and, for an
    unknown option, the allowed ones.
    """
    model = BACKEND_OPTIONS.get(role, {}).get(name)
    if model is None:
        return None, [("", f"the {role} backend {name!r} declares no options model "
                           f"(register one in canary.backends.options.BACKEND_OPTIONS[{role!r}])")]
    try:
        return model.model_validate(options), []
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                msg = (f"unknown {name} {role} option (set to {e.get('input')!r}); allowed: "
                       f"{allowed_options(model)}")
            else:
                msg = str(e["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
                msg = f"{msg}, got {e.get('input')!r}"
            problems.append((loc, msg))
        return None, problems


def parse_options(role: str, name: str, options: Any) -> BackendOptions:
    """Return the typed options of backend ``name``; raise :class:`ConfigError` naming every problem."""
    from canary.errors import ConfigError

    typed, problems = option_problems(role, name, options)
    if typed is None:
        where = f"backends.{role}.options"
        raise ConfigError("; ".join(f"{where}.{loc}: {msg}" if loc else f"{where}: {msg}" for loc, msg in problems))
    return typed
