"""A look from a gate result, and its line in the observe log (canary.history.looks)."""

from __future__ import annotations

import pytest

from canary.history.looks import look_line, make_look, stage_title
from canary.policy.decisions import Decision, GateResult

AT_S = 1_764_669_845.0  # 10:04:05 UTC

EVIDENCE = {
    "stage": 1, "weight_pct": 25, "elapsed_s": 190.0, "canary_requests": 97, "canary_errors": 4,
    "stable_requests": 297, "stable_errors": 3,
    "metrics": [
        {"metric": "error_rate", "kind": "error_rate", "decision": "continue", "reason": "not yet conclusive",
         "evidence": {"test": "label", "e_value": 3.14159, "threshold": 200.0, "ratio_estimate": 1.31,
                      "ratio_lower": 0.812, "ratio_upper": None, "tolerance_ratio": 1.25}},
        {"metric": "latency", "kind": "latency", "decision": "advance", "reason": "non-inferior",
         "evidence": {"test": "msprt_mean_log_latency", "e_value": 0.5, "threshold": 200.0, "ratio_estimate": 0.99,
                      "ratio_lower": 0.95, "ratio_upper": 1.04, "tolerance_ratio": 1.1}},
        {"metric": "scores", "kind": "prediction_distribution", "decision": "continue", "reason": "x",
         "evidence": {"test": "tv_confidence_sequence", "tv_estimate": 0.021, "tv_lower": 0.0, "tv_upper": 0.12,
                      "tolerance": 0.1}},
        {"metric": "srm", "kind": "srm", "decision": "advance", "reason": "consistent",
         "evidence": {"test": "srm", "e_value": 0.41, "threshold": 1000.0, "configured_weight_pct": 25,
                      "observed_weight_pct": 24.619}},
    ],
}


def look(decision: Decision = Decision.CONTINUE, evidence=None, eta_s: float | None = 250.0):
    result = GateResult(decision=decision, reason="observing: error_rate", metric=None,
                        evidence=EVIDENCE if evidence is None else evidence)
    return make_look(dag_id="d", run_id="r", stage_index=1, look_at_s=AT_S, weight_pct=25, result=result,
                     eta_s=eta_s)


def test_a_look_carries_the_gate_result_and_its_observed_share():
    lk = look()
    assert (lk.decision, lk.reason, lk.elapsed_s, lk.eta_s, lk.weight_pct) == (
        "continue", "observing: error_rate", 190.0, 250.0, 25)
    assert lk.observed_weight_pct == pytest.approx(100 * 97 / 394)
    assert lk.key == ("d", "r", 1, AT_S)


def test_the_log_line_reads_every_number_once():
    assert look_line(look()) == (
        "10:04:05 stage 2 (25%) at 3m10s: canary 97 req 4 err (24.6% observed), stable 297 req 3 err"
        " | error_rate CONTINUE e 3.14/200 ratio 1.31 CS [0.812, inf] tol 1.25"
        " | latency ADVANCE e 0.5/200 ratio 0.99 CS [0.95, 1.04] tol 1.1"
        " | scores CONTINUE TV 0.021 CS [0, 0.12] tol 0.1"
        " | srm ADVANCE e 0.41/1e+03 observed 24.6% vs 25%"
        " | ETA 4m10s | CONTINUE: observing: error_rate")


@pytest.mark.parametrize(("decision", "evidence", "eta_s", "expected"), [
    (Decision.CONTINUE, {"stage": 1, "weight_pct": 25, "elapsed_s": 2.0}, None,
     "10:04:05 stage 2 (25%) at 2s | ETA unknown | CONTINUE: observing: error_rate"),
    (Decision.ROLLBACK, {"stage": 1, "weight_pct": 25, "elapsed_s": 60.0, "canary_requests": 0,
                         "stable_requests": 0}, 0.0,
     "10:04:05 stage 2 (25%) at 1m: canary 0 req 0 err, stable 0 req 0 err | ROLLBACK: observing: error_rate"),
])
def test_the_log_line_without_numbers_to_show(decision, evidence, eta_s, expected):
    assert look_line(look(decision, evidence, eta_s)) == expected


def test_a_stage_group_is_titled_by_its_stage_and_weight():
    assert stage_title(0, 5) == "stage 1 at 5% canary: looks"
