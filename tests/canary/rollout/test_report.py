"""The rollout report carries the shadow test's output validation into its JSON and its Markdown."""

from __future__ import annotations

import json

from canary.backends.base import ShadowSummary
from canary.policy.decisions import Outcome
from canary.rollout.expectations import ExpectationResult
from canary.rollout.plan import RolloutPlan
from canary.rollout.report import build_report, render_markdown, write_report
from canary.rollout.shadow import OutputValidation, judge_shadow
from canary.spec.model import parse_spec

SPEC = parse_spec({"model": "churn", "endpoint": "churn", "stages": [{"weight": 50}, {"weight": 100}]})
PLAN = RolloutPlan(spec=SPEC, candidate="v6", stable="v1", stages=tuple(SPEC.stages), run_id="manual__1",
                   dry_run=False, reason="", started_at_s=1000.0)
SUMMARY = ShadowSummary(pairs=200, stable_errors=1, candidate_errors=1, prediction_agreement=0.98,
                        mean_abs_score_diff=0.2, stable_latency_p95_ms=4.0, candidate_latency_p95_ms=4.2)


def test_failed_expectations_are_in_the_json_and_the_markdown(tmp_path):
    results = [
        ExpectationResult(type="expect_column_values_to_not_be_null", kwargs={"column": "score"}, rows="answered",
                          success=True, rows_checked=198, unexpected_count=0, unexpected_percent=0.0),
        ExpectationResult(type="expect_column_values_to_be_between", kwargs={"column": "score", "min_value": 0.0,
                          "max_value": 1.0}, rows="all", success=False, rows_checked=200, unexpected_count=61,
                          unexpected_percent=30.5, missing_count=2, unexpected_values=[1.31, 1.07]),
    ]
    verdict = judge_shadow(SUMMARY, SPEC.shadow, OutputValidation(rows=200, results=results))
    reason = "shadow test failed: " + "; ".join(verdict.reasons)
    report = build_report(PLAN, outcome=Outcome.ROLLED_BACK, reason=reason, shadow=verdict.to_dict(), stages=[],
                          finished_at_s=1060.0)
    json_path, md_path = write_report(report, tmp_path)
    stored = json.loads(json_path.read_text())
    assert stored["shadow"]["outputs_validated"] == 200
    assert [e["success"] for e in stored["shadow"]["expectations"]] == [True, False]
    assert stored["shadow"]["expectations"][1]["unexpected_values"] == [1.31, 1.07]
    markdown = md_path.read_text()
    assert markdown == render_markdown(stored)
    assert "### Output expectations (200 mirrored answers of the candidate)" in markdown
    assert ("| `expect_column_values_to_be_between(column=score, min_value=0.0, max_value=1.0)` | all | **FAIL** | "
            "61 of 200 values unexpected (30.5%), 2 null not checked, e.g. 1.31, 1.07 |") in markdown
    assert "| `expect_column_values_to_not_be_null(column=score)` | answered | pass |" in markdown
    assert "- expectation expect_column_values_to_be_between(column=score" in markdown  # among the reasons


def test_shadow_results_without_expectations_render_no_table():
    verdict = judge_shadow(SUMMARY, SPEC.shadow.model_copy(update={"expectations": []}))
    report = build_report(PLAN, outcome=Outcome.PROMOTED, reason="ok", shadow=verdict.to_dict(), stages=[])
    markdown = render_markdown(report)
    assert "## Shadow test" in markdown and "Output expectations" not in markdown
    skipped = build_report(PLAN, outcome=Outcome.PROMOTED, reason="ok", stages=[],
                           shadow={"passed": True, "skipped": True, "reasons": [], "summary": {}})
    assert "Output expectations" not in render_markdown(skipped)  # shadow results written before this existed
