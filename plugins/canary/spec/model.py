"""The rollout spec: everything a rollout will do and every rollback condition, declared before it starts.

A spec is one YAML file per model (``include/rollouts/<model>.yaml``). :func:`load_spec` validates it
with pydantic and then with the cross-field rules below, and raises :class:`~canary.errors.SpecError`
listing every problem as ``file: field.path: what is allowed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from canary.errors import SpecError
from canary.rollout.expectations import ExpectationSpec, expectation_problems
from canary.spec import defaults
from canary.spec.durations import parse_duration_s

if TYPE_CHECKING:
    from canary.backends.options import BackendOptions

Duration = Annotated[float, BeforeValidator(parse_duration_s)]
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ATTRIBUTE_PATTERN = defaults.ATTRIBUTE_PATTERN
#: The backend roles of ``backends``.
ROLES = tuple(defaults.DEFAULT_CONN_IDS)


class _Strict(BaseModel):
    # Unknown keys are rejected: a typo must never silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BackendRef(_Strict):
    """A backend chosen by name, reached through an Airflow connection.

    ``options`` are checked against the named backend's options model (:mod:`canary.backends.options`)
    when the spec is loaded; :meth:`Backends.constructor_kwargs` returns them typed.
    """

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

    def typed_options(self, role: str) -> BackendOptions:
        """Return the ``role`` backend's options as its options model.

        :raises ConfigError: the options do not fit the model (a loaded spec has been checked already).
        """
        from canary.backends.options import parse_options

        ref = getattr(self, role)
        return parse_options(role, ref.name, ref.options)

    def constructor_kwargs(self, role: str) -> dict[str, Any]:
        """Return the ``role`` backend's options, typed and JSON-able, as its constructor's keyword arguments."""
        return self.typed_options(role).constructor_kwargs()


def _default_expectations() -> list[ExpectationSpec]:
    return [ExpectationSpec.model_validate(e) for e in defaults.SHADOW_EXPECTATIONS]


class ShadowInconclusive(StrEnum):
    """What a shadow test without a conclusion at ``max_duration`` does."""

    PROCEED = "proceed"  # go on to the canary stages, whose tests decide on live traffic
    FAIL = "fail"


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
    max_slow_share_increase: float = Field(defaults.SHADOW_MAX_SLOW_SHARE_INCREASE, ge=0.0, le=1.0)
    latency_baseline_s: Duration = Field(defaults.SHADOW_LATENCY_BASELINE_S, alias="latency_baseline", gt=0)
    latency_p95_slack_ms: float = Field(defaults.SHADOW_LATENCY_P95_SLACK_MS, ge=0.0)
    min_prediction_agreement: float = Field(defaults.SHADOW_MIN_PREDICTION_AGREEMENT, ge=0.0, le=1.0)
    score_shift: float = Field(defaults.SHADOW_SCORE_SHIFT, gt=0.0, lt=1.0)
    max_score_shift_imbalance: float = Field(defaults.SHADOW_MAX_SCORE_SHIFT_IMBALANCE, ge=0.0, le=1.0)
    #: Largest mean difference of the candidate's score from stable's on the same requests, either way (on the
    #: score scale: 0.05 = 5 points of probability); None: no mean-difference test (see the default's note).
    max_mean_score_shift: float | None = Field(defaults.SHADOW_MAX_MEAN_SCORE_SHIFT, gt=0.0, le=1.0)
    #: Largest total-variation distance between the two versions' score distributions on the same requests
    #: (equal-width bins); None: no distribution test (it needs thousands of pairs to pass).
    max_score_tv: float | None = Field(None, gt=0.0, le=1.0)
    on_inconclusive: ShadowInconclusive = ShadowInconclusive(defaults.SHADOW_ON_INCONCLUSIVE)
    expectations: list[ExpectationSpec] = Field(default_factory=_default_expectations)

    @model_validator(mode="before")
    @classmethod
    def _replaced_fields(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "max_latency_p95_ratio" in data:
            raise ValueError("max_latency_p95_ratio was replaced by the paired latency test: set "
                             "shadow.max_slow_share_increase (how much more often than stable the candidate may "
                             f"be slower than stable's p95 on the same requests; default "
                             f"{defaults.SHADOW_MAX_SLOW_SHARE_INCREASE}) and remove max_latency_p95_ratio")
        return data


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
    #: Wrong predictions among requests whose ground-truth label has arrived (late feedback).
    PREDICTION_QUALITY = "prediction_quality"


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
    label_delay_s: Duration = Field(0.0, alias="label_delay", ge=0.0, le=defaults.MAX_LABEL_DELAY_S, description=(
        "prediction_quality, and kpi with an outcome: how long feedback takes to arrive; only requests at least "
        "this old count, so that early looks are not biased toward requests whose feedback comes fast"))
    outcome: str | None = Field(None, pattern=defaults.OUTCOME_PATTERN, max_length=64, description=(
        "kpi only: the business outcome sent as feedback (POST .../feedback {request_id, outcome, value}); the KPI "
        "is the share of served requests at least label_delay old that had it (value > 0)"))

    @property
    def uses_feedback(self) -> bool:
        """Whether the metric reads late feedback (labels or business outcomes) joined to requests."""
        return self.kind is MetricKind.PREDICTION_QUALITY or (self.kind is MetricKind.KPI and self.outcome is not None)

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


class SegmentsSpec(_Strict):
    """Test every metric and the traffic split in each listed segment as well as overall.

    The segments are the values of one request attribute (``by``), declared before the rollout starts so
    that the error budget is split among them in advance (weighted Bonferroni on e-values, see
    :mod:`canary.stats.budget`); requests with another value count overall only.
    """

    by: str = Field(pattern=ATTRIBUTE_PATTERN, description="request attribute naming a request's segment, e.g. device")
    values: list[Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]] = Field(
        min_length=1, max_length=defaults.MAX_SEGMENTS, description="the segments tested, e.g. [android, ios, web]")
    alpha_share: float = Field(defaults.SEGMENTS_ALPHA_SHARE, gt=0.0, lt=1.0, description=(
        "share of each test's level spent on the segments (split equally among them); the overall test keeps "
        "the rest"))
    min_share: float = Field(defaults.SEGMENT_MIN_SHARE, ge=0.0, lt=1.0, description=(
        "a segment with a smaller share of the stage's canary requests need not show non-inferiority to advance "
        "(a regression in it still rolls back)"))
    require_each: bool = Field(True, description=(
        "promotion needs non-inferiority in every segment with at least min_share of the canary requests; "
        "false: segments can only roll back"))

    @model_validator(mode="before")
    @classmethod
    def _values_declared(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "by" in data and "values" not in data:
            raise ValueError("values: list the segments to test, e.g. [android, ios, web]: the error budget is "
                             "split among them before the rollout starts")
        return data

    @field_validator("values")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"each segment once: {duplicates} listed more than once")
        return values

    def label(self, value: str) -> str:
        """Return ``by=value``, the segment's name in reasons and reports."""
        return f"{self.by}={value}"


