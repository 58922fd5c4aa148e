"""The rollout spec: everything a rollout will do and every rollback condition, declared before it starts.

A spec is one YAML file per model (``include/rollouts/<model>.yaml``). :func:`load_spec` validates it
with pydantic and then with the cross-field rules below, and raises :class:`~canary.errors.SpecError`
listing every problem as ``file: field.path: what is allowed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from canary.errors import SpecError
from canary.rollout.expectations import ExpectationSpec, expectation_problems
from canary.spec import defaults
from canary.spec.durations import parse_duration_s

Duration = Annotated[float, BeforeValidator(parse_duration_s)]
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    # Unknown keys are rejected: a typo must never silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BackendRef(_Strict):
    """A backend chosen by name, reached through an Airflow connection."""

    name: str = "local"
    conn_id: str = ""
    options: dict[str, Any] = Field(default_factory=dict)


class Backends(_Strict):
    serving: BackendRef = BackendRef(conn_id=defaults.DEFAULT_CONN_IDS["serving"])
    metrics: BackendRef = BackendRef(conn_id=defaults.DEFAULT_CONN_IDS["metrics"])
    registry: BackendRef = BackendRef(conn_id=defaults.DEFAULT_CONN_IDS["registry"])
    lock: BackendRef = BackendRef(conn_id=defaults.DEFAULT_CONN_IDS["lock"])

    def conn_id(self, role: str) -> str:
        """Return the connection id of ``role``, falling back to the role's default connection."""
        return getattr(self, role).conn_id or defaults.DEFAULT_CONN_IDS[role]


def _default_expectations() -> list[ExpectationSpec]:
    return [ExpectationSpec.model_validate(e) for e in defaults.SHADOW_EXPECTATIONS]


class ShadowSpec(_Strict):
    """Mirror real requests to the candidate before it serves anything, compare, and validate its outputs.

    ``expectations`` are Great Expectations checks on the candidate's mirrored answers
    (:mod:`canary.rollout.expectations`); the default suite is ``defaults.SHADOW_EXPECTATIONS``, ``[]`` turns it off.
    """

    enabled: bool = True
    requests: int = Field(defaults.SHADOW_REQUESTS, ge=1)
    mirror_percent: int = Field(defaults.SHADOW_MIRROR_PERCENT, ge=1, le=100)
    max_duration_s: Duration = Field(defaults.SHADOW_MAX_DURATION_S, alias="max_duration", gt=0)
    max_error_rate_increase: float = Field(defaults.SHADOW_MAX_ERROR_RATE_INCREASE, ge=0.0, le=1.0)
    max_latency_p95_ratio: float = Field(defaults.SHADOW_MAX_LATENCY_P95_RATIO, gt=1.0)
    latency_p95_slack_ms: float = Field(defaults.SHADOW_LATENCY_P95_SLACK_MS, ge=0.0)
    min_prediction_agreement: float = Field(defaults.SHADOW_MIN_PREDICTION_AGREEMENT, ge=0.0, le=1.0)
    expectations: list[ExpectationSpec] = Field(default_factory=_default_expectations)


class StageSpec(_Strict):
    """One traffic step: canary share, how long to observe, and how much traffic to see."""

    weight: int = Field(ge=1, le=100, description="canary traffic share in percent")
    min_duration_s: Duration = Field(defaults.STAGE_MIN_DURATION_S, alias="min_duration", ge=0)
    max_duration_s: Duration = Field(defaults.STAGE_MAX_DURATION_S, alias="max_duration", gt=0,
                                     le=defaults.MAX_STAGE_DURATION_S)
    min_requests: int = Field(defaults.STAGE_MIN_REQUESTS, ge=0, description="canary requests before advancing")


class MetricKind(StrEnum):
    ERROR_RATE = "error_rate"
    LATENCY = "latency"
    PREDICTION_DISTRIBUTION = "prediction_distribution"
    KPI = "kpi"


class MetricSpec(_Strict):
    """A metric compared canary vs stable.

    ``tolerance`` is the non-inferiority margin: the largest regression that is still acceptable,
    relative to stable (0.2 = 20% worse). For ``prediction_distribution`` it is the total-variation
    distance allowed. ``mde`` (minimum detectable effect, same units) tunes the sequential test;
    it defaults to twice the tolerance.
    """

    name: str = Field(pattern=NAME_PATTERN)
    kind: MetricKind
    tolerance: float = Field(gt=0.0)
    weight: float = Field(1.0, gt=0.0, description="share of alpha spent on this metric (normalised)")
    quantile: float | None = Field(None, gt=0.0, lt=1.0, description="latency only: 0.5, 0.95, 0.99")
    threshold_ms: float | None = Field(None, gt=0.0, description="latency only: fixed exceedance threshold")
    mde: float | None = Field(None, gt=0.0)
    higher_is_better: bool = Field(True, description="kpi only: direction of the KPI")

    @property
    def effective_mde(self) -> float:
        return self.mde if self.mde is not None else 2.0 * self.tolerance


