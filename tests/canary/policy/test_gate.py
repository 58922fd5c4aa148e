"""Table tests of the stage gate and the policy that acts on it (literal inputs, no I/O)."""

from __future__ import annotations

import pytest
from fakes import cumulative_from_latencies

from canary.policy.analysis import MetricAssessment
from canary.policy.decisions import Action, Decision, GateResult
from canary.policy.evidence import Snapshot, VersionStats
from canary.policy.gate import StageClock, evaluate_stage, next_action
from canary.spec.model import parse_spec

SPEC = parse_spec({
    "model": "m", "endpoint": "e",
    "stages": [{"weight": 10, "min_duration": "60s", "max_duration": "600s", "min_requests": 100},
               {"weight": 100, "min_duration": "30s", "max_duration": "300s", "min_requests": 50}],
    "analysis": {"warmup": "10s", "guardrails": {"max_error_rate": 0.05, "min_requests": 50,
                                                 "max_latency_p99_ms": 500}},
})


class FixedAnalyzer:
    """Fake at the analyzer interface: returns the given verdicts and records the carried state."""

    def __init__(self, *decisions: Decision) -> None:
        self.decisions = decisions
        self.seen_state = "not called"

    def assess(self, spec, window, *, canary_weight_pct, state):
        self.seen_state = state
        out = [MetricAssessment(metric=f"m{i}", kind="error_rate", decision=d, reason=d.value)
               for i, d in enumerate(self.decisions)]
        return out, {"n": window.canary.requests}


def stats(version: str, requests: int, errors: int = 0, latency_ms: float = 20.0) -> VersionStats:
    return VersionStats(version=version, requests=requests, errors=errors,
                        latency_cumulative=cumulative_from_latencies([latency_ms] * requests))


