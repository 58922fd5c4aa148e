"""One poll of a stage: read the metrics window and run the gate. Shared by the sensor and its trigger."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from canary.backends.base import (
    LabelledMetricsSource,
    MetricsSource,
    SegmentedMetricsSource,
    within_population,
)
from canary.errors import ConfigError, NoDataError
from canary.history.looks import make_look
from canary.history.model import Look
from canary.policy.analysis import Analyzer
from canary.policy.decisions import GateResult
from canary.policy.evidence import Snapshot, VersionStats
from canary.policy.gate import StageClock, evaluate_stage
from canary.spec.model import MetricKind, RolloutSpec, SegmentsSpec, StageSpec


@dataclass(frozen=True, kw_only=True)
class StageWatch:
    """Everything one stage's polls need, JSON-able so it can travel in trigger kwargs."""

    stage_index: int
    stable: str
    candidate: str
    stage_started_at_s: float
    carry_state: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"stage_index": self.stage_index, "stable": self.stable, "candidate": self.candidate,
                "stage_started_at_s": self.stage_started_at_s,
                "carry_state": dict(self.carry_state) if self.carry_state is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageWatch:
        return cls(stage_index=int(data["stage_index"]), stable=str(data["stable"]),
                   candidate=str(data["candidate"]), stage_started_at_s=float(data["stage_started_at_s"]),
                   carry_state=data.get("carry_state"))


def label_delay_s(spec: RolloutSpec) -> float | None:
    """Return the label delay of the spec's feedback metrics (prediction_quality, kpi with an outcome; one delay,
    by validation), None without any."""
    delays = [m.label_delay_s for m in spec.analysis.metrics if m.uses_feedback]
    return delays[0] if delays else None


def outcome_names(spec: RolloutSpec) -> tuple[str, ...]:
    """Return the business outcomes the spec's kpi metrics read from feedback, in spec order."""
    return tuple(dict.fromkeys(m.outcome for m in spec.analysis.metrics
                               if m.kind is MetricKind.KPI and m.outcome is not None))


def default_analyzer() -> Analyzer:
    """Return the analyzer the gate uses: the anytime-valid sequential tests."""
    from canary.stats import SequentialAnalyzer  # scipy: imported at run time, never at DAG parse time

    return SequentialAnalyzer()


def read_window(metrics: MetricsSource, watch: StageWatch, *, warmup_s: float, now_s: float,
                segments: SegmentsSpec | None = None, label_delay_s: float | None = None,
                outcomes: Sequence[str] = ()) -> tuple[Snapshot | None, str | None]:
    """Return the stage's window after warm-up, or ``(None, reason)`` when the backend has no data.

    With ``segments``, the window holds each segment's too. With ``label_delay_s`` (a feedback metric), each
    version's ``labelled``/``wrong`` count the labelled requests of the window that are at least that old: the
    label window ends ``label_delay_s`` before ``now_s``; with ``outcomes`` too, ``aged`` counts the served
    requests of that window and ``outcomes`` those that had each business outcome.

    :raises ConfigError: ``segments`` or labels on a backend that cannot read them (the spec refuses that).
    """
    start_s = min(watch.stage_started_at_s + warmup_s, now_s)
    try:
        stable = metrics.version_stats(watch.stable, start_s=start_s, end_s=now_s)
        canary = metrics.version_stats(watch.candidate, start_s=start_s, end_s=now_s)
        by_segment: dict[str, Snapshot] = {}
        if segments is not None:
            if not isinstance(metrics, SegmentedMetricsSource):
                raise ConfigError(f"analysis.segments: the metrics backend {type(metrics).__name__} cannot split "
                                  "its metrics by segment")
            stable_by = metrics.segment_stats(watch.stable, by=segments.by, values=segments.values,
                                              start_s=start_s, end_s=now_s)
            canary_by = metrics.segment_stats(watch.candidate, by=segments.by, values=segments.values,
                                              start_s=start_s, end_s=now_s)
            by_segment = {value: Snapshot(stable=stable_by[value], canary=canary_by[value], start_s=start_s,
                                          end_s=now_s) for value in segments.values}
        window = Snapshot(stable=stable, canary=canary, start_s=start_s, end_s=now_s, segments=by_segment)
        if label_delay_s is not None:
            window = _with_labels(metrics, watch, window, segments, label_end_s=now_s - label_delay_s,
                                  outcomes=outcomes)
    except NoDataError as err:
        return None, str(err)
    return window, None


