"""The gate's evidence in Markdown, as the person approving a held stage reads it (table-tested)."""

from __future__ import annotations

import math

import pytest

from canary.policy.evidence_md import gate_evidence_markdown

LABEL = {"metric": "error_rate", "kind": "error_rate", "decision": "continue",
         "reason": "not yet shown within tolerance",
         "evidence": {"e_value": 3.21456, "threshold": 1000.0, "ratio_estimate": 1.04321, "ratio_lower": 0.8112,
                      "ratio_upper": 1.3349, "tolerance_ratio": 1.5, "canary_events": 12, "stable_events": 35}}
SRM = {"metric": "srm", "kind": "srm", "decision": "continue", "reason": "split as configured",
       "evidence": {"e_value": 0.8, "threshold": 1000.0, "configured_weight_pct": 25, "observed_weight_pct": 24.87}}
TV = {"metric": "prediction", "kind": "prediction_distribution", "decision": "advance", "reason": "same | shape",
      "evidence": {"tv_estimate": 0.031, "tv_lower": 0.0, "tv_upper": 0.0712, "tolerance": 0.1}}
GUARD = {"metric": "latency_p99", "kind": "guardrail", "decision": "rollback", "reason": "p99 above limit",
         "evidence": {"latency_p99_ms": 912.4, "limit": 500}}
HUGE = {"metric": "error_rate", "kind": "error_rate", "decision": "rollback", "reason": "regression",
        "evidence": {"e_value": math.inf, "threshold": 1000.0, "ratio_estimate": 4.2, "ratio_lower": 2.9,
                     "ratio_upper": 6.1, "tolerance_ratio": 1.5}}


def result(*metrics, decision="continue", reason="waiting for evidence", **extra):
    evidence = {"stage": 2, "weight_pct": 25, "elapsed_s": 151.2, "canary_requests": 1204, "canary_errors": 12,
                "stable_requests": 3611, "stable_errors": 35, **extra}
    if metrics:
        evidence["metrics"] = list(metrics)
    return {"decision": decision, "reason": reason, "metric": None, "evidence": evidence}


@pytest.mark.parametrize(("gate", "kwargs", "expected"), [
    (result(LABEL), {"action": "hold", "action_reason": "approval mode every_stage asks a person"},
     ["**Gate stage 2 at 25% canary after 2m31s: continue → hold**",
      "Why: approval mode every_stage asks a person",
      "Gate decision: waiting for evidence",
      "| canary | 1,204 | 12 |", "| stable | 3,611 | 35 |",
      "| error_rate | continue | 3.21 / 1,000 | ratio 1.04 [0.81, 1.33] | ≤ 1.50 | not yet shown within tolerance |"]),
    (result(SRM), {}, ["**Gate stage 2 at 25% canary after 2m31s: continue**", "Why: waiting for evidence",
                       "| srm | continue | 0.8 / 1,000 | 24.9% observed vs 25% set | - | split as configured |"]),
    (result(TV), {}, ["| prediction | advance | - | TV 0.03 [0.00, 0.07] | ≤ 0.10 | same \\| shape |"]),
    (result(GUARD, decision="rollback", reason="p99 above limit"), {"action": "rollback"},
     ["**Gate stage 2 at 25% canary after 2m31s: rollback → rollback**",
      "| latency_p99 | rollback | - | 912 ms | limit 500 ms | p99 above limit |"]),
    (result(HUGE, decision="rollback"), {}, ["| error_rate | rollback | ∞ / 1,000 | ratio 4.20 [2.90, 6.10] | ≤ 1.50 |"]),
    ({"decision": "continue", "reason": "waiting for data: no canary requests", "evidence": {}}, {},
     ["**Gate result: continue**", "Why: waiting for data: no canary requests", "No evidence recorded"]),
])
def test_the_markdown_shows_the_numbers_the_gate_saw(gate, kwargs, expected):
    md = gate_evidence_markdown(gate, **kwargs)
    for line in expected:
        assert line in md, f"{line!r} not in:\n{md}"


@pytest.mark.parametrize(("e_value", "shown"), [(2.5e9, "2.5e9"), (123456.0, "123,456"), (0.00012, "0.00012"),
                                                 (float("nan"), "- / 1,000")])
def test_e_values_read_at_any_size(e_value, shown):
    metric = {**LABEL, "evidence": {**LABEL["evidence"], "e_value": e_value}}
    assert shown in gate_evidence_markdown(result(metric))


def test_every_table_row_has_as_many_cells_as_its_header():
    md = gate_evidence_markdown(result(LABEL, SRM, TV, GUARD, HUGE))
    rows = [line for line in md.splitlines() if line.startswith("| metric") or line.startswith("| error_rate")
            or line.startswith("| srm") or line.startswith("| prediction") or line.startswith("| latency")]
    cells = {len(line.replace("\\|", "").split("|")) for line in rows}
    assert len(rows) == 6 and cells == {8}, md
