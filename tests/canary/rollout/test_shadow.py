"""The shadow verdict: thresholds and the candidate's output expectations (table tests without GX), and
run_shadow against fakes at the router and metrics interfaces (with GX)."""

from __future__ import annotations

from typing import Any

import pytest

from canary.backends.base import ShadowSummary
from canary.rollout.expectations import ExpectationResult
from canary.rollout.shadow import OutputValidation, judge_shadow, run_shadow
from canary.spec.model import ShadowSpec

HEALTHY = ShadowSummary(pairs=200, stable_errors=2, candidate_errors=2, prediction_agreement=0.97,
                        mean_abs_score_diff=0.02, stable_latency_p95_ms=4.0, candidate_latency_p95_ms=4.5)
IN_RANGE = {"type": "expect_column_values_to_be_between", "kwargs": {"column": "score", "min_value": 0.0,
                                                                     "max_value": 1.0}, "rows": "all"}


def result(success: bool, **fields: Any) -> ExpectationResult:
    return ExpectationResult(**{**IN_RANGE, "rows_checked": 200, "success": success, **fields})


@pytest.mark.parametrize(("outputs", "passed", "reason"), [
    (OutputValidation(rows=200, results=[result(True, unexpected_count=0)]), True, None),
    (OutputValidation(rows=200, results=[result(False, unexpected_count=12, unexpected_percent=6.0,
                                                unexpected_values=[1.23456, 1.7])]), False,
     "expectation expect_column_values_to_be_between(column=score, min_value=0.0, max_value=1.0) failed: "
     "12 of 200 values unexpected (6.0%), e.g. 1.235, 1.7"),
    (OutputValidation(rows=0, problem="no mirrored answers of the candidate to validate"), False,
     "output validation: no mirrored answers of the candidate to validate"),
    (None, False, "the candidate's outputs were not validated against shadow.expectations"),
])
def test_expectations_decide_with_the_thresholds(outputs, passed, reason):
    verdict = judge_shadow(HEALTHY, ShadowSpec(), outputs)
    assert verdict.passed is passed
    assert verdict.reasons == ([] if reason is None else [reason])
    data = verdict.to_dict()
    assert data["expectations"] == ([r.to_dict() for r in outputs.results] if outputs else [])
    assert data["outputs_validated"] == (outputs.rows if outputs else None)


def test_every_failed_expectation_is_named_next_to_threshold_failures():
    summary = ShadowSummary(**{**HEALTHY.to_dict(), "prediction_agreement": 0.5})
    mean = ExpectationResult(type="expect_column_mean_to_be_between", kwargs={"column": "latency_ms",
                             "max_value": 20}, rows="answered", success=False, rows_checked=150, observed_value=31.5)
    verdict = judge_shadow(summary, ShadowSpec(), OutputValidation(rows=200, results=[result(False), mean,
                                                                                      result(True)]))
    assert not verdict.passed
    assert verdict.reasons[0].startswith("prediction agreement 50.0%")
    assert verdict.reasons[1].startswith("expectation expect_column_values_to_be_between(")
    assert verdict.reasons[2] == ("expectation expect_column_mean_to_be_between(column=latency_ms, max_value=20) "
                                  "on answered rows failed: observed 31.5 over 150 rows")
    assert len(verdict.reasons) == 3


def test_without_expectations_the_outputs_are_not_needed():
    verdict = judge_shadow(HEALTHY, ShadowSpec(expectations=[]), None)
    assert verdict.passed and verdict.to_dict()["outputs_validated"] is None