class Guardrails(_Strict):
    """Absolute limits that roll back whatever stable does."""

    max_error_rate: float | None = Field(defaults.GUARDRAIL_MAX_ERROR_RATE, gt=0.0, le=1.0)
    max_latency_p99_ms: float | None = Field(None, gt=0.0)
    min_requests: int = Field(defaults.GUARDRAIL_MIN_REQUESTS, ge=1,
                              description="canary requests in the window before a guardrail may fire")


def _default_metrics() -> list[MetricSpec]:
    return [MetricSpec(name="error_rate", kind=MetricKind.ERROR_RATE, tolerance=0.2)]


class AnalysisSpec(_Strict):
    alpha: Probability = Field(defaults.ALPHA, description=(
        "whole error budget: P(a healthy, correctly routed canary is rolled back or halted by any statistical "
        "test, metrics and sample-ratio check together, over the whole rollout); guardrails, missing data and "
        "timeouts are not tests and are not in it"))
    srm_alpha: Probability | None = Field(None, description=(
        "the sample-ratio-mismatch HALT's share of alpha, carved out of it (the metrics share alpha - "
        "srm_alpha); must be below alpha; default min(0.001, alpha / 10)"))
    poll_interval_s: Duration = Field(defaults.POLL_INTERVAL_S, alias="poll_interval", gt=0)
    warmup_s: Duration = Field(defaults.WARMUP_S, alias="warmup", ge=0)
    metrics: list[MetricSpec] = Field(default_factory=_default_metrics, min_length=1)
    guardrails: Guardrails = Guardrails()


class OnBusy(StrEnum):
    WAIT = "wait"
    REFUSE = "refuse"


class ConcurrencySpec(_Strict):
    """One rollout per endpoint: what a rollout does while another one holds the endpoint's lease."""

    on_busy: OnBusy = OnBusy(defaults.LOCK_ON_BUSY)
    max_wait_s: Duration = Field(defaults.LOCK_MAX_WAIT_S, alias="max_wait", gt=0, le=defaults.MAX_LOCK_WAIT_S)
    poll_interval_s: Duration = Field(defaults.LOCK_POLL_INTERVAL_S, alias="poll_interval", gt=0)
    lease_ttl_s: Duration = Field(defaults.LEASE_TTL_S, alias="lease_ttl", ge=defaults.MIN_LEASE_TTL_S,
                                  le=defaults.MAX_LEASE_TTL_S)


class TimeoutPolicy(StrEnum):
    ROLLBACK = "rollback"
    HOLD_FOR_APPROVAL = "hold_for_approval"
    PROMOTE_WITH_WARNING = "promote_with_warning"


class HaltPolicy(StrEnum):
    ROLLBACK = "rollback"
    HOLD_FOR_APPROVAL = "hold_for_approval"


class ApprovalMode(StrEnum):
    NONE = "none"
    BEFORE_PROMOTE = "before_promote"
    EVERY_STAGE = "every_stage"


class PolicySpec(_Strict):
    """What happens when the evidence does not decide."""

    on_timeout: TimeoutPolicy = TimeoutPolicy.ROLLBACK
    on_halt: HaltPolicy = HaltPolicy.ROLLBACK
    approval: ApprovalMode = ApprovalMode.NONE


class RegistryWatch(StrEnum):
    """What the registry watcher of ``schedule.on_registry_event`` reacts to."""

    NEW_VERSION = "new_version"  # a version registered after the last one seen
    ALIAS = "alias"  # ``alias`` (e.g. challenger) moved to another version
    NONE = "none"  # no watcher: events are pushed (POST /api/v2/assets/events)


class RegistryEventSpec(_Strict):
    """Start a rollout when the registry says so: a watcher polls it, or a system pushes an asset event."""

    enabled: bool = False
    watch: RegistryWatch = RegistryWatch(defaults.REGISTRY_EVENT_WATCH)
    alias: str = Field(defaults.REGISTRY_EVENT_ALIAS, pattern=NAME_PATTERN, max_length=200)
    poll_interval_s: Duration = Field(defaults.REGISTRY_EVENT_POLL_INTERVAL_S, alias="poll_interval",
                                      ge=defaults.REGISTRY_EVENT_MIN_POLL_INTERVAL_S, le=24 * 3600.0)


