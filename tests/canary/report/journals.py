"""Recorded journals for the report tests, made by running the real gate over synthetic traffic.

:func:`simulate` polls :func:`canary.policy.gate.evaluate_stage` with :class:`canary.stats.SequentialAnalyzer`
stage after stage, as the observe trigger does, over deterministic cumulative counts (expected values of
the :class:`Traffic` rates), turns every ``GateResult`` into a :class:`canary.history.Look` and acts on the
terminal ones with :func:`canary.policy.gate.next_action`. The scenarios below are the journals of a
promotion, a rollback by a metric, a guardrail breach, halts (sample-ratio mismatch, no data), a timeout
and a shadow failure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from fast_spec import fast_spec

from canary.history.model import Look, RolloutEvent, RolloutRecord, StartedBy
from canary.policy.decisions import Action, Decision
from canary.policy.evidence import DEFAULT_LATENCY_BUCKETS_MS, Snapshot, VersionStats
from canary.policy.gate import StageClock, evaluate_stage, next_action
from canary.spec.model import parse_spec
from canary.stats import SequentialAnalyzer
from canary.stats.paired import PairedCounts, assess_disagreement, assess_discordant, assess_mean_shift

ROOT = Path(__file__).resolve().parents[3]
#: 2026-12-02 10:00:00Z: every journal starts here.
START_S = 1_796_205_600.0
CANDIDATE, STABLE = "v2", "v1"


def rollout_spec(name: str) -> dict[str, Any]:
    """Return a spec of ``include/rollouts`` as plain data (the form a record freezes)."""
    return yaml.safe_load((ROOT / "include" / "rollouts" / f"{name}.yaml").read_text())


@dataclass(frozen=True, kw_only=True)
class Traffic:
    """What the versions do: request rate, error rates, the slow share (250 ms instead of 40 ms), predictions.

    ``canary_share_shift_pct`` moves the observed split away from the configured weight (a sample-ratio
    mismatch); ``no_data`` makes the backend return nothing.
    """

    requests_per_s: float = 40.0
    canary_error_rate: float = 0.01
    stable_error_rate: float = 0.01
    canary_slow_share: float = 0.02
    stable_slow_share: float = 0.02
    canary_score_shift: float = 0.0
    canary_kpi_rate: float = 0.1
    stable_kpi_rate: float = 0.1
    canary_share_shift_pct: float = 0.0
    no_data: str | None = None
    #: Per segment ``(value, share of the requests, canary error rate)``; empty: no segments.
    segments: tuple[tuple[str, float, float], ...] = ()


_STABLE_SCORES = (0.30, 0.20, 0.15, 0.10, 0.08, 0.06, 0.04, 0.03, 0.02, 0.02)


def _version(name: str, requests: float, error_rate: float, slow_share: float, score_shift: float,
             kpi_rate: float) -> VersionStats:
    n = int(round(requests))
    errors = int(round(n * error_rate))
    slow = int(round(n * slow_share))
    cumulative = tuple(0 if b < 50 else (n - slow if b < 300 else n) for b in DEFAULT_LATENCY_BUCKETS_MS)
    shares = list(_STABLE_SCORES)
    if score_shift:  # move probability mass to the upper bins
        moved = [s * (1 - score_shift) for s in shares]
        moved[-1] += 1 - sum(moved)
        shares = moved
    answered = n - errors
    bins = [int(round(answered * s)) for s in shares]
    bins[0] += answered - sum(bins)
    fast_ms, slow_ms = 40.0, 250.0
    return VersionStats(version=name, requests=n, errors=errors, latency_cumulative=cumulative,
                        latency_sum_ms=(n - slow) * fast_ms + slow * slow_ms,
                        log_latency_sum=(n - slow) * math.log(fast_ms) + slow * math.log(slow_ms),
                        log_latency_sumsq=(n - slow) * math.log(fast_ms) ** 2 + slow * math.log(slow_ms) ** 2,
                        prediction_bins=tuple(bins), kpi_events=int(round(n * kpi_rate)))


def _sum(name: str, parts: list[VersionStats]) -> VersionStats:
    def total(field: str) -> Any:
        return sum(getattr(p, field) for p in parts)

    return VersionStats(version=name, requests=total("requests"), errors=total("errors"),
                        latency_cumulative=tuple(map(sum, zip(*(p.latency_cumulative for p in parts), strict=True))),
                        latency_sum_ms=total("latency_sum_ms"), log_latency_sum=total("log_latency_sum"),
                        log_latency_sumsq=total("log_latency_sumsq"),
                        prediction_bins=tuple(map(sum, zip(*(p.prediction_bins for p in parts), strict=True))),
                        kpi_events=total("kpi_events"))


def window(traffic: Traffic, weight_pct: int, start_s: float, seconds: float) -> Snapshot:
    """Return the cumulative stats of ``seconds`` of traffic at ``weight_pct`` (per segment too, if any)."""
    if traffic.segments:
        from dataclasses import replace

        parts = {value: window(replace(traffic, segments=(), requests_per_s=traffic.requests_per_s * share,
                                       canary_error_rate=rate), weight_pct, start_s, seconds)
                 for value, share, rate in traffic.segments}
        return Snapshot(stable=_sum(STABLE, [w.stable for w in parts.values()]),
                        canary=_sum(CANDIDATE, [w.canary for w in parts.values()]), start_s=start_s,
                        end_s=start_s + seconds, segments=parts)
    total = traffic.requests_per_s * seconds
    share = min(max(weight_pct + traffic.canary_share_shift_pct, 0.0), 100.0) / 100.0
    canary = _version(CANDIDATE, total * share, traffic.canary_error_rate, traffic.canary_slow_share,
                      traffic.canary_score_shift, traffic.canary_kpi_rate)
    stable = _version(STABLE, total * (1 - share), traffic.stable_error_rate, traffic.stable_slow_share, 0.0,
                      traffic.stable_kpi_rate)
    return Snapshot(stable=stable, canary=canary, start_s=start_s, end_s=start_s + seconds)


@dataclass(frozen=True, kw_only=True)
class Journal:
    """What the history holds about one run, and the report's extra parts (the shadow verdict)."""

    record: RolloutRecord
    looks: list[Look]
    events: list[RolloutEvent]
    report: dict[str, Any] = field(default_factory=dict)


