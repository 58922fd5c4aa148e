"""The small interfaces every backend implements (serving, metrics, registry, endpoint lock), their values,
and the connection value they are built from."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from canary.errors import CanaryError, ConfigError
from canary.policy.evidence import VersionStats


class ClientFactory(Protocol):
    """Build an SDK client for one service (e.g. ``"sagemaker"``) from a connection the factory owns.

    The Airflow layer passes one built on the amazon provider's ``AwsBaseHook`` session, so that every
    field of an Airflow AWS connection is honoured and assumed-role credentials refresh while a
    long-lived backend (one built by a trigger) keeps using its client. ``config`` is the backend's
    default ``botocore.config.Config``; the connection's own settings (``config_kwargs``) win over it.
    """

    def __call__(self, service: str, *, config: Any) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class ConnInfo:
    """Connection details handed to a backend (built from an Airflow connection by the hooks).

    Credentials live only here, never in specs, logs, XCom or reports. ``client_factory``, when set,
    builds the backend's SDK client (see :class:`ClientFactory`); the other fields are then unused by
    backends that take their client from it.
    """

    conn_id: str = ""
    host: str | None = None
    port: int | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)
    client_factory: ClientFactory | None = field(default=None, repr=False, compare=False)

    def base_url(self, default_scheme: str = "http") -> str:
        """Return ``scheme://host:port`` (``schema`` is used as the scheme when given)."""
        if not self.host:
            raise ValueError(f"connection {self.conn_id!r} has no host")
        if "://" in self.host:
            base = self.host.rstrip("/")
        else:
            base = f"{self.schema or default_scheme}://{self.host}"
        return f"{base}:{self.port}" if self.port else base


@dataclass(frozen=True, kw_only=True)
class ShadowSummary:
    """What mirrored traffic showed: candidate vs stable on the same requests."""

    pairs: int
    stable_errors: int
    candidate_errors: int
    prediction_agreement: float | None  # share of pairs whose predicted class agrees
    mean_abs_score_diff: float | None
    stable_latency_p95_ms: float | None
    candidate_latency_p95_ms: float | None
    #: The paired tests' counts (:mod:`canary.stats.paired`): pairs where only one version failed,
    candidate_only_errors: int = 0
    stable_only_errors: int = 0
    #: pairs both answered and, of those, pairs whose predicted class differs,
    answered_pairs: int = 0
    disagreements: int = 0
    #: and pairs where only one version was slower than ``slow_threshold_ms`` (None: not asked for).
    slow_threshold_ms: float | None = None
    candidate_only_slow: int = 0
    stable_only_slow: int = 0
    #: and pairs both answered where the candidate's score is above (below) stable's by more than
    #: ``score_shift`` (None: not asked for).
    score_shift: float | None = None
    scores_higher: int = 0
    scores_lower: int = 0
    #: and both versions' scores on pairs both answered, per equal-width bin (``bin_index``).
    stable_score_bins: tuple[int, ...] = ()
    candidate_score_bins: tuple[int, ...] = ()
    #: and, over the ``answered_pairs``, the sum and the sum of squares of the candidate's score minus stable's
    #: (each difference clipped to [-1, 1]). None: the backend cannot compute them, and the mean-difference test
    #: is not available (never read as "no difference").
    score_diff_sum: float | None = None
    score_diff_sum_sq: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@runtime_checkable