class ScheduleSpec(_Strict):
    """Automatic rollout starts. ``nightly`` takes part at the nightly DAG's default time, ``nightly_cron`` at its own."""

    nightly: bool = Field(False, description="take part in the nightly pick-up at $CANARY_NIGHTLY_CRON")
    nightly_cron: str | None = Field(None, description="take part at this cron time (UTC) instead; implies nightly")
    on_registry_event: RegistryEventSpec = RegistryEventSpec()

    @property
    def takes_part_nightly(self) -> bool:
        return self.nightly or self.nightly_cron is not None


class RolloutSpec(_Strict):
    """One model's rollout, validated before any traffic moves."""

    model: str = Field(pattern=NAME_PATTERN, max_length=200)
    endpoint: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    owner: str = "ml-platform"
    tags: list[str] = Field(default_factory=list)
    backends: Backends = Backends()
    shadow: ShadowSpec = ShadowSpec()
    stages: list[StageSpec] = Field(min_length=1, max_length=defaults.MAX_STAGES)
    analysis: AnalysisSpec = AnalysisSpec()
    policy: PolicySpec = PolicySpec()
    schedule: ScheduleSpec = ScheduleSpec()
    concurrency: ConcurrencySpec = ConcurrencySpec()

    @property
    def dag_id(self) -> str:
        return defaults.rollout_dag_id(self.model)

    def metric(self, name: str) -> MetricSpec:
        for m in self.analysis.metrics:
            if m.name == name:
                return m
        raise KeyError(f"{self.model}: no metric {name!r}")


def _loc(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: Mapping[str, Any]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see the spec reference in README.md)"
    if kind == "missing":
        return "required field is missing"
    if kind == "enum" and "expected" in ctx:
        return f"must be one of {ctx['expected']}, got {err.get('input')!r}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return msg.replace("Input should be", "must be").replace("String should", "must")


def semantic_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    """Return the cross-field problems pydantic's per-field checks cannot see."""
    from canary.backends import KNOWN_BACKENDS  # lazy: keeps the spec module import-light

    problems: list[tuple[str, str]] = []
    for role in ("serving", "metrics", "registry", "lock"):
        name = getattr(spec.backends, role).name
        if name not in KNOWN_BACKENDS[role]:
            problems.append((f"backends.{role}.name",
                             f"unknown {role} backend {name!r}; known: {', '.join(sorted(KNOWN_BACKENDS[role]))}"))
    if spec.shadow.enabled and spec.backends.metrics.name in ("cloudwatch", "prometheus"):
        problems.append(("shadow.enabled", f"the {spec.backends.metrics.name} metrics backend cannot pair "
                                           "mirrored requests; set shadow.enabled: false or use a "
                                           "per-request metrics store"))
    if spec.shadow.enabled and spec.backends.serving.name == "sagemaker" and spec.shadow.mirror_percent != 100:
        problems.append(("shadow.mirror_percent", "SageMaker shadow variants mirror every request: must be 100"))
    for i, expectation in enumerate(spec.shadow.expectations):
        problems += [(f"shadow.expectations[{i}].{loc}", msg) for loc, msg in expectation_problems(expectation)]
    prev = None
    for i, stage in enumerate(spec.stages):
        if prev is not None and stage.weight <= prev:
            problems.append((f"stages[{i}].weight", f"must be greater than stages[{i - 1}].weight ({prev})"))
        prev = stage.weight
        if stage.min_duration_s > stage.max_duration_s:
            problems.append((f"stages[{i}].min_duration",
                             f"must not exceed stages[{i}].max_duration ({stage.max_duration_s:g}s)"))
    if spec.stages and spec.stages[-1].weight != 100:
        problems.append((f"stages[{len(spec.stages) - 1}].weight",
                         f"the last stage must be 100 (full promotion), got {spec.stages[-1].weight}"))
    lease_ttl_s = spec.concurrency.lease_ttl_s
    if lease_ttl_s < 3 * spec.analysis.poll_interval_s:
        problems.append(("concurrency.lease_ttl", f"must be at least 3 x analysis.poll_interval "
                                                  f"({3 * spec.analysis.poll_interval_s:g}s): each poll renews it"))
    if spec.concurrency.poll_interval_s > spec.concurrency.max_wait_s:
        problems.append(("concurrency.poll_interval", "must not exceed concurrency.max_wait"))
    srm_alpha = spec.analysis.srm_alpha
    if srm_alpha is not None and srm_alpha >= spec.analysis.alpha:
        problems.append(("analysis.srm_alpha", f"must be below analysis.alpha ({spec.analysis.alpha:g}), got "
                                               f"{srm_alpha:g}: it is carved out of alpha and the metrics share "
                                               "the rest; omit it for the default min(0.001, alpha / 10)"))
    seen: set[str] = set()
    for i, metric in enumerate(spec.analysis.metrics):
        loc = f"analysis.metrics[{i}]"
        if metric.name in seen:
            problems.append((f"{loc}.name", f"duplicate metric name {metric.name!r}"))
        seen.add(metric.name)
        is_latency = metric.kind is MetricKind.LATENCY
        if is_latency and metric.quantile is None and metric.threshold_ms is None:
            problems.append((loc, "a latency metric needs quantile (e.g. 0.99) or threshold_ms"))
        if not is_latency and (metric.quantile is not None or metric.threshold_ms is not None):
            problems.append((loc, f"quantile/threshold_ms apply to latency metrics only, not {metric.kind.value}"))
        if metric.kind is MetricKind.PREDICTION_DISTRIBUTION and metric.tolerance >= 1.0:
            problems.append((f"{loc}.tolerance", "total-variation tolerance must be < 1"))
        if metric.kind is MetricKind.KPI and metric.higher_is_better and metric.effective_mde >= 1.0:
            problems.append((f"{loc}.mde", "a KPI drop is relative: mde must be < 1 (set mde, the default is "
                                           "2 x tolerance)"))
        if metric.mde is not None and metric.mde < metric.tolerance:
            problems.append((f"{loc}.mde", f"must be >= tolerance ({metric.tolerance:g})"))
    cron = spec.schedule.nightly_cron
    if cron is not None:
        from croniter import croniter  # an Airflow dependency

        if not croniter.is_valid(cron):
            problems.append(("schedule.nightly_cron", f"not a valid cron expression: {cron!r} (e.g. '0 2 * * *')"))
    events = spec.schedule.on_registry_event
    champion_alias = str(spec.backends.registry.options.get("champion_alias", "champion"))
    if events.enabled and events.watch is RegistryWatch.ALIAS and events.alias == champion_alias:
        problems.append(("schedule.on_registry_event.alias",
                         f"must not be the champion alias {champion_alias!r}: watch the alias candidates are "
                         "given, e.g. 'challenger'"))
    problems += _cloudwatch_window_problems(spec)
    if spec.analysis.poll_interval_s > min(s.max_duration_s for s in spec.stages):
        problems.append(("analysis.poll_interval", "must not exceed the shortest stage max_duration"))
    return problems