class TargetingSpec(_Strict):
    """Expose the canary only to requests whose attributes match, in the first stages.

    During a targeted stage the canary's ``weight`` is its share of the *matching* requests; every other request
    is served by stable. Users stay sticky (routing hashes the user id). Canary and stable are compared on the
    matching requests only, and the traffic split is checked there. Later stages, and promotion, expose everyone.
    """

    match: dict[Annotated[str, Field(pattern=ATTRIBUTE_PATTERN)],
                list[Annotated[str, Field(min_length=1, max_length=64)]]] = Field(
        min_length=1, max_length=defaults.MAX_TARGETING_ATTRIBUTES, description=(
            "request attributes and the values that expose the canary, e.g. {region: [eu-west]}: every attribute "
            "listed, any of its values (segment is the one the serving layer derives from the user id)"))
    stages: int | None = Field(None, ge=1, description=(
        "how many leading stages are targeted; default: every stage below 100%"))

    @field_validator("match")
    @classmethod
    def _values(cls, match: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, values in match.items():
            if not 1 <= len(values) <= defaults.MAX_TARGETING_VALUES:
                raise ValueError(f"{name}: list 1 to {defaults.MAX_TARGETING_VALUES} values, got {len(values)}")
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"{name}: each value once: {duplicates} listed more than once")
        return match

    def describe(self) -> str:
        """Return the rule in words, e.g. ``region in [eu-west] and plan in [internal]``."""
        return " and ".join(f"{name} in [{', '.join(values)}]" for name, values in self.match.items())


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
    segments: SegmentsSpec | None = None


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


