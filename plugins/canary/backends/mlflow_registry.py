"""The MLflow model registry as a :class:`~canary.backends.base.ModelRegistry`.

Versions are MLflow's model versions ("1", "2", ...); an alias (``champion``, ``challenger``, ...)
names a version. A promotion moves the champion alias and tags the promoted version; a rollback
only tags the candidate. Only the candidate and the previous champion are ever written to, and the
candidate's MLflow run: the quality metrics the last gate decided on (``summary["metrics"]``) are logged
to the run that produced the version (:func:`evidence_metrics`), as the evidence of the rollout. A
version without a run says so in tag ``rollout.evidence``; a failure to log is a warning, never a failed
promotion or rollback (the registry's decision is already written).

The client is ``mlflow-skinny``'s :class:`mlflow.MlflowClient`, imported on first use so that
reading a spec never imports MLflow. Credentials come from the connection only: login/password
(HTTP basic auth) or ``extra.token`` (bearer). MLflow's client reads them from environment
variables, so they are set around each call under a lock and removed again afterwards; they are
never part of the tracking URI, a log line or an error message. MLflow's own HTTP retries (up to
minutes with its defaults) are switched off for these calls in favour of a short retry with
backoff here, so an unreachable server fails a task in seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from canary.backends.base import ConnInfo, summary_tag
from canary.backends.local_registry import CHAMPION, TAG_REASON, TAG_RESULT, TAG_RUN_ID, TAG_SUMMARY
from canary.errors import BackendError, ConfigError, UnknownVersionError

__all__ = ["TAG_EVIDENCE", "TAG_RETIRED_BY", "MlflowModelRegistry", "evidence_metrics"]

log = logging.getLogger(__name__)

BACKEND = "mlflow registry"
#: Tag written on the previous champion when a promotion replaces it (value: the new champion).
TAG_RETIRED_BY = "rollout.retired_by"
#: Tag written on the candidate: which run holds the rollout's evidence, or why none does.
TAG_EVIDENCE = "rollout.evidence"
#: Prefix of the run's metrics and tags (``canary.<metric>.ratio_upper``, ``canary.<metric>.decision``).
RUN_KEY_PREFIX = "canary"
#: Longest tag value written. MLflow 3 servers accept 100,000 characters for registry tags, older
#: servers and some hosted registries 5,000; the smaller limit works everywhere.
MAX_TAG_VALUE_CHARS = 5000
_TRUNCATED = "...[truncated]"
#: Error codes worth another attempt: the server or a proxy is overloaded, restarting or slow.
#: INTERNAL_ERROR is also what the client raises for connection errors and timeouts (no response).
_TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED",
                              "RESOURCE_EXHAUSTED", "INTERNAL_ERROR"})
_AUTH_CODES = frozenset({"UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "PERMISSION_DENIED"})
_ENV_LOCK = threading.RLock()

T = TypeVar("T")


@contextlib.contextmanager
def _scoped_env(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the duration of one client call."""
    with _ENV_LOCK:
        saved = {key: os.environ.get(key) for key in values}
        try:
            for key, value in values.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def truncate_tag_value(value: str, limit: int = MAX_TAG_VALUE_CHARS) -> str:
    """Return ``value`` cut to ``limit`` characters, marked as truncated when cut."""
    if len(value) <= limit:
        return value
    return value[: limit - len(_TRUNCATED)] + _TRUNCATED


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """Return ``url`` without user info, and the user and password it carried."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), parts.username, parts.password


def _is_transient(err: Exception) -> bool:
    return getattr(err, "error_code", None) in _TRANSIENT_CODES


def evidence_metrics(summary: Mapping[str, Any], result: str) -> tuple[dict[str, float], dict[str, str]]:
    """Return the run metrics and run tags of the metrics a rollout's last gate decided on.

    ``summary["metrics"]`` holds the gate's assessments (``MetricAssessment.to_dict()``); the overall
    ones (not a segment's) give ``canary.<metric>.<field>`` for every finite number of their evidence
    (``ratio_upper``, ``canary_events``, ``canary_exposure``...), ``canary.<metric>.canary_rate`` and
    ``.stable_rate`` (events over exposure) where the evidence counts them, and tags
    ``canary.<metric>.decision`` and ``.kind``; ``canary.result`` is ``result`` (promoted, rolled_back).
    """
    metrics: dict[str, float] = {}
    tags = {f"{RUN_KEY_PREFIX}.result": result}
    if summary.get("stage") is not None:
        tags[f"{RUN_KEY_PREFIX}.stage"] = str(summary["stage"])
    for assessment in summary.get("metrics") or ():
        if assessment.get("segment") is not None or not assessment.get("metric"):
            continue
        prefix = f"{RUN_KEY_PREFIX}.{assessment['metric']}"
        tags[f"{prefix}.decision"] = str(assessment.get("decision"))
        tags[f"{prefix}.kind"] = str(assessment.get("kind"))
        evidence = assessment.get("evidence") or {}
        for key, value in evidence.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                metrics[f"{prefix}.{key}"] = float(value)
        for side in ("canary", "stable"):
            events, exposure = evidence.get(f"{side}_events"), evidence.get(f"{side}_exposure")
            if isinstance(events, int | float) and isinstance(exposure, int | float) and exposure > 0:
                metrics[f"{prefix}.{side}_rate"] = events / exposure
    return metrics, tags


class MlflowModelRegistry:
    """A model registry backed by an MLflow tracking server's model registry.

    :param conn: the connection: ``host`` is the server (``mlflow.example.com`` with ``port`` and
        ``schema``, or a full URL such as ``https://mlflow.example.com/mlflow``); ``login`` and
        ``password`` for basic auth, or ``extra.token`` for a bearer token.
    :param registered_model_name: the MLflow registered model; defaults to the spec's model name.
    :param champion_alias: the alias that names the serving version.
    :param request_timeout_seconds: timeout of one HTTP request.
    :param max_attempts: attempts per call when the server is unreachable, overloaded or failing (5xx).
    :param backoff_seconds: wait before the second attempt; doubled for each further attempt.
    """

    def __init__(self, conn: ConnInfo, *, registered_model_name: str | None = None,
                 champion_alias: str = CHAMPION, request_timeout_seconds: float = 30.0, max_attempts: int = 3,
                 backoff_seconds: float = 0.5, **unknown: Any) -> None:
        if unknown:
            raise ConfigError(f"mlflow registry: unknown options {sorted(unknown)}; known: registered_model_name, "
                              "champion_alias, request_timeout_seconds, max_attempts, backoff_seconds")
        try:
            url = conn.base_url()
        except ValueError as err:
            raise ConfigError(f"connection {conn.conn_id!r}: the MLflow registry needs a host "
                              "(e.g. https://mlflow.example.com)") from err
        self.tracking_uri, url_user, url_password = _split_credentials(url)
        if not urlsplit(self.tracking_uri).scheme.startswith("http"):
            raise ConfigError(f"connection {conn.conn_id!r}: MLflow tracking URI {self.tracking_uri!r} "
                              "must be http(s)")
        if max_attempts < 1 or request_timeout_seconds <= 0 or backoff_seconds < 0:
            raise ConfigError("mlflow registry: max_attempts >= 1, request_timeout_seconds > 0 and "
                              "backoff_seconds >= 0 are required")
        token = conn.extra.get("token")
        login, password = conn.login or url_user, conn.password or url_password
        if token and (login or password):
            raise ConfigError(f"connection {conn.conn_id!r}: give either login/password or extra.token, not both")
        self.registered_model_name = registered_model_name
        self.champion_alias = champion_alias
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        # Every key is always set or removed, so a worker's ambient MLFLOW_TRACKING_* never leaks in.
        self._env: dict[str, str | None] = {
            "MLFLOW_TRACKING_USERNAME": login or None,
            "MLFLOW_TRACKING_PASSWORD": password or None,
            "MLFLOW_TRACKING_TOKEN": str(token) if token else None,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(request_timeout_seconds))),
        }

    def __repr__(self) -> str:
        return f"MlflowModelRegistry(tracking_uri={self.tracking_uri!r})"

    @cached_property
    def _client(self) -> Any:
        from mlflow import MlflowClient  # lazy: MLflow is only imported when the registry is used

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _name(self, model: str) -> str:
        return self.registered_model_name or model

    # -- calls, retries and error mapping ----------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *, retry: bool = True) -> T:
        """Call the client with the connection's credentials; retry transient failures with backoff.

        MLflow errors that are not transient propagate unchanged, for the caller to map by error code.
        Every call made with ``retry`` must be idempotent (reads, setting a tag or an alias).
        """
        from mlflow.exceptions import MlflowException

        client = self._client
        attempts = self.max_attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                with _scoped_env(self._env):
                    return fn(client)
            except MlflowException as err:
                if attempt == attempts or not _is_transient(err):
                    raise
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _backend_error(self, what: str, err: Exception) -> BackendError:
        """Describe a failed call: what was attempted, where, and MLflow's answer (never credentials)."""
        import requests

        code = getattr(err, "error_code", None) or type(err).__name__
        # The client raises INTERNAL_ERROR for every failure without a usable answer; the requests
        # exception it was raised from says which (for 408/429/5xx its own retry layer hides the status).
        cause = err.__cause__ or err.__context__
        status: int | None = None
        if isinstance(cause, requests.exceptions.RetryError):
            hint = " (the server kept answering with a transient HTTP error (408/429/5xx))"
        elif isinstance(cause, requests.exceptions.RequestException):
            hint = f" (no answer from the server: {type(cause).__name__})"
        else:
            status_fn = getattr(err, "get_http_status_code", None)
            status = status_fn() if callable(status_fn) else None
            hint = " (check the connection's login/password or extra.token)" if code in _AUTH_CODES else ""
        return BackendError(BACKEND, f"{what} at {self.tracking_uri} failed: {code}{hint}: {err}", status=status)

    def _run(self, what: str, fn: Callable[..., T], *, retry: bool = True) -> T:
        """Call the client; every MLflow error becomes a BackendError naming ``what`` and the server."""
        from mlflow.exceptions import MlflowException

        try:
            return self._call(fn, retry=retry)
        except MlflowException as err:
            raise self._backend_error(what, err) from err

    def _unknown(self, model: str, ref: str) -> UnknownVersionError:
        """Build the error for an unknown version or alias, listing what the model does have."""
        name = self._name(model)
        from mlflow.exceptions import MlflowException

        try:
            registered = self._call(lambda c: c.get_registered_model(name))
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return UnknownVersionError(name, "")
            raise self._backend_error(f"get registered model {name!r}", err) from err
        return UnknownVersionError(name, ref, [*self.list_versions(model), *sorted(registered.aliases)])

    def _require_version(self, model: str, version: str) -> None:
        from mlflow.exceptions import MlflowException

        name = self._name(model)
        what = f"get model {name!r} version {version!r}"
        if not version.isdigit():
            raise self._unknown(model, version)
        try:
            self._call(lambda c: c.get_model_version(name, version))
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise self._unknown(model, version) from err
            raise self._backend_error(what, err) from err

    def _set_tags(self, model: str, version: str, tags: Mapping[str, str]) -> None:
        name = self._name(model)
        for key, value in tags.items():
            self._run(f"tag model {name!r} version {version!r} with {key!r}",
                      lambda c, k=key, v=value: c.set_model_version_tag(name, version, k, truncate_tag_value(v)))

    def _log_evidence(self, model: str, version: str, *, run_id: str, result: str,
                      summary: Mapping[str, Any]) -> None:
        """Log the decided metrics to ``version``'s MLflow run; warn instead of failing (see the module)."""
        if not summary.get("metrics"):
            return  # nothing was decided on metrics (bake time only, a dry run, a failed task)
        name = self._name(model)
        try:
            found = self._run(f"get model {name!r} version {version!r}",
                              lambda c: c.get_model_version(name, version))
            if not found.run_id:
                self._set_tags(model, version, {TAG_EVIDENCE: "not logged: the model version has no MLflow run "
                                                              "(run_id), so its quality metrics stay in "
                                                              "rollout.summary"})
                return
            from mlflow.entities import Metric, RunTag

            metrics, tags = evidence_metrics(summary, result)
            tags[f"{RUN_KEY_PREFIX}.rollout_run_id"] = run_id
            tags[f"{RUN_KEY_PREFIX}.model_version"] = f"{name}/{version}"
            now_ms, step = int(time.time() * 1000), int(summary.get("stage") or 0)
            # Not retried: a lost answer to a successful request would log every metric twice.
            self._run(f"log the rollout's metrics to run {found.run_id!r}", lambda c: c.log_batch(
                found.run_id, metrics=[Metric(k, v, now_ms, step) for k, v in sorted(metrics.items())],
                tags=[RunTag(k, truncate_tag_value(v)) for k, v in sorted(tags.items())]), retry=False)
            self._set_tags(model, version, {TAG_EVIDENCE: f"run {found.run_id}: {len(metrics)} metrics"})
        except Exception as err:  # every one: the evidence never undoes the decision already written
            log.warning("mlflow registry: the rollout's metrics were not logged to the run of model %r version %r "
                        "(%s: %s); the %s stands", name, version, type(err).__name__, err, result.replace("_", " "))
    # -- the ModelRegistry protocol -------------------------------------------------------------------

    def resolve(self, model: str, ref: str) -> str:
        """Return the version ``ref`` names: a version number, or an alias such as ``challenger``."""
        from mlflow.exceptions import MlflowException

        name = self._name(model)
        if ref.isdigit():
            self._require_version(model, ref)
            return str(int(ref))
        what = f"get model {name!r} alias {ref!r}"
        try:
            found = self._call(lambda c: c.get_model_version_by_alias(name, ref))
        except MlflowException as err:
            # A missing model is RESOURCE_DOES_NOT_EXIST; a missing (or malformed) alias is
            # INVALID_PARAMETER_VALUE. Both mean "no such alias" to the caller.
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise self._unknown(model, ref) from err
            raise self._backend_error(what, err) from err
        return str(found.version)

    def champion(self, model: str) -> str | None:
        """Return the version behind the champion alias; None if unset or the model is not registered."""
        from mlflow.exceptions import MlflowException

        name = self._name(model)
        what = f"get registered model {name!r}"
        try:
            registered = self._call(lambda c: c.get_registered_model(name))
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise self._backend_error(what, err) from err
        version = (registered.aliases or {}).get(self.champion_alias)
        return None if version is None else str(version)

    def alias_version(self, model: str, alias: str) -> str | None:
        """Return the version ``alias`` names; None if the alias is not set or the model not registered.

        One request (the registered model carries its aliases), so a watcher can poll it cheaply.
        """
        from mlflow.exceptions import MlflowException

        name = self._name(model)
        try:
            registered = self._call(lambda c: c.get_registered_model(name))
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise self._backend_error(f"get registered model {name!r}", err) from err
        version = (registered.aliases or {}).get(alias)
        return None if version is None else str(version)

    def list_versions(self, model: str) -> list[str]:
        """Return every version of the model, oldest first ([] if it is not registered)."""
        name = self._name(model)
        quoted = name.replace("\\", "\\\\").replace("'", "\\'")
        versions: list[int] = []
        token: str | None = None
        while True:
            page = self._run(f"search versions of model {name!r}",
                             lambda c, t=token: c.search_model_versions(f"name='{quoted}'", page_token=t))
            versions.extend(int(mv.version) for mv in page if mv.name == name)
            token = page.token
            if not token:
                break
        return [str(v) for v in sorted(set(versions))]

    def promote(self, model: str, version: str, *, run_id: str, summary: Mapping[str, Any]) -> None:
        """Tag ``version`` as promoted, move the champion alias to it, and mark the previous champion retired.

        Moving the alias is the commit point: a retry after a failure before it repeats the
        (idempotent) tags; after it, the previous champion is no longer known and is not re-tagged.
        """
        self._require_version(model, version)
        previous = self.champion(model)
        self._set_tags(model, version, {TAG_RESULT: "promoted", TAG_RUN_ID: run_id,
                                        TAG_SUMMARY: summary_tag(summary)})
        name = self._name(model)
        self._run(f"move alias {self.champion_alias!r} of model {name!r} to version {version!r}",
                  lambda c: c.set_registered_model_alias(name, self.champion_alias, version))
        if previous is not None and previous != version:
            self._set_tags(model, previous, {TAG_RETIRED_BY: version})
        self._log_evidence(model, version, run_id=run_id, result="promoted", summary=summary)

    def record_rollback(self, model: str, version: str, *, run_id: str, reason: str,
                        summary: Mapping[str, Any]) -> None:
        """Tag ``version`` as rolled back with the reason and the evidence; aliases stay where they are."""
        self._require_version(model, version)
        self._set_tags(model, version, {TAG_RESULT: "rolled_back", TAG_RUN_ID: run_id, TAG_REASON: reason,
                                        TAG_SUMMARY: summary_tag(summary)})
        self._log_evidence(model, version, run_id=run_id, result="rolled_back", summary=summary)

    # -- administration (tests, demo) -------------------------------------------------------------------

    def register_version(self, model: str, source: str, *, tags: Mapping[str, str] | None = None,
                         run_id: str | None = None) -> str:
        """Create a new version from ``source`` (an artifact URI), creating the model if needed; return it.

        ``run_id`` is the MLflow run that produced the version, if any (a rollout logs its evidence there).

        MLflow numbers versions itself, so unlike the local registry the version cannot be chosen.
        """
        from mlflow.exceptions import MlflowException

        name = self._name(model)
        try:
            self._call(lambda c: c.create_registered_model(name))
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise self._backend_error(f"create registered model {name!r}", err) from err
        # Not retried: a lost answer to a successful request would register a second version.
        created = self._run(f"create a version of model {name!r}",
                            lambda c: c.create_model_version(name, source, run_id=run_id, tags=dict(tags or {})),
                            retry=False)
        return str(created.version)

    def set_alias(self, model: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``."""
        self._require_version(model, version)
        name = self._name(model)
        self._run(f"set alias {alias!r} of model {name!r} to version {version!r}",
                  lambda c: c.set_registered_model_alias(name, alias, version))

    def get_tags(self, model: str, version: str) -> dict[str, str]:
        """Return the tags of ``version``."""
        self._require_version(model, version)
        name = self._name(model)
        found = self._run(f"get model {name!r} version {version!r}", lambda c: c.get_model_version(name, version))
        return dict(found.tags or {})

    def aliases(self, model: str) -> dict[str, str]:
        """Return every alias of the model and the version it names."""
        from mlflow.exceptions import MlflowException

        name = self._name(model)
        try:
            registered = self._call(lambda c: c.get_registered_model(name))
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise UnknownVersionError(name, "") from err
            raise self._backend_error(f"get registered model {name!r}", err) from err
        return {alias: str(v) for alias, v in sorted((registered.aliases or {}).items())}