def _cloudwatch_window_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    """CloudWatch sees whole periods ending ``settle_s`` early: a shorter stage minimum only ever sees no data.

    The window's start is rounded up to a period and its end (minus ``settle_s``) down, so the first whole
    period is complete ``warmup + settle_s + 2 x period_s`` after the traffic change at the latest; a stage
    that may decide earlier would HALT on "no data" with a healthy candidate.
    """
    ref = spec.backends.metrics
    if ref.name != "cloudwatch":
        return []
    try:
        period_s = float(ref.options.get("period_s", defaults.CLOUDWATCH_PERIOD_S))
        settle_s = float(ref.options.get("settle_s", 0.0))
    except (TypeError, ValueError):
        return []  # the backend reports bad option values when it is built
    needed_s = spec.analysis.warmup_s + settle_s + 2 * period_s
    return [(f"stages[{i}].min_duration",
             f"must be at least warmup + settle_s + 2 x period_s ({needed_s:g}s) with CloudWatch metrics, "
             f"got {stage.min_duration_s:g}s: earlier, no whole period is in the window and the stage halts "
             "on missing data")
            for i, stage in enumerate(spec.stages) if stage.min_duration_s < needed_s]


def parse_spec(data: Any, *, source: str = "<spec>") -> RolloutSpec:
    """Validate a spec given as plain data; raise :class:`SpecError` listing every problem."""
    if not isinstance(data, Mapping):
        raise SpecError(source, [("", f"a spec must be a YAML mapping, got {type(data).__name__}")])
    try:
        spec = RolloutSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(source, [(_loc(e["loc"]), _message(e)) for e in err.errors()]) from err
    problems = semantic_problems(spec)
    if problems:
        raise SpecError(source, problems)
    return spec


def load_spec(path: str | Path) -> RolloutSpec:
    """Load and validate one YAML spec file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SpecError(str(path), [("", f"cannot read file: {err.strerror}")]) from err
    except yaml.YAMLError as err:
        raise SpecError(str(path), [("", f"not valid YAML: {err}")]) from err
    spec = parse_spec(data, source=str(path))
    if spec.model != path.stem:
        raise SpecError(str(path), [("model", f"must match the file name {path.stem!r}, got {spec.model!r}")])
    return spec


def spec_files(directory: str | Path) -> list[Path]:
    """Return the spec files of a directory, sorted."""
    directory = Path(directory)
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