def _eta_s(stage_min_duration_s: float, elapsed_s: float, poll_s: float) -> float:
    return max(stage_min_duration_s - elapsed_s, 0.0) + poll_s


def simulate(spec_data: Mapping[str, Any], traffic: Traffic | Callable[[int], Traffic], *,
             dag_id: str | None = None, run_id: str = "manual__2026-12-02T10:00:00+00:00",
             shadow: Mapping[str, Any] | None = None, approver: str = "alice",
             finish: bool = True, max_looks: int | None = None) -> Journal:
    """Run the gate over every stage until the rollout ends (or ``max_looks`` looks: a running rollout).

    :param traffic: one behaviour for every stage, or a function of the stage index.
    """
    spec = parse_spec(dict(spec_data))
    dag = dag_id or f"canary_rollout__{spec.model}"
    poll, warmup = spec.analysis.poll_interval_s, spec.analysis.warmup_s
    analyzer = SequentialAnalyzer()
    carry: dict[str, Any] = {}
    looks: list[Look] = []
    t = START_S
    events = [RolloutEvent(dag_id=dag, run_id=run_id, at_s=t, kind="shadow", key="shadow", data=dict(shadow))] \
        if shadow else []
    if shadow:
        t += 60.0
    outcome, reason = "promoted", ""
    reached = 0
    if shadow and not shadow.get("passed", True):
        outcome, reason = "rolled_back", "shadow test failed: " + "; ".join(shadow.get("reasons") or [])
    else:
        for index, stage in enumerate(spec.stages):
            behaviour = traffic(index) if callable(traffic) else traffic
            reached = index + 1
            events.append(RolloutEvent(dag_id=dag, run_id=run_id, at_s=t, kind="traffic", key=f"stage_{index}",
                                       data={"stage": index, "weights": {CANDIDATE: stage.weight,
                                                                         STABLE: 100 - stage.weight}}))
            stage_start, elapsed = t, 0.0
            while True:
                elapsed += poll
                seen = elapsed - warmup
                snap = None if behaviour.no_data or seen <= 0 else window(behaviour, stage.weight,
                                                                          stage_start + warmup, seen)
                result, state = evaluate_stage(spec, stage, StageClock(index=index, elapsed_s=elapsed), snap,
                                               analyzer=analyzer, carry_state=carry,
                                               no_data_reason=behaviour.no_data)
                looks.append(Look(dag_id=dag, run_id=run_id, stage_index=index, look_at_s=stage_start + elapsed,
                                  weight_pct=stage.weight, decision=result.decision.value, reason=result.reason,
                                  metric=result.metric, elapsed_s=elapsed,
                                  eta_s=None if result.decision.is_terminal()
                                  else _eta_s(stage.min_duration_s, elapsed, poll),
                                  evidence=result.evidence))
                if max_looks is not None and len(looks) >= max_looks:
                    record = _record(spec_data, dag, run_id, spec, reached, outcome=None, reason=None,
                                     finished_at_s=None)
                    return Journal(record=record, looks=looks, events=events,
                                   report={"shadow": dict(shadow)} if shadow else {})
                if result.decision.is_terminal():
                    break
            t = stage_start + elapsed
            action, why = next_action(spec, index, result)
            events.append(RolloutEvent(dag_id=dag, run_id=run_id, at_s=t, kind="gate", key=f"stage_{index}",
                                       data={"stage": index, "decision": result.decision.value,
                                             "action": action.value, "reason": why}))
            if action is Action.HOLD:
                t += 95.0
                events.append(RolloutEvent(dag_id=dag, run_id=run_id, at_s=t, kind="approval", key=f"stage_{index}",
                                           data={"stage": index, "user": approver, "approved": True,
                                                 "comment": "looks fine"}))
            elif action is Action.ROLLBACK:
                outcome, reason = "rolled_back", why
                break
            if result.decision is Decision.TIMEOUT and action is not Action.ROLLBACK:
                continue
            carry = state
        if outcome == "promoted":
            reason = f"every stage passed ({' -> '.join(str(s.weight) for s in spec.stages)}%)"
    record = _record(spec_data, dag, run_id, spec, reached, outcome=outcome if finish else None,
                     reason=reason if finish else None, finished_at_s=t + 5.0 if finish else None)
    return Journal(record=record, looks=looks, events=events, report={"shadow": dict(shadow)} if shadow else {})