class NotifyEvent(StrEnum):
    """What a rollout tells people about (``notify[].events``); ``all`` stands for every one."""

    STARTED = "started"  # validate_request froze the plan: traffic is about to move
    STAGE_DECIDED = "stage_decided"  # a stage's gate decided (advance, roll back, hold)
    APPROVAL_NEEDED = "approval_needed"  # the gate holds for a person
    HALTED = "halted"  # missing data or a sample-ratio mismatch stopped a stage
    ROLLED_BACK = "rolled_back"
    PROMOTED = "promoted"
    FAILED = "failed"  # refused before any traffic moved, or a task failed (traffic back on stable)
    STUCK = "stuck"  # still running well past the sum of its deadlines
    ALL = "all"


class NotifierKind(StrEnum):
    HTTP = "http"
    SMTP = "smtp"
    SNS = "sns"
    SLACK = "slack"


def _default_notify_events() -> list[NotifyEvent]:
    return [NotifyEvent(e) for e in defaults.NOTIFY_EVENTS]


class NotifySpec(_Strict):
    """Tell people through one Airflow provider notifier when one of ``events`` happens.

    ``options`` are checked against the notifier's options model (:mod:`canary.notify.options`) when the
    spec is loaded; credentials live in the connection ``conn_id``, never in the spec.
    """

    events: list[NotifyEvent] = Field(default_factory=_default_notify_events, min_length=1)
    notifier: NotifierKind
    conn_id: str = ""
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("events", mode="before")
    @classmethod
    def _some_events(cls, events: Any) -> Any:
        if isinstance(events, list) and not events:
            raise ValueError("must list at least one event, e.g. [rolled_back, promoted], or [all]; omit it for "
                             f"the default {list(defaults.NOTIFY_EVENTS)}")
        return events

    @property
    def effective_conn_id(self) -> str:
        return self.conn_id or defaults.NOTIFY_CONN_IDS[self.notifier.value]

    def wants(self, events: Iterable[NotifyEvent]) -> bool:
        """Return whether this entry is told about a notice that stands for ``events``."""
        return NotifyEvent.ALL in self.events or any(e in self.events for e in events)


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
    targeting: TargetingSpec | None = None
    analysis: AnalysisSpec = AnalysisSpec()
    policy: PolicySpec = PolicySpec()
    schedule: ScheduleSpec = ScheduleSpec()
    concurrency: ConcurrencySpec = ConcurrencySpec()
    notify: list[NotifySpec] = Field(default_factory=list)

    @property
    def dag_id(self) -> str:
        return defaults.rollout_dag_id(self.model)

    def targeting_for(self, stage_index: int) -> TargetingSpec | None:
        """Return the targeting rule of stage ``stage_index`` (0-based), or None when the stage exposes everyone."""
        targeting = self.targeting
        if targeting is None or self.stages[stage_index].weight >= 100:
            return None
        if targeting.stages is not None and stage_index >= targeting.stages:
            return None
        return targeting

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
            part = str(part) or "''"  # an empty key (``"": 1``) must still show where the problem is
            out += f".{part}" if out else part
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


def _backend_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    """Every backend is known, and its ``options`` fit that backend's options model."""
    from canary.backends import KNOWN_BACKENDS  # lazy: keeps the spec module import-light
    from canary.backends.options import option_problems

    problems: list[tuple[str, str]] = []
    for role in ROLES:
        ref = getattr(spec.backends, role)
        if ref.name not in KNOWN_BACKENDS[role]:
            problems.append((f"backends.{role}.name", f"unknown {role} backend {ref.name!r}; known: "
                                                      f"{', '.join(sorted(KNOWN_BACKENDS[role]))}"))
            continue
        _, found = option_problems(role, ref.name, ref.options)
        problems += [(f"backends.{role}.options" + (f".{loc}" if loc else ""), msg) for loc, msg in found]
    return problems


def _typed_options(spec: RolloutSpec, role: str) -> BackendOptions | None:
    """Return the typed options of the spec's ``role`` backend, or None when they are invalid (reported)."""
    from canary.backends.options import option_problems

    ref = getattr(spec.backends, role)
    return option_problems(role, ref.name, ref.options)[0]