class TrafficRouter(Protocol):
    """Sets and reads the traffic split of one endpoint. Every call is idempotent."""

    def deploy(self, version: str) -> None:
        """Make ``version`` available on the endpoint at 0% traffic (no-op if already there)."""

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Set the whole split declaratively (percent per version, summing to 100)."""

    def get_weights(self) -> dict[str, int]:
        """Return the current split (percent per deployed version)."""

    def remove(self, version: str) -> None:
        """Remove ``version`` from the endpoint (must hold 0%); no-op if absent."""

    def set_mirror(self, version: str | None, percent: int = 100) -> None:
        """Mirror ``percent`` of requests to ``version`` without serving its answers (None stops)."""


@runtime_checkable
class TargetingTrafficRouter(TrafficRouter, Protocol):
    """Optional part of a router that exposes a version only to requests with some attributes (``targeting``).

    The backends that have it are :data:`canary.backends.TARGETING_SERVING`; the spec refuses targeting on the
    others. Requests outside the targeted population are served by the other versions only.
    """

    def set_targeting(self, version: str | None, match: Mapping[str, Sequence[str]] | None = None) -> None:
        """Expose ``version`` only to requests whose attributes match ``match`` (every attribute, any of its
        values); ``None`` lifts the restriction. Idempotent, like every router call."""


@runtime_checkable
class TargetableMetricsSource(Protocol):
    """Optional part of a metrics source that reads the statistics of a targeted population only.

    The backends that have it are :data:`canary.backends.TARGETED_METRICS`. During a targeted stage, canary and
    stable are compared on the same population (the requests the canary could have served), and the traffic
    split is checked there too.
    """

    def within(self, match: Mapping[str, Sequence[str]]) -> MetricsSource:
        """Return this source restricted to requests whose attributes match ``match``."""


def within_population(metrics: MetricsSource, match: Mapping[str, Sequence[str]] | None) -> MetricsSource:
    """Return ``metrics`` restricted to the targeted population ``match`` (as it is for ``None``).

    :raises ConfigError: the backend cannot restrict its statistics (the spec refuses targeting with it).
    """
    if match is None:
        return metrics
    if not isinstance(metrics, TargetableMetricsSource):
        raise ConfigError(f"targeting: the metrics backend {type(metrics).__name__} cannot restrict its statistics "
                          "to the targeted requests")
    return metrics.within(match)


@dataclass(frozen=True, kw_only=True)
class PendingChange:
    """A traffic change the backend accepted but has not finished applying (e.g. a SageMaker endpoint update).

    JSON-able through :meth:`to_dict`, so that the wait for it can move into an Airflow trigger.
    """

    backend: str
    resource: str  # e.g. "endpoint 'churn'"
    state: str  # the backend's own word for "still changing", e.g. "Updating"
    token: Mapping[str, Any] = field(default_factory=dict)  # backend-specific: what "done" means
    poll_interval_s: float = 30.0
    timeout_s: float = 1800.0

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "resource": self.resource, "state": self.state, "token": dict(self.token),
                "poll_interval_s": self.poll_interval_s, "timeout_s": self.timeout_s}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingChange:
        return cls(backend=str(data["backend"]), resource=str(data["resource"]), state=str(data["state"]),
                   token=dict(data.get("token") or {}), poll_interval_s=float(data["poll_interval_s"]),
                   timeout_s=float(data["timeout_s"]))


@runtime_checkable
class SettlingTrafficRouter(TrafficRouter, Protocol):
    """Optional part of a router whose changes take effect asynchronously (SageMaker endpoint updates).

    A caller that wants to wait elsewhere (an Airflow trigger) takes :meth:`without_waiting`, makes a
    change, then asks :meth:`pending_change` once. Routers that apply a change before answering (the
    embedded serving layer) need neither: :func:`pending_change` treats them as always settled.
    """

    def without_waiting(self) -> TrafficRouter:
        """Return a router that issues changes and returns without waiting for them to take effect."""

    def pending_change(self, previous: PendingChange | None = None) -> PendingChange | None:
        """Check once: None when settled, else what is still changing.

        :param previous: the pending change returned earlier (possibly by another process), whose token
            says what "settled" means; without it, the last change this router made.
        :raises ChangeFailedError: the change failed (e.g. the endpoint went ``Failed``).
        """


def without_waiting(router: TrafficRouter) -> TrafficRouter:
    """Return ``router`` set to issue changes without waiting for them (as it is if it never waits)."""
    return router.without_waiting() if isinstance(router, SettlingTrafficRouter) else router


def pending_change(router: TrafficRouter, previous: PendingChange | None = None) -> PendingChange | None:
    """Check once whether a change of ``router`` is still being applied (None for routers that never lag)."""
    return router.pending_change(previous) if isinstance(router, SettlingTrafficRouter) else None


@runtime_checkable
class MetricsSource(Protocol):
    """Reads cumulative per-version statistics from a metrics store."""

    def version_stats(self, version: str, *, start_s: float, end_s: float) -> VersionStats:
        """Return the statistics of ``version`` for requests in ``[start_s, end_s)`` (epoch seconds).

        Raises :class:`canary.errors.NoDataError` when the store has no series for the version.
        """

    def shadow_summary(self, *, stable: str, candidate: str, start_s: float, end_s: float,
                       slow_threshold_ms: float | None = None, score_shift: float | None = None) -> ShadowSummary:
        """Compare mirrored requests answered by both versions in the window.

        With ``slow_threshold_ms``, also count the pairs where only one version took longer than it; with
        ``score_shift``, the answered pairs whose scores differ by more than it, each way. The sums of the
        score differences (``score_diff_sum``, ``score_diff_sum_sq``) are always asked for; a backend that
        cannot compute them leaves them None.
        """


@runtime_checkable
class SegmentedMetricsSource(MetricsSource, Protocol):
    """Optional part of a metrics source that splits its statistics by a request attribute (``analysis.segments``).

    The backends that have it are :data:`canary.backends.SEGMENTED_METRICS`; the spec refuses segments on the others.
    """

    def segment_stats(self, version: str, *, by: str, values: Sequence[str], start_s: float,
                      end_s: float) -> dict[str, VersionStats]:
        """Return ``version``'s statistics in ``[start_s, end_s)`` per value of request attribute ``by``.

        One entry per value of ``values``, zero counts for a value without requests in the window; requests
        with another value (or without the attribute) are in no entry.
        """


@runtime_checkable
class LabelledMetricsSource(MetricsSource, Protocol):
    """Optional part of a metrics source that joins late feedback (ground-truth labels, business outcomes) to
    the requests it is about.

    Metric kind ``prediction_quality`` and ``kpi`` metrics with an ``outcome`` need it; the backends that have it
    are :data:`canary.backends.LABELLED_METRICS` (the spec refuses those metrics on the others).
    """

    def label_stats(self, version: str, *, start_s: float, end_s: float, by: str | None = None,
                    values: Sequence[str] = ()) -> dict[str | None, tuple[int, int]]:
        """Return ``(labelled, wrong)`` of ``version``'s answered requests in ``[start_s, end_s)`` that have a label.

        Under ``None`` for all of them; with ``by``, also under each of ``values`` for that segment.
        """

    def outcome_stats(self, version: str, *, names: Sequence[str], start_s: float, end_s: float,
                      by: str | None = None, values: Sequence[str] = ()) -> dict[str | None, tuple[int, dict[str, int]]]:
        """Return ``(served, {name: requests with that outcome})`` of ``version``'s requests in ``[start_s, end_s)``.

        ``served`` counts every served request of the window (with feedback or not: no outcome is no event);
        an outcome counts when its value is above 0. Keys as :meth:`label_stats`; every name of ``names`` is in
        every entry (0 without feedback).
        """


@runtime_checkable
class ShadowOutputSource(MetricsSource, Protocol):
    """Optional part of a metrics source that keeps every answer (the local store), not only aggregates.

    The shadow test validates the candidate's outputs with it. Prometheus and CloudWatch keep only
    counters, so they have no such method (and the spec refuses shadow tests on them):
    :func:`shadow_outputs` returns None for them.
    """

    def shadow_outputs(self, candidate: str, *, start_s: float, end_s: float) -> list[dict[str, Any]]:
        """Return ``candidate``'s mirrored answers to requests in ``[start_s, end_s)``, oldest first.

        One dict per answer: ``request_id``, ``ts`` (epoch seconds), ``score`` and ``label`` (None on a
        failed answer), ``latency_ms``, ``error`` (0 or 1).
        """


def shadow_outputs(source: MetricsSource, candidate: str, *, start_s: float,
                   end_s: float) -> list[dict[str, Any]] | None:
    """Return the candidate's mirrored answers in the window, or None if ``source`` cannot provide them."""
    if not isinstance(source, ShadowOutputSource):
        return None
    return source.shadow_outputs(candidate, start_s=start_s, end_s=end_s)