def _record(spec_data: Mapping[str, Any], dag: str, run_id: str, spec: Any, reached: int, *, outcome: str | None,
            reason: str | None, finished_at_s: float | None) -> RolloutRecord:
    return RolloutRecord(dag_id=dag, run_id=run_id, model=spec.model, endpoint=spec.endpoint, candidate=CANDIDATE,
                         stable=STABLE, started_by=StartedBy.UI, started_by_detail="alice",
                         reason="retrained on November data", started_at_s=START_S, finished_at_s=finished_at_s,
                         stages_planned=tuple(s.weight for s in spec.stages), stages_reached=reached,
                         outcome=outcome, outcome_reason=reason, spec=dict(spec_data))


# -- the scenarios -------------------------------------------------------------------------------------

#: The shadow verdict's paired tests at its last look (as ``run_shadow`` computes them on these counts).
_PAIRED = dict(fail_alpha=0.01 / 3, pass_alpha=0.01, design_ratio=2.0, min_pairs=150)
SHADOW_TESTS = [
    assess_discordant("errors", PairedCounts(pairs=150, candidate_only=2, stable_only=1), max_increase=0.05,
                      what="failed", **_PAIRED).to_dict(),
    assess_discordant("latency above 46.3 ms", PairedCounts(pairs=150, candidate_only=8, stable_only=7),
                      max_increase=0.1, what="was slow", **_PAIRED).to_dict(),
    assess_disagreement(148, 56, fail_alpha=0.01 / 3, pass_alpha=0.01, max_disagreement=0.2, min_pairs=150).to_dict(),
    assess_mean_shift(148, 2.96, 3.7, fail_alpha=0.01 / 3, pass_alpha=0.01, max_shift=0.05, min_pairs=150,
                      v_opt=5.0).to_dict(),
]
#: A shadow verdict that failed: agreement too low and one Great Expectations result failed.
FAILED_SHADOW: dict[str, Any] = {
    "passed": False,
    "reasons": [SHADOW_TESTS[2]["reason"],
                "expectation expect_column_values_to_be_between(column=score, min_value=0, max_value=1) failed: "
                "12 of 150 values unexpected (8.0%), e.g. 1.2, 1.7"],
    "summary": {"pairs": 150, "stable_errors": 1, "candidate_errors": 2, "prediction_agreement": 0.62,
                "mean_abs_score_diff": 0.21733333333333335, "stable_latency_p95_ms": 41.28,
                "candidate_latency_p95_ms": 44.916666666666664, "candidate_only_errors": 2, "stable_only_errors": 1,
                "answered_pairs": 148, "disagreements": 56, "slow_threshold_ms": 46.3, "candidate_only_slow": 8,
                "stable_only_slow": 7},
    "tests": SHADOW_TESTS,
    "notes": [],
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "score"}, "rows": "answered",
         "success": True, "rows_checked": 148, "observed_value": None, "unexpected_count": 0,
         "unexpected_percent": 0.0, "missing_count": 0, "unexpected_values": [], "exception": None},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "score", "min_value": 0, "max_value": 1},
         "rows": "all", "success": False, "rows_checked": 150, "observed_value": None, "unexpected_count": 12,
         "unexpected_percent": 8.0, "missing_count": 2, "unexpected_values": [1.2, 1.7], "exception": None},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "label", "max_value": 0.2},
         "rows": "answered", "success": True, "rows_checked": 148, "observed_value": 0.08783783783783784,
         "unexpected_count": None, "unexpected_percent": None, "missing_count": None, "unexpected_values": [],
         "exception": None},
    ],
    "outputs_validated": 150,
}
PASSED_SHADOW: dict[str, Any] = {
    **FAILED_SHADOW, "passed": True, "reasons": [],
    "summary": {**FAILED_SHADOW["summary"], "prediction_agreement": 0.9733333333333334},
    "expectations": [{**e, "success": True, "unexpected_count": 0 if e["unexpected_count"] is not None else None,
                      "unexpected_percent": 0.0 if e["unexpected_percent"] is not None else None,
                      "unexpected_values": []} for e in FAILED_SHADOW["expectations"]],
}