def _shadow_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if spec.shadow.enabled and spec.backends.metrics.name in ("cloudwatch", "prometheus"):
        problems.append(("shadow.enabled", f"the {spec.backends.metrics.name} metrics backend cannot pair "
                                           "mirrored requests; set shadow.enabled: false or use a "
                                           "per-request metrics store"))
    if spec.shadow.enabled and spec.backends.serving.name == "sagemaker" and spec.shadow.mirror_percent != 100:
        problems.append(("shadow.mirror_percent", "SageMaker shadow variants mirror every request: must be 100"))
    return problems


def _segment_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    if spec.analysis.segments is None:
        return []
    from canary.backends import SEGMENTED_METRICS  # lazy: keeps the spec module import-light

    name = spec.backends.metrics.name
    if name not in SEGMENTED_METRICS:
        return [("analysis.segments", f"the {name} metrics backend cannot split its metrics by segment; remove "
                                      "analysis.segments or use a metrics backend that can: "
                                      f"{', '.join(sorted(SEGMENTED_METRICS))}")]
    return []


def _targeting_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    """targeting: a serving backend that can route by attributes, a metrics backend that can read them."""
    if spec.targeting is None:
        return []
    from canary.backends import TARGETED_METRICS, TARGETING_SERVING  # lazy: a light spec module

    problems: list[tuple[str, str]] = []
    serving, metrics = spec.backends.serving.name, spec.backends.metrics.name
    if serving not in TARGETING_SERVING:
        problems.append(("targeting", f"the {serving} serving backend cannot route by request attributes (it "
                                      "splits traffic by weight only); remove targeting or use a serving backend "
                                      f"that can: {', '.join(sorted(TARGETING_SERVING))}"))
    if metrics not in TARGETED_METRICS:
        problems.append(("targeting", f"the {metrics} metrics backend cannot restrict its statistics to the "
                                      "targeted requests, so canary and stable would be compared on different "
                                      "populations; remove targeting or use a metrics backend that can: "
                                      f"{', '.join(sorted(TARGETED_METRICS))}"))
    below_full = sum(1 for stage in spec.stages if getattr(stage, "weight", 100) < 100)
    if spec.targeting.stages is not None and spec.targeting.stages > below_full:
        problems.append(("targeting.stages", f"must be at most {below_full}, the number of stages below 100%: the "
                                             "last stage serves everyone"))
    if below_full == 0:
        problems.append(("targeting", "no stage below 100% to target: add a stage such as {weight: 5} before the "
                                      "last one"))
    return problems


def _label_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    """Feedback metrics (prediction_quality, kpi with an outcome): one label delay, shorter than every compared
    stage, on a backend that joins feedback to requests."""
    quality = [(i, m) for i, m in enumerate(spec.analysis.metrics) if getattr(m, "uses_feedback", False)]
    if not quality:
        return []
    from canary.backends import LABELLED_METRICS  # lazy: keeps the spec module import-light

    problems: list[tuple[str, str]] = []
    first_i, first = quality[0]
    name = spec.backends.metrics.name
    if name not in LABELLED_METRICS:
        field = "kind" if first.kind is MetricKind.PREDICTION_QUALITY else "outcome"
        problems.append((f"analysis.metrics[{first_i}].{field}", f"the {name} metrics backend does not join late "
                                                                 "feedback to the requests it is about; use a metrics "
                                                                 f"backend that does: {', '.join(sorted(LABELLED_METRICS))}"))
    for i, m in quality[1:]:
        if m.label_delay_s != first.label_delay_s:
            problems.append((f"analysis.metrics[{i}].label_delay", f"must equal analysis.metrics[{first_i}]"
                                                                   f".label_delay ({first.label_delay_s:g}s): a stage "
                                                                   "reads one window of requests old enough for "
                                                                   "their feedback"))
    for j, stage in enumerate(spec.stages):
        max_s = getattr(stage, "max_duration_s", None)
        if getattr(stage, "weight", 100) < 100 and max_s is not None and first.label_delay_s >= max_s:
            problems.append((f"analysis.metrics[{first_i}].label_delay",
                             f"must be shorter than stages[{j}].max_duration ({max_s:g}s): no request of that stage "
                             "would be old enough to have its label"))
    return problems