class Router:
    """Records the calls a shadow test makes (the mirror must always be switched off again)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def deploy(self, version: str) -> None:
        self.calls.append(("deploy", version))

    def set_mirror(self, version: str | None, percent: int = 100) -> None:
        self.calls.append(("set_mirror", version))


class AggregatesOnly:
    """A metrics source with shadow pairs but no per-request outputs (like Prometheus)."""

    def __init__(self) -> None:
        self.windows: list[tuple[float, float]] = []

    def version_stats(self, version: str, *, start_s: float, end_s: float) -> Any:
        raise AssertionError("the shadow test reads no per-version stats")

    def shadow_summary(self, *, stable: str, candidate: str, start_s: float, end_s: float) -> ShadowSummary:
        return HEALTHY


class PerRequest(AggregatesOnly):
    def __init__(self, outputs: list[dict[str, Any]]) -> None:
        super().__init__()
        self.outputs = outputs

    def shadow_outputs(self, candidate: str, *, start_s: float, end_s: float) -> list[dict[str, Any]]:
        self.windows.append((start_s, end_s))
        return self.outputs


def answers(n: int, score: float = 0.3, **overrides: Any) -> list[dict[str, Any]]:
    return [{"request_id": f"r{i}", "ts": 100.0 + i, "score": score, "label": int(score >= 0.5), "latency_ms": 3.0,
             "error": 0, **overrides} for i in range(n)]


def shadow(metrics: Any, spec: ShadowSpec | None = None) -> tuple[Any, Router, list[str]]:
    router, lines = Router(), []
    ticks = iter(range(1000, 2000))
    verdict = run_shadow(router, metrics, spec or ShadowSpec(), stable="v1", candidate="v2",
                         clock=lambda: float(next(ticks)), sleep=lambda s: None, log=lines.append)
    assert router.calls == [("deploy", "v2"), ("set_mirror", "v2"), ("set_mirror", None)]
    return verdict, router, lines


def test_run_shadow_without_per_request_outputs_fails_and_says_how_to_proceed():
    verdict, _, _ = shadow(AggregatesOnly())
    assert not verdict.passed
    (reason,) = verdict.reasons
    assert "cannot read the candidate's per-request outputs" in reason and "shadow.expectations: []" in reason


def test_run_shadow_with_no_outputs_is_never_healthy():
    verdict, _, _ = shadow(PerRequest([]))
    assert verdict.reasons == ["output validation: no mirrored answers of the candidate to validate"]


def test_run_shadow_without_expectations_reads_no_outputs():
    metrics = PerRequest(answers(200))
    verdict, _, lines = shadow(metrics, ShadowSpec(expectations=[]))
    assert verdict.passed and metrics.windows == []
    assert "shadow: output validation off (shadow.expectations: [])" in lines


@pytest.mark.gx
def test_run_shadow_validates_the_outputs_of_the_shadow_window():
    metrics = PerRequest(answers(150) + answers(50, score=1.3))
    verdict, _, lines = shadow(metrics)
    assert metrics.windows == [(1000.0, 1001.0)]  # the window the pairs were counted in
    assert not verdict.passed
    (reason,) = verdict.reasons
    assert reason.startswith("expectation expect_column_values_to_be_between(column=score, min_value=0.0, "
                             "max_value=1.0) failed: 50 of 200 values unexpected (25.0%), e.g. 1.3")
    data = verdict.to_dict()
    assert data["outputs_validated"] == 200
    assert [e["success"] for e in data["expectations"]] == [True, True, False, True]
    assert "shadow: validated 200 mirrored answers of v2 against 4 expectations" in lines
    assert any(line.startswith("shadow: expectation expect_column_values_to_be_between(") and "FAILED" in line
               for line in lines)

    healthy, _, _ = shadow(PerRequest(answers(200)))
    assert healthy.passed and healthy.reasons == []


@pytest.mark.parametrize(("stable_ms", "candidate_ms", "ratio", "slack_ms", "passed"), [
    (5.0, 8.0, 1.5, 5.0, True),      # 1.6x but 3 ms: noise at this size
    (5.0, 11.0, 1.5, 5.0, False),    # 2.2x and 6 ms more
    (40.0, 59.0, 1.5, 5.0, True),    # 19 ms more but within the ratio
    (40.0, 61.0, 1.5, 5.0, False),   # above both
    (5.0, 8.0, 1.5, 0.0, False),     # no slack: the ratio alone decides
])
def test_a_latency_regression_must_exceed_the_ratio_and_the_slack(stable_ms, candidate_ms, ratio, slack_ms, passed):
    summary = ShadowSummary(**{**HEALTHY.__dict__, "stable_latency_p95_ms": stable_ms,
                               "candidate_latency_p95_ms": candidate_ms})
    spec = ShadowSpec(max_latency_p95_ratio=ratio, latency_p95_slack_ms=slack_ms, expectations=[])
    verdict = judge_shadow(summary, spec)
    assert verdict.passed is passed, verdict.reasons
    if not passed:
        assert verdict.reasons == [f"candidate p95 latency {candidate_ms:.1f} ms is {candidate_ms / stable_ms:.2f}x "
                                   f"stable's {stable_ms:.1f} ms (limit {ratio:g}x and {slack_ms:g} ms more)"]


def test_the_latency_slack_cannot_be_negative():
    with pytest.raises(ValueError, match="latency_p95_slack_ms"):
        ShadowSpec(latency_p95_slack_ms=-1)