def promotion() -> Journal:
    """churn-demo (error rate and a latency tail), healthy, with approval before promotion."""
    spec = rollout_spec("churn-demo")
    spec["policy"] = {**spec["policy"], "approval": "before_promote"}
    return simulate(spec, Traffic(requests_per_s=300.0), shadow=PASSED_SHADOW)


def rollback() -> Journal:
    """fraud-detector (four metrics): healthy at 5%, then the canary's error rate triples at 25%."""
    spec = rollout_spec("fraud-detector")
    return simulate(spec, lambda i: Traffic(requests_per_s=400.0, canary_score_shift=0.02) if i == 0
                    else Traffic(requests_per_s=400.0, canary_error_rate=0.03, canary_score_shift=0.02),
                    shadow=PASSED_SHADOW)


def regression() -> Journal:
    """churn-demo: healthy at 25%, then at 50% the canary fails 4% of its requests (the README's picture)."""
    return simulate(rollout_spec("churn-demo"), lambda i: Traffic(requests_per_s=300.0) if i == 0
                    else Traffic(requests_per_s=300.0, canary_error_rate=0.04), shadow=PASSED_SHADOW)


def guardrail() -> Journal:
    """fast spec: the canary fails 60% of its requests (guardrail 50%, checked from 10 requests)."""
    spec = fast_spec("churn-demo", "churn")
    spec["analysis"]["guardrails"] = {"max_error_rate": 0.5, "min_requests": 10}
    return simulate(spec, Traffic(canary_error_rate=0.6))


def srm_halt() -> Journal:
    """fast spec: 40% of the requests reach the canary where 50% were configured."""
    return simulate(fast_spec("churn-demo", "churn"), Traffic(canary_share_shift_pct=-10.0))


def no_data_halt() -> Journal:
    """fast spec: the metrics backend never returns a series."""
    return simulate(fast_spec("churn-demo", "churn"), Traffic(no_data="prometheus returned no series for v2"))


def timeout() -> Journal:
    """fast spec with a 20 s stage deadline: a slightly worse canary (ratio 1.3) stays undecided."""
    spec = fast_spec("churn-demo", "churn")
    spec["stages"] = [{"weight": 50, "min_duration": "8s", "max_duration": "20s", "min_requests": 150},
                      {"weight": 100, "min_duration": "4s", "max_duration": "30s", "min_requests": 50}]
    return simulate(spec, Traffic(requests_per_s=200.0, canary_error_rate=0.013))


def shadow_failure() -> Journal:
    """churn-demo: the shadow test fails, no user traffic moves."""
    return simulate(rollout_spec("churn-demo"), Traffic(), shadow=FAILED_SHADOW)


def segment_rollback() -> Journal:
    """churn-segments: as good as stable everywhere but on the web (20%), where the canary fails 6%."""
    devices = (("android", 0.45, 0.01), ("ios", 0.35, 0.01), ("web", 0.2, 0.06))
    return simulate(rollout_spec("churn-segments"), Traffic(requests_per_s=200.0, segments=devices))


def running() -> Journal:
    """churn-demo in its second stage (no outcome yet)."""
    full = promotion()
    second = [i for i, look in enumerate(full.looks) if look.stage_index == 1]
    spec = rollout_spec("churn-demo")
    spec["policy"] = {**spec["policy"], "approval": "before_promote"}
    return simulate(spec, Traffic(requests_per_s=300.0), shadow=PASSED_SHADOW, max_looks=second[1] + 1)


SCENARIOS: dict[str, Callable[[], Journal]] = {
    "promotion": promotion, "rollback": rollback, "regression": regression, "guardrail": guardrail, "srm_halt": srm_halt,
    "no_data_halt": no_data_halt, "timeout": timeout, "shadow_failure": shadow_failure, "running": running,
    "segment_rollback": segment_rollback,
}


@cache
def journal(name: str) -> Journal:
    """Return a scenario's journal (simulated once per test session)."""
    return SCENARIOS[name]()


@cache
def page(name: str) -> str:
    """Return a scenario's page: live while it runs (rendered 3 s after its last look), else final."""
    from canary.report.html import render_html

    j = journal(name)
    live = j.record.outcome is None
    return render_html(j.record, j.looks, j.events, report=j.report, live=live,
                       now_s=j.looks[-1].look_at_s + 3.0 if live else j.record.finished_at_s)