def _expectation_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    return [(f"shadow.expectations[{i}].{loc}", msg)
            for i, expectation in enumerate(spec.shadow.expectations)
            for loc, msg in expectation_problems(expectation)]


def _stage_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    # getattr: with field problems elsewhere a stage may lack a valid value (see parse_spec); compare the rest.
    problems: list[tuple[str, str]] = []
    weights = [getattr(stage, "weight", None) for stage in spec.stages]
    for i in range(1, len(weights)):
        prev, weight = weights[i - 1], weights[i]
        if prev is not None and weight is not None and weight <= prev:
            problems.append((f"stages[{i}].weight", f"must be greater than stages[{i - 1}].weight ({prev})"))
    for i, stage in enumerate(spec.stages):
        min_s, max_s = getattr(stage, "min_duration_s", None), getattr(stage, "max_duration_s", None)
        if min_s is not None and max_s is not None and min_s > max_s:
            problems.append((f"stages[{i}].min_duration", f"must not exceed stages[{i}].max_duration ({max_s:g}s)"))
    if weights and weights[-1] is not None and weights[-1] != 100:
        problems.append((f"stages[{len(spec.stages) - 1}].weight",
                         f"the last stage must be 100 (full promotion), got {weights[-1]}"))
    return problems


def _concurrency_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if spec.concurrency.lease_ttl_s < 3 * spec.analysis.poll_interval_s:
        problems.append(("concurrency.lease_ttl", f"must be at least 3 x analysis.poll_interval "
                                                  f"({3 * spec.analysis.poll_interval_s:g}s): each poll renews it"))
    if spec.concurrency.poll_interval_s > spec.concurrency.max_wait_s:
        problems.append(("concurrency.poll_interval", "must not exceed concurrency.max_wait"))
    return problems


def _alpha_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    srm_alpha = spec.analysis.srm_alpha
    if srm_alpha is not None and srm_alpha >= spec.analysis.alpha:
        problems.append(("analysis.srm_alpha", f"must be below analysis.alpha ({spec.analysis.alpha:g}), got "
                                               f"{srm_alpha:g}: it is carved out of alpha and the metrics share "
                                               "the rest; omit it for the default min(0.001, alpha / 10)"))
    return problems


def _metric_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
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
        if not metric.uses_feedback and metric.label_delay_s:
            problems.append((f"{loc}.label_delay", f"applies to prediction_quality metrics and kpi metrics with an "
                                                   f"outcome only, not {metric.kind.value}"
                                                   + (" without one" if metric.kind is MetricKind.KPI else "")))
        if metric.outcome is not None and metric.kind is not MetricKind.KPI:
            problems.append((f"{loc}.outcome", f"applies to kpi metrics only, not {metric.kind.value}"))
        if metric.mde is not None and metric.mde < metric.tolerance:
            problems.append((f"{loc}.mde", f"must be >= tolerance ({metric.tolerance:g})"))
    return problems


def _schedule_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    cron = spec.schedule.nightly_cron
    if cron is not None:
        from croniter import croniter  # an Airflow dependency

        if not croniter.is_valid(cron):
            problems.append(("schedule.nightly_cron", f"not a valid cron expression: {cron!r} (e.g. '0 2 * * *')"))
    return problems


def _registry_event_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    events = spec.schedule.on_registry_event
    if not (events.enabled and events.watch is RegistryWatch.ALIAS):
        return []
    registry_options = _typed_options(spec, "registry")
    if registry_options is None:
        return []  # reported by _backend_problems
    # Only the MLflow registry has the option; every other registry calls its serving version "champion".
    champion_alias = getattr(registry_options, "champion_alias", defaults.CHAMPION_ALIAS)
    if events.alias == champion_alias:
        return [("schedule.on_registry_event.alias",
                 f"must not be the champion alias {champion_alias!r}: watch the alias candidates are given, "
                 "e.g. 'challenger'")]
    return []


