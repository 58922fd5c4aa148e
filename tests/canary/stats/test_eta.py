"""Time to a decision, estimated from one look (canary.stats.eta)."""

from __future__ import annotations

import pytest

from canary.policy.decisions import Decision
from canary.policy.gate import StageClock, evaluate_stage
from canary.stats.analyzer import SequentialAnalyzer
from canary.stats.eta import GRID_POINTS, eta_s
from tests.canary.stats.helpers import make_spec, snap, vstats

STAGES = [{"weight": 50, "max_duration": "2h", "min_duration": "0s", "min_requests": 0},
          {"weight": 100, "max_duration": "1h", "min_duration": "10m", "min_requests": 500}]


def look(spec, stage_index: int, elapsed_s: float, *, canary: tuple[int, int], stable: tuple[int, int]):
    stage = spec.stages[stage_index]
    window = snap(vstats("s", *stable), vstats("c", *canary))
    result, _ = evaluate_stage(spec, stage, StageClock(index=stage_index, elapsed_s=elapsed_s), window,
                               analyzer=SequentialAnalyzer())
    return stage, result


def test_a_terminal_decision_is_due_now():
    spec = make_spec(stages=STAGES)
    assert eta_s(spec, spec.stages[0], {"elapsed_s": 30.0, "canary_requests": 10}, decision="rollback") == 0.0


@pytest.mark.parametrize("evidence", [
    {"stage": 0, "weight_pct": 50, "elapsed_s": 20.0},  # warming up: no counts at all
    {"stage": 0, "weight_pct": 50, "elapsed_s": 300.0, "canary_requests": 0, "stable_requests": 40},  # empty
])
def test_without_canary_requests_there_is_no_rate_to_extrapolate(evidence):
    spec = make_spec(stages=STAGES)
    assert eta_s(spec, spec.stages[0], evidence, decision="continue") is None


def test_a_healthy_canary_is_estimated_to_decide_when_the_expected_path_advances():
    """On the expected path (same rates, more requests) the gate advances at the estimate, not long before."""
    spec = make_spec(stages=STAGES)
    warmup_s = spec.analysis.warmup_s
    elapsed_s, n = warmup_s + 600.0, 2000  # 2000 requests per version in 10 minutes, 2% errors on both
    stage, first = look(spec, 0, elapsed_s, canary=(n, 40), stable=(n, 40))
    assert first.decision is Decision.CONTINUE
    eta = eta_s(spec, stage, first.evidence, decision=first.decision.value)
    assert eta is not None and 0 < eta < stage.max_duration_s - elapsed_s

    def decision_after(extra_s: float) -> Decision:
        f = (elapsed_s - warmup_s + extra_s) / (elapsed_s - warmup_s)
        _, later = look(spec, 0, elapsed_s + extra_s, canary=(round(n * f), round(40 * f)),
                        stable=(round(n * f), round(40 * f)))
        return later.decision

    step_s = (stage.max_duration_s - elapsed_s) / GRID_POINTS
    assert decision_after(eta + 2 * step_s) is Decision.ADVANCE
    assert decision_after(max(0.0, eta - 3 * step_s)) is Decision.CONTINUE


def test_more_evidence_at_the_same_rates_brings_the_decision_closer():
    spec = make_spec(stages=STAGES)
    w = spec.analysis.warmup_s
    stage, early = look(spec, 0, w + 300.0, canary=(1000, 20), stable=(1000, 20))
    _, later = look(spec, 0, w + 600.0, canary=(2000, 40), stable=(2000, 40))
    early_eta = eta_s(spec, stage, early.evidence, decision="continue")
    later_eta = eta_s(spec, stage, later.evidence, decision="continue")
    assert later_eta < early_eta


def test_a_regressing_canary_is_estimated_to_roll_back_sooner_than_a_healthy_one_advances():
    spec = make_spec(stages=STAGES)
    w = spec.analysis.warmup_s
    stage, healthy = look(spec, 0, w + 300.0, canary=(1000, 20), stable=(1000, 20))
    _, bad = look(spec, 0, w + 300.0, canary=(1000, 30), stable=(1000, 20))
    assert bad.decision is Decision.CONTINUE
    assert eta_s(spec, stage, bad.evidence, decision="continue") < eta_s(spec, stage, healthy.evidence,
                                                                         decision="continue")


def test_an_estimate_never_runs_past_the_stage_deadline():
    spec = make_spec(stages=STAGES)
    w = spec.analysis.warmup_s
    stage, slow = look(spec, 0, w + 60.0, canary=(5, 0), stable=(5, 0))  # no errors: nothing to extrapolate
    assert eta_s(spec, stage, slow.evidence, decision="continue") == pytest.approx(stage.max_duration_s - w - 60.0)


def test_at_100_percent_the_stage_waits_for_its_bake_time_and_minimum_requests():
    spec = make_spec(stages=STAGES)
    w = spec.analysis.warmup_s
    stage = spec.stages[1]  # 100%: min 10 minutes and 500 canary requests
    by_time = {"elapsed_s": w + 120.0, "canary_requests": 1200}  # 10 requests/s: the bake time is what is left
    assert eta_s(spec, stage, by_time, decision="continue") == pytest.approx(600.0 - w - 120.0, abs=0.01)
    by_requests = {"elapsed_s": 700.0, "canary_requests": 100}  # past the bake time, 400 requests to go
    rps = 100 / (700.0 - w)
    assert eta_s(spec, stage, by_requests, decision="continue") == pytest.approx(400 / rps, abs=0.01)