def _with_labels(metrics: MetricsSource, watch: StageWatch, window: Snapshot, segments: SegmentsSpec | None, *,
                 label_end_s: float, outcomes: Sequence[str] = ()) -> Snapshot:
    """Return ``window`` with each version's labelled and wrongly predicted requests, and its aged requests and
    business outcomes (overall and per segment)."""
    if not isinstance(metrics, LabelledMetricsSource):
        raise ConfigError(f"prediction_quality: the metrics backend {type(metrics).__name__} does not join late "
                          "feedback to requests")
    values = segments.values if segments else ()
    counts, outcome_counts = {}, {}
    for role, version in (("stable", watch.stable), ("canary", watch.candidate)):
        if label_end_s <= window.start_s:  # no request of the window is old enough yet
            counts[role] = {None: (0, 0), **{v: (0, 0) for v in values}}
            outcome_counts[role] = {k: (0, dict.fromkeys(outcomes, 0)) for k in (None, *values)}
            continue
        by = segments.by if segments else None
        counts[role] = metrics.label_stats(version, start_s=window.start_s, end_s=label_end_s, by=by, values=values)
        outcome_counts[role] = metrics.outcome_stats(version, names=outcomes, start_s=window.start_s,
                                                     end_s=label_end_s, by=by, values=values) if outcomes else {}

    def with_feedback(stats: VersionStats, role: str, key: str | None) -> VersionStats:
        labelled, wrong = counts[role].get(key, (0, 0))
        aged, events = outcome_counts[role].get(key, (0, {}))
        return replace(stats, labelled=labelled, wrong=wrong, aged=aged,
                       outcomes=tuple(sorted((name, events.get(name, 0)) for name in outcomes)))

    def labelled(snap: Snapshot, key: str | None) -> Snapshot:
        return replace(snap, stable=with_feedback(snap.stable, "stable", key),
                       canary=with_feedback(snap.canary, "canary", key))

    out = labelled(window, None)
    return replace(out, segments={v: labelled(seg, v) for v, seg in window.segments.items()})


def look_of_poll(*, dag_id: str, run_id: str, spec: RolloutSpec, stage: StageSpec, stage_index: int,
                 look_at_s: float, result: GateResult) -> Look:
    """Return the look of one poll of a stage for the history, with its estimated time to a decision."""
    from canary.stats.eta import eta_s  # numpy: at run time, never at DAG parse time

    eta = eta_s(spec, stage, result.evidence, decision=result.decision.value)
    return make_look(dag_id=dag_id, run_id=run_id, stage_index=stage_index, look_at_s=look_at_s,
                     weight_pct=stage.weight, result=result, eta_s=eta)


def poll_stage(spec: RolloutSpec, stage: StageSpec, watch: StageWatch, metrics: MetricsSource, *,
               analyzer: Analyzer | None = None, now_s: float | None = None) -> tuple[GateResult, dict[str, Any]]:
    """Read the window and evaluate the gate once; return the result and the state to carry."""
    now_s = time.time() if now_s is None else now_s
    targeting = spec.targeting_for(watch.stage_index)  # a targeted stage compares the targeted requests only
    metrics = within_population(metrics, targeting.match if targeting else None)
    window, no_data = read_window(metrics, watch, warmup_s=spec.analysis.warmup_s, now_s=now_s,
                                  segments=spec.analysis.segments, label_delay_s=label_delay_s(spec),
                                  outcomes=outcome_names(spec))
    clock = StageClock(index=watch.stage_index, elapsed_s=max(0.0, now_s - watch.stage_started_at_s))
    return evaluate_stage(spec, stage, clock, window, analyzer=analyzer or default_analyzer(),
                          carry_state=watch.carry_state, no_data_reason=no_data)
