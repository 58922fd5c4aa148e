"""The stage gate: a pure function of (spec, stage, evidence) -> decision, and the policy that acts on it.

Order of checks (first match wins), so that missing data can never look healthy:

1. still warming up after the traffic change -> CONTINUE;
2. no data from the metrics backend, or no canary (or stable) requests in the window -> CONTINUE
   until the stage's minimum duration, and at least one poll interval after the warm-up (a window
   that has only just opened is empty by construction, not evidence), then HALT;
3. an absolute guardrail breached (after ``guardrails.min_requests`` canary requests) -> ROLLBACK;
4. the analyzer's verdicts: any ROLLBACK -> ROLLBACK; any HALT -> HALT;
5. minimum duration and minimum canary requests reached and every metric non-inferior -> ADVANCE;
6. the stage's maximum duration reached -> TIMEOUT;
7. otherwise CONTINUE.

At 100% (the last stage) no stable traffic runs beside the canary, so only the guardrails and the
bake time apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canary.policy.analysis import Analyzer, MetricAssessment
from canary.policy.decisions import Action, Decision, GateResult
from canary.policy.evidence import Snapshot
from canary.spec.durations import format_duration
from canary.spec.model import ApprovalMode, HaltPolicy, RolloutSpec, StageSpec, TimeoutPolicy


@dataclass(frozen=True, kw_only=True)
class StageClock:
    """Where a stage stands in time: ``elapsed_s`` since its traffic was set."""

    index: int
    elapsed_s: float


def no_data_deadline_s(spec: RolloutSpec, stage: StageSpec) -> float:
    """Seconds into a stage after which missing data is a HALT rather than a reason to wait.

    The stage's minimum duration, but never before the window after the warm-up has been open for a
    full poll interval, and never after the stage's maximum duration.
    """
    return min(max(stage.min_duration_s, spec.analysis.warmup_s + spec.analysis.poll_interval_s),
               stage.max_duration_s)


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
    elapsed, warmup = clock.elapsed_s, spec.analysis.warmup_s
    timing = {"stage": clock.index, "weight_pct": stage.weight, "elapsed_s": round(elapsed, 3)}
    min_reached = elapsed >= stage.min_duration_s
    no_data_due = elapsed >= no_data_deadline_s(spec, stage)
    if elapsed < warmup:
        return GateResult(decision=Decision.CONTINUE,
                          reason=f"warming up ({format_duration(elapsed)} of {format_duration(warmup)})",
                          evidence=timing), state
    if window is None:
        if no_data_due:
            return GateResult(decision=Decision.HALT, metric="data",
                              reason=f"no metrics data after {format_duration(elapsed)}: {no_data_reason}",
                              evidence=timing), state
        return GateResult(decision=Decision.CONTINUE, reason=f"waiting for data: {no_data_reason}",
                          evidence=timing), state

    canary, stable = window.canary, window.stable
    counts = {"canary_requests": canary.requests, "canary_errors": canary.errors,
              "stable_requests": stable.requests, "stable_errors": stable.errors}
    evidence: dict[str, Any] = {**timing, **counts}

    breach = _guardrail_breach(spec, window)
    if breach is not None:
        metric, reason, detail = breach
        return GateResult(decision=Decision.ROLLBACK, metric=metric, reason=reason,
                          evidence={**evidence, **detail}), state

    compares = stage.weight < 100
    empty = [name for name, stats in (("canary", canary), ("stable", stable))
             if stats.requests == 0 and (compares or name == "canary")]
    if empty:
        # Nothing to compare yet: wait, but never past the no-data deadline (missing data is not healthy).
        if no_data_due:
            return GateResult(decision=Decision.HALT, metric="data",
                              reason=f"no {' or '.join(empty)} requests after {format_duration(elapsed)} "
                                     f"at {stage.weight}%", evidence=evidence), state
        return GateResult(decision=Decision.CONTINUE, reason=f"waiting for {' and '.join(empty)} requests",
                          evidence=evidence), state

    assessments: list[MetricAssessment] = []
    if compares:
        assessments, state = analyzer.assess(spec, window, canary_weight_pct=stage.weight, state=carry_state)
        evidence["metrics"] = [a.to_dict() for a in assessments]
        for wanted in (Decision.ROLLBACK, Decision.HALT):
            fired = [a for a in assessments if a.decision is wanted]
            if fired:
                first = fired[0]
                return GateResult(decision=wanted, metric=first.metric, reason=f"{first.metric}: {first.reason}",
                                  evidence=evidence), state

    enough_requests = canary.requests >= stage.min_requests
    all_non_inferior = all(a.decision is Decision.ADVANCE for a in assessments)
    if min_reached and enough_requests and all_non_inferior:
        why = ("every metric within tolerance" if assessments
               else "bake time passed with no guardrail breached")
        return GateResult(decision=Decision.ADVANCE,
                          reason=f"{why} after {canary.requests} canary requests in {format_duration(elapsed)}",
                          evidence=evidence), state
    if elapsed >= stage.max_duration_s:
        pending = [a.metric for a in assessments if a.decision is not Decision.ADVANCE]
        missing = [] if enough_requests else [f"{canary.requests}/{stage.min_requests} canary requests"]
        return GateResult(decision=Decision.TIMEOUT,
                          reason=f"undecided at the {format_duration(stage.max_duration_s)} deadline: "
                                 f"{', '.join(pending + missing) or 'minimum duration not reached'}",
                          evidence=evidence), state
    waiting = []
    if not min_reached:
        waiting.append(f"{format_duration(elapsed)}/{format_duration(stage.min_duration_s)}")
    if not enough_requests:
        waiting.append(f"{canary.requests}/{stage.min_requests} canary requests")
    waiting += [a.metric for a in assessments if a.decision is not Decision.ADVANCE]
    return GateResult(decision=Decision.CONTINUE, reason=f"observing: {', '.join(waiting)}",
                      evidence=evidence), state


def _guardrail_breach(spec: RolloutSpec, window: Snapshot) -> tuple[str, str, dict[str, Any]] | None:
    rails, canary = spec.analysis.guardrails, window.canary
    if canary.requests < rails.min_requests:
        return None
    rate = canary.error_rate or 0.0
    if rails.max_error_rate is not None and rate > rails.max_error_rate:
        return ("guardrail.max_error_rate",
                f"canary error rate {rate:.2%} above the {rails.max_error_rate:.2%} guardrail "
                f"({canary.errors}/{canary.requests} requests)",
                {"error_rate": rate, "limit": rails.max_error_rate})
    if rails.max_latency_p99_ms is not None:
        p99 = canary.latency_quantile_ms(0.99)
        if p99 is not None and p99 > rails.max_latency_p99_ms:
            return ("guardrail.max_latency_p99_ms",
                    f"canary p99 latency {p99:.0f} ms above the {rails.max_latency_p99_ms:g} ms guardrail",
                    {"latency_p99_ms": p99, "limit": rails.max_latency_p99_ms})
    return None


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