def _cloudwatch_window_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    """CloudWatch sees whole periods ending ``settle_s`` early: a shorter stage minimum only ever sees no data.

    The window's start is rounded up to a period and its end (minus ``settle_s``) down, so the first whole
    period is complete ``warmup + settle_s + 2 x period_s`` after the traffic change at the latest; a stage
    that may decide earlier would HALT on "no data" with a healthy candidate.
    """
    if spec.backends.metrics.name != "cloudwatch":
        return []
    options = _typed_options(spec, "metrics")
    if options is None:
        return []  # reported by _backend_problems
    from canary.backends.options import CloudWatchOptions

    assert isinstance(options, CloudWatchOptions)
    needed_s = spec.analysis.warmup_s + options.settle_s + 2 * options.period_s
    problems = []
    for i, stage in enumerate(spec.stages):
        min_duration_s = getattr(stage, "min_duration_s", None)  # see _stage_problems
        if min_duration_s is not None and min_duration_s < needed_s:
            problems.append((f"stages[{i}].min_duration",
                             f"must be at least warmup + settle_s + 2 x period_s ({needed_s:g}s) with CloudWatch "
                             f"metrics, got {min_duration_s:g}s: earlier, no whole period is in the window and "
                             "the stage halts on missing data"))
    return problems


def _poll_interval_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    max_durations_s = [s.max_duration_s for s in spec.stages if hasattr(s, "max_duration_s")]
    if max_durations_s and spec.analysis.poll_interval_s > min(max_durations_s):
        return [("analysis.poll_interval", "must not exceed the shortest stage max_duration")]
    return []


def _notify_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    """Every notifier's ``options`` fit its options model, and its provider is installed."""
    from canary.notify.options import PROVIDERS, option_problems, provider_installed

    problems: list[tuple[str, str]] = []
    for i, entry in enumerate(spec.notify):
        notifier = getattr(entry, "notifier", None)
        if notifier is None:
            continue  # invalid or missing: reported by pydantic
        if not provider_installed(notifier.value):
            problems.append((f"notify[{i}].notifier", f"the {notifier.value} notifier needs the "
                                                      f"{PROVIDERS[notifier.value]} package: install it "
                                                      f"(pip install {PROVIDERS[notifier.value]}) or use "
                                                      "http, smtp or sns"))
            continue
        options = getattr(entry, "options", None)
        if options is None:
            continue
        _, found = option_problems(notifier.value, options)
        problems += [(f"notify[{i}].options" + (f".{loc}" if loc else ""), msg) for loc, msg in found]
    return problems


#: The cross-field rules, each a pure function of the spec returning ``(location, message)`` problems.
CROSS_FIELD_RULES: tuple[Callable[[RolloutSpec], list[tuple[str, str]]], ...] = (
    _backend_problems, _shadow_problems, _segment_problems, _targeting_problems, _label_problems, _expectation_problems, _stage_problems, _concurrency_problems,
    _alpha_problems, _metric_problems, _schedule_problems, _registry_event_problems, _cloudwatch_window_problems,
    _poll_interval_problems, _notify_problems,
)


def semantic_problems(spec: RolloutSpec) -> list[tuple[str, str]]:
    """Return the cross-field problems pydantic's per-field checks cannot see."""
    return [problem for rule in CROSS_FIELD_RULES for problem in rule(spec)]


class _Unreadable:
    """Stands for a list item that is not even a mapping: reading any field of it skips the rule."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def _field_value(field: FieldInfo, raw: Any) -> Any:
    """Return ``raw`` validated as ``field``; for a model (or list of models) with bad parts, the valid parts.

    :raises ValueError: nothing of ``raw`` is valid.
    """
    try:
        annotation = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
        return TypeAdapter(annotation).validate_python(raw)
    except ValidationError:
        pass
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _valid_parts(annotation, raw)
    args = get_args(annotation)
    if get_origin(annotation) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        if isinstance(raw, list):
            return [_valid_parts(args[0], item) if isinstance(item, Mapping) else _Unreadable() for item in raw]
    raise ValueError("invalid")


def _valid_parts(model: type[BaseModel], data: Any) -> Any:
    """Return ``model`` built from the valid fields of ``data`` only; an invalid field is absent.

    Reading an absent field raises ``AttributeError``: a cross-field rule that reads one is skipped, so it
    never judges a value that pydantic already refused (or a default standing in for it).
    """
    if not isinstance(data, Mapping):
        return _Unreadable()
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.alias if field.alias in data else name
        if key not in data:
            if not field.is_required():
                values[name] = field.get_default(call_default_factory=True)
            continue
        try:
            values[name] = _field_value(field, data[key])
        except ValueError:
            continue
    partial = model.model_construct(**values)
    for name in set(model.model_fields) - set(values):
        partial.__dict__.pop(name, None)  # model_construct filled in the default
    return partial


def _cross_field_problems_of_valid_parts(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Run every cross-field rule whose fields are all valid, on a spec that has field problems."""
    partial = _valid_parts(RolloutSpec, data)
    problems: list[tuple[str, str]] = []
    for rule in CROSS_FIELD_RULES:
        try:
            problems += rule(partial)
        except AttributeError:
            continue  # the rule reads a field with a problem of its own: that one is reported instead
    return problems


