"""The stage gate: a pure function of (spec, stage, evidence) -> decision, and the policy that acts on it.

Which rule decides, and in which order, is :mod:`canary.policy.stage_rules` (the same rule book
``canary replay`` applies): warm-up, no data, guardrails, an empty window, the analyzer's verdicts,
bake time and minimum requests, the stage deadline. This module reads the evidence for those rules
from one window, calls the analyzer only when the rules get that far, and words the result.

At 100% (the last stage) no stable traffic runs beside the canary, so only the guardrails and the
bake time apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canary.policy import stage_rules
from canary.policy.analysis import Analyzer, MetricAssessment
from canary.policy.decisions import Action, Decision, GateResult
from canary.policy.evidence import Snapshot
from canary.policy.stage_rules import Rule, StageRules
from canary.spec.durations import format_duration
from canary.spec.model import ApprovalMode, HaltPolicy, RolloutSpec, StageSpec, TimeoutPolicy


@dataclass(frozen=True, kw_only=True)
class StageClock:
    """Where a stage stands in time: ``elapsed_s`` since its traffic was set."""

    index: int
    elapsed_s: float


def no_data_deadline_s(spec: RolloutSpec, stage: StageSpec) -> float:
    """Seconds into a stage after which missing data is a HALT (see :func:`canary.policy.stage_rules.no_data_deadline_s`)."""
    return stage_rules.no_data_deadline_s(StageRules.of(spec, stage))


def evaluate_stage(spec: RolloutSpec, stage: StageSpec, clock: StageClock, window: Snapshot | None, *,
                   analyzer: Analyzer, carry_state: Mapping[str, Any] | None = None,
                   no_data_reason: str | None = None) -> tuple[GateResult, dict[str, Any]]:
    """Decide what a stage's evidence says now.

    :param window: cumulative stats of the stage after its warm-up, or None when the backend had no
        data (``no_data_reason`` says why).
    :param carry_state: the analyzer state carried from the previous stages.
    :return: the gate result and the analyzer state to carry if the stage ended now.
    """
    state = dict(carry_state or {})
    rules = StageRules.of(spec, stage)
    elapsed, warmup = clock.elapsed_s, spec.analysis.warmup_s
    timing = {"stage": clock.index, "weight_pct": stage.weight, "elapsed_s": round(elapsed, 3)}
    rails = spec.analysis.guardrails
    canary = stable = None
    breaches: tuple[bool, bool] = (False, False)
    if window is not None:
        canary, stable = window.canary, window.stable
        p99_ms = canary.latency_quantile_ms(0.99) if rails.max_latency_p99_ms is not None else None
        breaches = stage_rules.guardrail_breaches(rails, canary.requests, canary.errors, p99_ms)
    pre = stage_rules.screen(rules, elapsed, has_data=window is not None,
                             canary_requests=canary.requests if canary is not None else 0,
                             stable_requests=stable.requests if stable is not None else 0, breached=any(breaches))
    if pre.rule is Rule.WARMUP:
        return GateResult(decision=pre.decision,
                          reason=f"warming up ({format_duration(elapsed)} of {format_duration(warmup)})",
                          evidence=timing), state
    if pre.rule is Rule.NO_DATA:
        if pre.decision is Decision.HALT:
            return GateResult(decision=pre.decision, metric="data",
                              reason=f"no metrics data after {format_duration(elapsed)}: {no_data_reason}",
                              evidence=timing), state
        return GateResult(decision=pre.decision, reason=f"waiting for data: {no_data_reason}",
                          evidence=timing), state
    assert canary is not None and stable is not None  # window is not None past the NO_DATA rule
    counts = {"canary_requests": canary.requests, "canary_errors": canary.errors,
              "stable_requests": stable.requests, "stable_errors": stable.errors}
    evidence: dict[str, Any] = {**timing, **counts}
    if pre.rule is Rule.GUARDRAIL:
        metric, reason, detail = _guardrail_breach(spec, window, breaches)
        return GateResult(decision=pre.decision, metric=metric, reason=reason,
                          evidence={**evidence, **detail}), state
    if pre.rule is Rule.EMPTY:
        empty = [name for name, flag in zip(("canary", "stable"),
                                            stage_rules.empty_versions(rules, canary.requests, stable.requests),
                                            strict=True) if flag]
        # Nothing to compare yet: wait, but never past the no-data deadline (missing data is not healthy).
        if pre.decision is Decision.HALT:
            return GateResult(decision=pre.decision, metric="data",
                              reason=f"no {' or '.join(empty)} requests after {format_duration(elapsed)} "
                                     f"at {stage.weight}%", evidence=evidence), state
        return GateResult(decision=pre.decision, reason=f"waiting for {' and '.join(empty)} requests",
                          evidence=evidence), state

    assessments: list[MetricAssessment] = []
    if rules.compares:
        assessments, state = analyzer.assess(spec, window, canary_weight_pct=stage.weight, state=carry_state)
        evidence["metrics"] = [a.to_dict() for a in assessments]
    verdict = stage_rules.analysis_verdict(rollback=any(a.decision is Decision.ROLLBACK for a in assessments),
                                           halt=any(a.decision is Decision.HALT for a in assessments),
                                           all_non_inferior=all(a.decision is Decision.ADVANCE for a in assessments))
    post = stage_rules.conclude(rules, elapsed, canary_requests=canary.requests, verdict=verdict)
    if post.rule is Rule.ANALYSIS:
        first = next(a for a in assessments if a.decision is post.decision)
        return GateResult(decision=post.decision, metric=first.label, reason=f"{first.label}: {first.reason}",
                          evidence=evidence), state
    if post.rule is Rule.PROMOTION:
        why = ("every metric within tolerance" if assessments
               else "bake time passed with no guardrail breached")
        return GateResult(decision=post.decision,
                          reason=f"{why} after {canary.requests} canary requests in {format_duration(elapsed)}",
                          evidence=evidence), state
    enough = stage_rules.enough_requests(rules, canary.requests)
    pending = [a.label for a in assessments if a.decision is not Decision.ADVANCE]
    if post.rule is Rule.TIMEOUT:
        missing = [] if enough else [f"{canary.requests}/{stage.min_requests} canary requests"]
        return GateResult(decision=post.decision,
                          reason=f"undecided at the {format_duration(stage.max_duration_s)} deadline: "
                                 f"{', '.join(pending + missing) or 'minimum duration not reached'}",
                          evidence=evidence), state
    waiting = []
    if not stage_rules.bake_time_reached(rules, elapsed):
        waiting.append(f"{format_duration(elapsed)}/{format_duration(stage.min_duration_s)}")
    if not enough:
        waiting.append(f"{canary.requests}/{stage.min_requests} canary requests")
    return GateResult(decision=post.decision, reason=f"observing: {', '.join(waiting + pending)}",
                      evidence=evidence), state


def _guardrail_breach(spec: RolloutSpec, window: Snapshot,
                      breaches: tuple[bool, bool]) -> tuple[str, str, dict[str, Any]]:
    """Word the first breached guardrail (``breaches`` from :func:`canary.policy.stage_rules.guardrail_breaches`)."""
    rails, canary = spec.analysis.guardrails, window.canary
    rate_breached, _ = breaches
    if rate_breached:
        rate = canary.error_rate or 0.0
        return ("guardrail.max_error_rate",
                f"canary error rate {rate:.2%} above the {rails.max_error_rate:.2%} guardrail "
                f"({canary.errors}/{canary.requests} requests)",
                {"error_rate": rate, "limit": rails.max_error_rate})
    p99 = canary.latency_quantile_ms(0.99)
    return ("guardrail.max_latency_p99_ms",
            f"canary p99 latency {p99:.0f} ms above the {rails.max_latency_p99_ms:g} ms guardrail",
            {"latency_p99_ms": p99, "limit": rails.max_latency_p99_ms})


def next_action(spec: RolloutSpec, stage_index: int, result: GateResult) -> tuple[Action, str]:
    """Map a terminal gate result to what the DAG does next, per the spec's policy."""
    last = stage_index == len(spec.stages) - 1
    policy = spec.policy
    advance = Action.PROMOTE if last else Action.NEXT_STAGE
    needs_approval = policy.approval is ApprovalMode.EVERY_STAGE or (
        last and policy.approval is ApprovalMode.BEFORE_PROMOTE)
    decision = result.decision
    if decision is Decision.ROLLBACK:
        return Action.ROLLBACK, result.reason
    if decision is Decision.HALT:
        if policy.on_halt is HaltPolicy.HOLD_FOR_APPROVAL:
            return Action.HOLD, f"halted, waiting for approval: {result.reason}"
        return Action.ROLLBACK, f"halted: {result.reason}"
    if decision is Decision.TIMEOUT:
        if policy.on_timeout is TimeoutPolicy.HOLD_FOR_APPROVAL:
            return Action.HOLD, f"timed out, waiting for approval: {result.reason}"
        if policy.on_timeout is TimeoutPolicy.PROMOTE_WITH_WARNING:
            return (Action.HOLD if needs_approval else advance), f"timed out, advancing with warning: {result.reason}"
        return Action.ROLLBACK, f"timed out: {result.reason}"
    if decision is Decision.ADVANCE:
        return (Action.HOLD if needs_approval else advance), result.reason
    raise ValueError(f"stage {stage_index}: gate result {decision.value!r} is not terminal")