#: Keys of a promote/rollback ``summary`` that hold the last gate's evidence (``stage``, ``metrics``): a registry
#: that logs metrics (MLflow) logs them on the candidate's run; none puts them in a tag (MLflow caps tag values).
EVIDENCE_KEYS = ("stage", "metrics")


def summary_tag(summary: Mapping[str, Any]) -> str:
    """Return the ``rollout.summary`` tag of a promotion or rollback: the summary without the gate's evidence."""
    return json.dumps({k: v for k, v in summary.items() if k not in EVIDENCE_KEYS}, default=str)


@runtime_checkable
class ModelRegistry(Protocol):
    """Resolves model versions and records rollout outcomes."""

    def resolve(self, model: str, ref: str) -> str:
        """Return the version that ``ref`` (a version or an alias) names; UnknownVersionError if none."""

    def champion(self, model: str) -> str | None:
        """Return the version currently serving as champion, if any."""

    def list_versions(self, model: str) -> list[str]:
        """Return every registered version, oldest first."""

    def promote(self, model: str, version: str, *, run_id: str, summary: Mapping[str, Any]) -> None:
        """Make ``version`` the champion and tag it with the rollout result."""

    def record_rollback(self, model: str, version: str, *, run_id: str, reason: str,
                        summary: Mapping[str, Any]) -> None:
        """Tag ``version`` as rolled back, with the reason and an evidence summary."""