def window(canary: int, canary_errors: int = 0, stable: int = 1000, latency_ms: float = 20.0) -> Snapshot:
    return Snapshot(stable=stats("s", stable, stable // 100), canary=stats("c", canary, canary_errors, latency_ms),
                    start_s=0.0, end_s=1.0)


# (stage, elapsed_s, window, analyzer verdicts, expected decision, expected metric, reason fragment)
CASES = [
    (0, 5, window(500), [Decision.ROLLBACK], Decision.CONTINUE, None, "warming up"),
    (0, 30, None, [], Decision.CONTINUE, None, "waiting for data"),
    (0, 60, None, [], Decision.HALT, "data", "no metrics data"),
    (0, 30, window(200, 20), [Decision.ADVANCE], Decision.ROLLBACK, "guardrail.max_error_rate", "10.00% above"),
    (0, 30, window(40, 20), [Decision.CONTINUE], Decision.CONTINUE, None, "observing"),  # below guardrail minimum
    (0, 30, window(200, latency_ms=900), [Decision.ADVANCE], Decision.ROLLBACK, "guardrail.max_latency_p99_ms",
     "p99 latency"),
    (0, 30, window(200), [Decision.ADVANCE, Decision.ROLLBACK], Decision.ROLLBACK, "m1", "m1: rollback"),
    (0, 30, window(200), [Decision.HALT, Decision.ROLLBACK], Decision.ROLLBACK, "m1", "m1"),  # rollback > halt
    (0, 90, window(200), [Decision.HALT, Decision.ADVANCE], Decision.HALT, "m0", "m0: halt"),
    (0, 30, window(200), [Decision.ADVANCE], Decision.CONTINUE, None, "30s/1m"),  # min duration not reached
    (0, 90, window(80), [Decision.ADVANCE], Decision.CONTINUE, None, "80/100 canary requests"),
    (0, 90, window(0), [Decision.CONTINUE], Decision.HALT, "data", "no canary requests"),
    (0, 30, window(0), [Decision.HALT], Decision.CONTINUE, None, "waiting for canary requests"),
    (0, 30, window(100, stable=0), [Decision.HALT], Decision.CONTINUE, None, "waiting for stable requests"),
    (0, 90, window(100, stable=0), [Decision.ADVANCE], Decision.HALT, "data", "no stable requests"),
    (0, 90, window(0, stable=0), [Decision.ADVANCE], Decision.HALT, "data", "no canary or stable requests"),
    (0, 90, window(200), [Decision.ADVANCE, Decision.ADVANCE], Decision.ADVANCE, None, "every metric"),
    (0, 90, window(200), [Decision.ADVANCE, Decision.CONTINUE], Decision.CONTINUE, None, "m1"),
    (0, 600, window(200), [Decision.ADVANCE, Decision.CONTINUE], Decision.TIMEOUT, None, "undecided"),
    (0, 600, window(50), [Decision.ADVANCE], Decision.TIMEOUT, None, "50/100 canary requests"),
    # At 100% no stable runs beside the canary: guardrails and bake time only, the analyzer is not asked.
    (1, 40, window(60, stable=0), [Decision.ROLLBACK], Decision.ADVANCE, None, "bake time passed"),
    (1, 40, window(60, 10, stable=0), [], Decision.ROLLBACK, "guardrail.max_error_rate", "guardrail"),
    (1, 20, window(60, stable=0), [], Decision.CONTINUE, None, "20s/30s"),
]


@pytest.mark.parametrize(("stage", "elapsed", "win", "verdicts", "decision", "metric", "fragment"), CASES)
def test_evaluate_stage(stage, elapsed, win, verdicts, decision, metric, fragment):
    analyzer = FixedAnalyzer(*verdicts)
    result, _ = evaluate_stage(SPEC, SPEC.stages[stage], StageClock(index=stage, elapsed_s=elapsed), win,
                               analyzer=analyzer, no_data_reason="no series")
    assert (result.decision, result.metric) == (decision, metric), result
    assert fragment in result.reason


LONG_WARMUP = parse_spec({
    "model": "m", "endpoint": "e",
    "stages": [{"weight": 50, "min_duration": "8s", "max_duration": "40s"},
               {"weight": 100, "min_duration": "0s", "max_duration": "14s"}],
    "analysis": {"warmup": "12s", "poll_interval": "2s"},
})


@pytest.mark.parametrize(("stage", "elapsed", "win", "decision", "fragment"), [
    # Warm-up (12s) outlasts the minimum duration (8s): the window opens at 12s, empty by construction.
    (0, 12.0, window(0, stable=0), Decision.CONTINUE, "waiting for canary and stable requests"),
    (0, 13.9, window(0, stable=0), Decision.CONTINUE, "waiting for canary and stable requests"),
    (0, 13.9, None, Decision.CONTINUE, "waiting for data"),
    (0, 14.0, window(0, stable=0), Decision.HALT, "no canary or stable requests after 14s"),
    (0, 14.0, None, Decision.HALT, "no metrics data after 14s"),
    # A minimum duration of 0 still waits one poll interval after the warm-up; the maximum caps it all.
    (1, 13.0, window(0, stable=0), Decision.CONTINUE, "waiting for canary requests"),
    (1, 14.0, window(0, stable=0), Decision.HALT, "no canary requests after 14s"),
])
def test_missing_data_halts_only_once_the_window_after_warmup_had_a_poll_interval(stage, elapsed, win, decision,
                                                                                 fragment):
    result, _ = evaluate_stage(LONG_WARMUP, LONG_WARMUP.stages[stage], StageClock(index=stage, elapsed_s=elapsed),
                               win, analyzer=FixedAnalyzer(Decision.ADVANCE), no_data_reason="no series")
    assert result.decision is decision and fragment in result.reason, result


def test_no_data_deadline_is_the_min_duration_at_least_a_poll_after_warmup_at_most_the_max_duration():
    from canary.policy.gate import no_data_deadline_s

    assert no_data_deadline_s(SPEC, SPEC.stages[0]) == 60.0   # min duration 60s > 10s warm-up + 30s poll
    assert no_data_deadline_s(LONG_WARMUP, LONG_WARMUP.stages[0]) == 14.0
    capped = parse_spec({"model": "m", "endpoint": "e", "stages": [{"weight": 100, "min_duration": "0s",
                                                                    "max_duration": "20s"}],
                         "analysis": {"warmup": "15s", "poll_interval": "10s"}})
    assert no_data_deadline_s(capped, capped.stages[0]) == 20.0


def test_missing_data_never_advances():
    for elapsed in (0, 10, 59, 60, 599, 600, 10_000):
        result, _ = evaluate_stage(SPEC, SPEC.stages[0], StageClock(index=0, elapsed_s=elapsed), None,
                                   analyzer=FixedAnalyzer(Decision.ADVANCE))
        assert result.decision in (Decision.CONTINUE, Decision.HALT)


def test_state_is_carried_to_the_analyzer_and_returned():
    analyzer = FixedAnalyzer(Decision.CONTINUE)
    _, state = evaluate_stage(SPEC, SPEC.stages[0], StageClock(index=0, elapsed_s=30), window(123),
                              analyzer=analyzer, carry_state={"log_e": 1.5})
    assert analyzer.seen_state == {"log_e": 1.5}
    assert state == {"n": 123}


def test_gate_result_round_trip_and_validation():
    result = GateResult(decision=Decision.ROLLBACK, reason="r", metric="m", evidence={"e": 1.0})
    assert GateResult.from_dict(result.to_dict()) == result
    with pytest.raises(ValueError, match="decision"):
        GateResult.from_dict({"decision": "explode", "reason": "r"})
    with pytest.raises(ValueError, match="reason"):
        GateResult.from_dict({"decision": "halt"})


def spec_with(**policy) -> object:
    return parse_spec({"model": "m", "endpoint": "e", "policy": policy,
                       "stages": [{"weight": 10}, {"weight": 50}, {"weight": 100}]})


@pytest.mark.parametrize(
    ("policy", "stage", "decision", "action"),
    [
        ({}, 0, Decision.ADVANCE, Action.NEXT_STAGE),
        ({}, 2, Decision.ADVANCE, Action.PROMOTE),
        ({}, 0, Decision.ROLLBACK, Action.ROLLBACK),
        ({}, 0, Decision.HALT, Action.ROLLBACK),
        ({}, 1, Decision.TIMEOUT, Action.ROLLBACK),
        ({"on_halt": "hold_for_approval"}, 0, Decision.HALT, Action.HOLD),
        ({"on_halt": "hold_for_approval"}, 0, Decision.ROLLBACK, Action.ROLLBACK),
        ({"on_timeout": "hold_for_approval"}, 1, Decision.TIMEOUT, Action.HOLD),
        ({"on_timeout": "promote_with_warning"}, 1, Decision.TIMEOUT, Action.NEXT_STAGE),
        ({"on_timeout": "promote_with_warning"}, 2, Decision.TIMEOUT, Action.PROMOTE),
        ({"approval": "every_stage"}, 0, Decision.ADVANCE, Action.HOLD),
        ({"approval": "before_promote"}, 0, Decision.ADVANCE, Action.NEXT_STAGE),
        ({"approval": "before_promote"}, 2, Decision.ADVANCE, Action.HOLD),
        ({"approval": "every_stage"}, 0, Decision.ROLLBACK, Action.ROLLBACK),
    ],
)
def test_next_action(policy, stage, decision, action):
    got, why = next_action(spec_with(**policy), stage, GateResult(decision=decision, reason="because"))
    assert got is action
    assert "because" in why


def test_next_action_refuses_continue():
    with pytest.raises(ValueError, match="not terminal"):
        next_action(spec_with(), 0, GateResult(decision=Decision.CONTINUE, reason="x"))