def parse_spec(data: Any, *, source: str = "<spec>") -> RolloutSpec:
    """Validate a spec given as plain data; raise :class:`SpecError` listing every problem."""
    if not isinstance(data, Mapping):
        raise SpecError(source, [("", f"a spec must be a YAML mapping, got {type(data).__name__}")])
    try:
        spec = RolloutSpec.model_validate(data)
    except ValidationError as err:
        # Report the cross-field problems among the valid fields too: one pass shows every problem.
        problems = [(_loc(e["loc"]), _message(e)) for e in err.errors()]
        problems += [p for p in _cross_field_problems_of_valid_parts(data) if p not in problems]
        raise SpecError(source, problems) from err
    problems = semantic_problems(spec)
    if problems:
        raise SpecError(source, problems)
    return spec


def _expanded_nodes(root: yaml.Node, limit: int) -> int:
    """Return how many nodes ``root`` holds with every alias expanded, stopping once past ``limit``.

    Iterative and memoised per node, so a document whose aliases nest (each anchor repeating the previous
    one) is measured in the time of its unexpanded size; a cycle (``&a [*a]``) counts as past the limit.
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        if children_done:
            in_progress.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(child)] for child in children))
            continue
        if key in in_progress:
            return limit + 1  # the node contains itself
        in_progress.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in in_progress:
                return limit + 1
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader that refuses a document whose aliases expand past ``MAX_SPEC_NODES`` nodes."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        if node is not None and _expanded_nodes(node, defaults.MAX_SPEC_NODES) > defaults.MAX_SPEC_NODES:
            raise yaml.YAMLError(f"more than {defaults.MAX_SPEC_NODES} values once its aliases (*name) are "
                                 "expanded, or an alias that contains itself; write the values out instead")
        return node


def load_spec(path: str | Path) -> RolloutSpec:
    """Load and validate one YAML spec file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SpecError(str(path), [("", f"cannot read file: {err.strerror}")]) from err
    if len(raw) > defaults.MAX_SPEC_BYTES:
        raise SpecError(str(path), [("", f"the file has {len(raw)} bytes; a spec is at most "
                                         f"{defaults.MAX_SPEC_BYTES} bytes")])
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_BoundedLoader)  # a SafeLoader subclass: safe
    except UnicodeDecodeError as err:
        raise SpecError(str(path), [("", f"not UTF-8 text: byte {err.start} is {raw[err.start:err.start + 1]!r}; "
                                         "save the file as UTF-8")]) from err
    except yaml.YAMLError as err:
        raise SpecError(str(path), [("", f"not valid YAML: {err}")]) from err
    except RecursionError as err:  # the YAML parser recurses once per nesting level
        raise SpecError(str(path), [("", "not valid YAML: nested too deeply")]) from err
    model = data.get("model") if isinstance(data, Mapping) else None
    name_problems = [("model", f"must match the file name {path.stem!r}, got {model!r}")] \
        if isinstance(model, str) and model != path.stem else []
    try:
        spec = parse_spec(data, source=str(path))
    except SpecError as err:  # one pass: the file-name rule too
        raise SpecError(str(path), [*err.problems, *name_problems]) from err
    if name_problems:
        raise SpecError(str(path), name_problems)
    return spec


def spec_files(directory: str | Path) -> list[Path]:
    """Return the spec files of a directory, sorted."""
    directory = Path(directory)
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