# -- endpoint leases (one rollout per endpoint; semantics in canary.rollout.lease) -----------------------

def _utc(ts_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_s))


@dataclass(frozen=True, kw_only=True)
class LeaseHolder:
    """The rollout run holding (or asking for) a lease."""

    dag_id: str
    run_id: str

    def __str__(self) -> str:
        return f"{self.dag_id} run {self.run_id}"


@dataclass(frozen=True, kw_only=True)
class Lease:
    """A lease on one endpoint: who holds it, since when, until when unless renewed (epoch seconds)."""

    key: str
    holder: LeaseHolder
    acquired_at_s: float
    renewed_at_s: float
    expires_at_s: float

    def expired(self, now_s: float) -> bool:
        return now_s >= self.expires_at_s

    def describe(self) -> str:
        """Return e.g. ``canary_rollout__m run manual__1 (since 2026-12-01T18:50:00Z, expires ...)``."""
        return f"{self.holder} (since {_utc(self.acquired_at_s)}, lease expires {_utc(self.expires_at_s)} " \
               "unless renewed)"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "dag_id": self.holder.dag_id, "run_id": self.holder.run_id,
                "acquired_at_s": self.acquired_at_s, "renewed_at_s": self.renewed_at_s,
                "expires_at_s": self.expires_at_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        return cls(key=str(data["key"]), holder=LeaseHolder(dag_id=str(data["dag_id"]), run_id=str(data["run_id"])),
                   acquired_at_s=float(data["acquired_at_s"]), renewed_at_s=float(data["renewed_at_s"]),
                   expires_at_s=float(data["expires_at_s"]))


class EndpointBusyError(CanaryError):
    """Another rollout holds the endpoint's lease; ``lease`` says who and since when."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        super().__init__(f"endpoint {lease.key} is busy: held by {lease.describe()}")


class LeaseLostError(CanaryError):
    """A run renewing its lease no longer holds it: another rollout took it after it expired or was broken."""

    def __init__(self, key: str, holder: LeaseHolder, current: Lease | None) -> None:
        self.key = key
        self.holder = holder
        self.current = current
        now = f"now held by {current.describe()}" if current else "now free"
        super().__init__(f"{holder} lost the lease on endpoint {key} ({now})")


@runtime_checkable
class EndpointLock(Protocol):
    """A lease store. Every call is atomic; ``acquire`` and ``renew`` are re-entrant for the holder."""

    def acquire(self, key: str, holder: LeaseHolder, *, ttl_s: float) -> Lease:
        """Take the lease (or renew it if ``holder`` has it); a free or expired lease is taken.

        :raises EndpointBusyError: another holder has an unexpired lease.
        """

    def renew(self, key: str, holder: LeaseHolder, *, ttl_s: float) -> Lease:
        """Extend ``holder``'s lease to ``now + ttl_s``; re-takes it if it expired and nobody took it.

        :raises LeaseLostError: another holder has the lease now.
        """

    def release(self, key: str, holder: LeaseHolder) -> bool:
        """Drop the lease if ``holder`` has it; return whether it did (idempotent, never raises for others)."""

    def get(self, key: str) -> Lease | None:
        """Return the stored lease of ``key`` (possibly expired), or None."""

    def list_leases(self) -> list[Lease]:
        """Return every stored lease (expired ones too), sorted by key."""

    def break_lease(self, key: str) -> Lease | None:
        """Drop the lease of ``key`` whoever holds it (an operator's override); return what was dropped."""
