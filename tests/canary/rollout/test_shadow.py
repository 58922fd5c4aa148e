"""The shadow verdict: the paired tests and the candidate's output expectations (table tests without GX), and
run_shadow against fakes at the router and metrics interfaces (with GX): when it stops and why."""

from __future__ import annotations

import math
from typing import Any

import pytest

from canary.backends.base import ShadowSummary
from canary.errors import NoDataError, SpecError
from canary.policy.evidence import VersionStats
from canary.rollout.expectations import ExpectationResult
from canary.rollout.shadow import OutputValidation, judge_shadow, run_shadow
from canary.spec.model import ShadowSpec, parse_spec

# As healthy as stable on 2,000 mirrored requests: conclusive at every default margin but the 1-point error one.
HEALTHY = ShadowSummary(pairs=2000, stable_errors=20, candidate_errors=20, prediction_agreement=0.98,
                        mean_abs_score_diff=0.02, stable_latency_p95_ms=4.0, candidate_latency_p95_ms=4.1,
                        candidate_only_errors=8, stable_only_errors=8, answered_pairs=1980, disagreements=40,
                        slow_threshold_ms=9.0, candidate_only_slow=40, stable_only_slow=40,
                        score_shift=0.1, scores_higher=30, scores_lower=28,
                        score_diff_sum=4.0, score_diff_sum_sq=19.8)  # mean +0.002, 0.1 root mean square
#: Margins at which HEALTHY is conclusive (passes).
CONCLUSIVE = {"max_error_rate_increase": 0.02}
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
def test_expectations_decide_with_the_paired_tests(outputs, passed, reason):
    verdict = judge_shadow(HEALTHY, ShadowSpec(**CONCLUSIVE), outputs)
    assert verdict.passed is passed
    assert verdict.reasons == ([] if reason is None else [reason])
    data = verdict.to_dict()
    assert data["expectations"] == ([r.to_dict() for r in outputs.results] if outputs else [])
    assert data["outputs_validated"] == (outputs.rows if outputs else None)


def test_every_failed_expectation_is_named_next_to_the_failed_paired_tests():
    summary = ShadowSummary(**{**HEALTHY.to_dict(), "disagreements": 990, "prediction_agreement": 0.5})
    mean = ExpectationResult(type="expect_column_mean_to_be_between", kwargs={"column": "latency_ms",
                             "max_value": 20}, rows="answered", success=False, rows_checked=150, observed_value=31.5)
    verdict = judge_shadow(summary, ShadowSpec(**CONCLUSIVE), OutputValidation(rows=200, results=[
        result(False), mean, result(True)]))
    assert not verdict.passed
    assert verdict.reasons[0].startswith("prediction agreement: 990 of 1980 answered pairs predict a different "
                                         "class; disagreement at least ")
    assert verdict.reasons[1].startswith("expectation expect_column_values_to_be_between(")
    assert verdict.reasons[2] == ("expectation expect_column_mean_to_be_between(column=latency_ms, max_value=20) "
                                  "on answered rows failed: observed 31.5 over 150 rows")
    assert len(verdict.reasons) == 3


@pytest.mark.parametrize(("changes", "reason_start"), [
    # The demo's broken candidate of old: 28 errors against stable's 4 on the same 384 requests.
    ({"pairs": 384, "candidate_errors": 28, "stable_errors": 4, "candidate_only_errors": 27, "stable_only_errors": 3,
      "answered_pairs": 354, "disagreements": 10, "candidate_only_slow": 10, "stable_only_slow": 10},
     "errors: candidate only failed on 27 and stable only on 3 of 384 mirrored requests (+6.25 points); evidence "),
    ({"candidate_only_slow": 160, "stable_only_slow": 40},
     "latency above 9.0 ms: candidate only was slow on 160 and stable only on 40 of 2000 mirrored requests"),
    # Shifted scores whose classes mostly stay: only the score-shift test sees it.
    ({"scores_higher": 400, "scores_lower": 30},
     "score shift beyond ±0.1: the candidate's score is above stable's by more than 0.1 on 400 and below on 30 of "
     "1980 answered pairs; its scores are shifted up: imbalance at least +13.48 points, beyond ±5.00 points"),
    ({"pairs": 150, "answered_pairs": 148, "candidate_only_errors": 0, "stable_only_errors": 0, "disagreements": 2,
      "candidate_only_slow": 3, "stable_only_slow": 3, "scores_higher": 2, "scores_lower": 2},
     "only 150 mirrored requests answered by both versions, 200 required"),
])
def test_each_paired_test_fails_the_shadow_test_and_says_why(changes, reason_start):
    verdict = judge_shadow(ShadowSummary(**{**HEALTHY.to_dict(), **changes}), ShadowSpec(**CONCLUSIVE, expectations=[]))
    assert not verdict.passed
    assert verdict.reasons[0].startswith(reason_start), verdict.reasons
    assert {t["test"] for t in verdict.to_dict()["tests"]} == {"errors", "latency above 9.0 ms", "prediction agreement",
                                                              "score shift beyond ±0.1", "mean score difference"}


@pytest.mark.parametrize(("on_inconclusive", "passed"), [("proceed", True), ("fail", False)])
def test_an_inconclusive_shadow_test_does_what_the_spec_declares(on_inconclusive, passed):
    spec = ShadowSpec(on_inconclusive=on_inconclusive, expectations=[])  # 1-point error margin: not yet shown
    verdict = judge_shadow(HEALTHY, spec)
    assert verdict.passed is passed
    said = (verdict.notes if passed else verdict.reasons)[0]
    assert "inconclusive by shadow.max_duration" in said and "not yet within +1.00 points" in said, said


def test_without_a_slow_threshold_there_is_no_latency_test():
    """run_shadow never judges without one (it stops first, naming the missing baseline); judge_shadow copes."""
    verdict = judge_shadow(ShadowSummary(**{**HEALTHY.to_dict(), "slow_threshold_ms": None}),
                           ShadowSpec(**CONCLUSIVE, expectations=[]))
    assert verdict.passed and verdict.reasons == []
    assert [t["test"] for t in verdict.tests] == ["errors", "prediction agreement", "score shift beyond ±0.1",
                                                  "mean score difference"]
    assert [t["kind"] for t in verdict.tests] == ["discordant", "rate", "discordant", "mean"]


def test_the_old_latency_ratio_is_refused_naming_its_replacement():
    with pytest.raises(ValueError, match="max_latency_p95_ratio was replaced .* shadow.max_slow_share_increase"):
        ShadowSpec(max_latency_p95_ratio=1.5)


def test_without_expectations_the_outputs_are_not_needed():
    verdict = judge_shadow(HEALTHY, ShadowSpec(**CONCLUSIVE, expectations=[]), None)
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
    """A metrics source with shadow pairs but no per-request outputs; its pairs grow by 500 every poll.

    ``summaries`` gives the pairs of poll 1, 2, ... (the last one repeats); stable served traffic before
    the test unless ``stable_latency`` is False.
    """

    def __init__(self, summaries: list[ShadowSummary] | None = None, *, stable_latency: bool = True) -> None:
        self.windows: list[tuple[float, float]] = []
        self.summaries = summaries or [HEALTHY]
        self.polls = 0
        self.stable_latency = stable_latency
        self.thresholds: list[float | None] = []
        self.shifts: list[float | None] = []
        self.baseline: list[tuple[str, float, float]] = []

    def version_stats(self, version: str, *, start_s: float, end_s: float) -> Any:
        self.baseline.append((version, start_s, end_s))
        if not self.stable_latency:
            raise NoDataError("fake", f"no series for {version}")
        return VersionStats(version=version, requests=1000, latency_buckets_ms=(2.0, 4.0, 8.0, math.inf),
                            latency_cumulative=(100, 900, 1000, 1000))

    def shadow_summary(self, *, stable: str, candidate: str, start_s: float, end_s: float,
                       slow_threshold_ms: float | None = None, score_shift: float | None = None) -> ShadowSummary:
        self.thresholds.append(slow_threshold_ms)
        self.shifts.append(score_shift)
        self.polls += 1
        summary = self.summaries[min(self.polls, len(self.summaries)) - 1]
        return ShadowSummary(**{**summary.to_dict(), "slow_threshold_ms": slow_threshold_ms,
                                "score_shift": score_shift})


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


MIRRORED = [("deploy", "v2"), ("set_mirror", "v2"), ("set_mirror", None)]


def shadow(metrics: Any, spec: ShadowSpec | None = None, *, settle_s: float = 0.0,
           calls: list[tuple[Any, ...]] = MIRRORED) -> tuple[Any, Router, list[str]]:
    """Run the shadow test on a fake clock that ticks 1 s per reading."""
    router, lines = Router(), []
    ticks = iter(range(1000, 2000))
    verdict = run_shadow(router, metrics, spec or ShadowSpec(**CONCLUSIVE), stable="v1", candidate="v2",
                         settle_s=settle_s, clock=lambda: float(next(ticks)), sleep=lambda s: None, log=lines.append)
    assert router.calls == calls
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
    verdict, _, lines = shadow(metrics, ShadowSpec(**CONCLUSIVE, expectations=[]))
    assert verdict.passed and metrics.windows == []
    assert "shadow: output validation off (shadow.expectations: [])" in lines


@pytest.mark.gx
def test_run_shadow_validates_the_outputs_of_the_shadow_window():
    metrics = PerRequest(answers(150) + answers(50, score=1.3))
    verdict, _, lines = shadow(metrics)
    assert metrics.windows == [(1001.0, 1002.0)]  # the window the pairs were counted in
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


BROKEN = ShadowSummary(**{**HEALTHY.to_dict(), "pairs": 384, "candidate_only_errors": 27, "stable_only_errors": 3})
EARLY = ShadowSummary(**{**HEALTHY.to_dict(), "pairs": 20, "answered_pairs": 20, "candidate_only_errors": 0,
                         "stable_only_errors": 0, "disagreements": 0, "candidate_only_slow": 1, "stable_only_slow": 1,
                         "scores_higher": 1, "scores_lower": 1})


def test_run_shadow_stops_at_the_first_look_that_fails_and_fixes_the_slow_threshold_first():
    metrics = AggregatesOnly([EARLY, BROKEN, HEALTHY])
    verdict, _, lines = shadow(metrics, ShadowSpec(**CONCLUSIVE, expectations=[], latency_baseline="10m"))
    assert metrics.polls == 2 and not verdict.passed
    assert verdict.reasons[0].startswith("errors: candidate only failed on 27")
    # Stable's p95 over the 10 minutes before the test (6 ms by the histogram) + the 5 ms slack, every poll.
    assert metrics.baseline == [("v1", 1000.0 - 600.0, 1000.0)]
    assert metrics.thresholds == [pytest.approx(6.0 + 5.0)] * 2 and metrics.shifts == [0.1, 0.1]
    assert lines[0].startswith("shadow: slow means above 11.0 ms")
    assert lines[2].startswith("shadow: 384 mirrored pairs after 4s: fail; errors fail; ")


def test_run_shadow_stops_once_every_test_passes_on_enough_pairs():
    metrics = AggregatesOnly([EARLY, HEALTHY, BROKEN])
    verdict, _, _ = shadow(metrics, ShadowSpec(**CONCLUSIVE, expectations=[]))
    assert metrics.polls == 2 and verdict.passed, verdict.reasons


def test_run_shadow_keeps_looking_until_max_duration_while_inconclusive():
    metrics = AggregatesOnly([EARLY, HEALTHY])
    verdict, _, _ = shadow(metrics, ShadowSpec(expectations=[], max_duration="30s"))  # 1-point margin: open
    # The fake clock ticks 1 s per reading and a poll reads it twice: the 15th poll is at 30 s.
    assert metrics.polls == 15 and verdict.passed and verdict.notes


def test_run_shadow_without_stable_latency_before_it_fails_naming_the_field_and_mirrors_nothing():
    metrics = AggregatesOnly(stable_latency=False)
    verdict, _, _ = shadow(metrics, ShadowSpec(**CONCLUSIVE), calls=[])
    assert metrics.polls == 0 and not verdict.passed
    assert verdict.reasons == ["no latency of stable v1 in the 10m before the shadow test to set the slow threshold "
                               "from (shadow.latency_baseline)"]


def test_the_latency_slack_cannot_be_negative():
    with pytest.raises(ValueError, match="latency_p95_slack_ms"):
        ShadowSpec(latency_p95_slack_ms=-1)


@pytest.mark.parametrize(("shadow", "message"), [
    ({"max_latency_p95_ratio": 1.5}, "<spec>: shadow: max_latency_p95_ratio was replaced by the paired latency test: "
                                     "set shadow.max_slow_share_increase"),
    ({"on_inconclusive": "maybe"}, "<spec>: shadow.on_inconclusive: must be one of 'proceed' or 'fail', got 'maybe'"),
    ({"score_shift": 0}, "<spec>: shadow.score_shift: "),
    ({"max_mean_score_shift": 0}, "<spec>: shadow.max_mean_score_shift: must be greater than 0"),
    ({"max_mean_score_shift": 5}, "<spec>: shadow.max_mean_score_shift: must be less than or equal to 1"),
    ({"latency_baseline": "soon"}, "<spec>: shadow.latency_baseline"),
])
def test_bad_shadow_settings_are_refused_naming_the_field(shadow, message):
    with pytest.raises(SpecError) as err:
        parse_spec({"model": "m", "endpoint": "e", "shadow": shadow, "stages": [{"weight": 100}]})
    assert message in str(err.value), str(err.value)


def test_the_distribution_test_runs_only_when_declared_and_takes_its_share_of_the_level():
    bins = (100, 200, 300, 400, 400, 300, 200, 50, 20, 10)
    summary = ShadowSummary(**{**HEALTHY.to_dict(), "stable_score_bins": bins, "candidate_score_bins": bins})
    assert [t["test"] for t in judge_shadow(summary, ShadowSpec(**CONCLUSIVE, expectations=[])).tests] == [
        "errors", "latency above 9.0 ms", "prediction agreement", "score shift beyond ±0.1", "mean score difference"]
    verdict = judge_shadow(summary, ShadowSpec(**CONCLUSIVE, max_score_tv=0.35, expectations=[]), alpha=0.05)
    assert verdict.passed, verdict.reasons
    assert verdict.tests[-1]["test"] == "score distribution" and verdict.tests[-1]["decision"] == "pass"
    assert verdict.tests[0]["e_threshold"] == pytest.approx(6 / 0.05)  # six tests share alpha
    moved = ShadowSummary(**{**summary.to_dict(), "candidate_score_bins": (0,) * 7 + (80, 900, 1000)})
    failed = judge_shadow(moved, ShadowSpec(**CONCLUSIVE, max_score_tv=0.35, expectations=[]))
    assert not failed.passed and failed.reasons[0].startswith("score distribution: total-variation distance ")


@pytest.mark.gx
def test_a_look_counts_only_requests_settled_before_it():
    """Pairs are counted once both answers are final: the window ends settle_s before the look."""
    metrics = PerRequest(answers(200))
    metrics.summaries = [EARLY, HEALTHY]
    verdict, _, _ = shadow(metrics, ShadowSpec(**CONCLUSIVE, expectations=[IN_RANGE]), settle_s=2.5)
    # The clock reads 1000 (slow threshold), 1001 (start), 1002 (first look): nothing has settled, the
    # window ends at the start; the second look (1004) counts until 1001.5, and its window is validated.
    assert verdict.passed and metrics.polls == 2
    assert metrics.windows == [(1001.0, 1001.5)]


def test_a_test_failing_on_fewer_pairs_than_required_is_the_reason_given():
    early = ShadowSummary(**{**BROKEN.to_dict(), "pairs": 120, "candidate_only_errors": 20, "stable_only_errors": 0,
                             "answered_pairs": 100, "disagreements": 2, "candidate_only_slow": 2,
                             "stable_only_slow": 2, "scores_higher": 1, "scores_lower": 1})
    verdict = judge_shadow(early, ShadowSpec(**CONCLUSIVE, expectations=[]))
    assert [r.split(":")[0] for r in verdict.reasons] == ["errors"], verdict.reasons


def test_a_uniform_drift_the_score_shift_test_cannot_see_fails_the_mean_difference_test():
    """Every score about 0.07 higher: no more pairs moved beyond 0.1 than HEALTHY's, so only the mean test sees it."""
    drift = ShadowSummary(**{**HEALTHY.to_dict(), "score_diff_sum": 0.07 * 1980,
                             "score_diff_sum_sq": 1980 * (0.07 ** 2 + 0.05 ** 2)})
    verdict = judge_shadow(drift, ShadowSpec(**CONCLUSIVE, expectations=[]))
    assert not verdict.passed
    (reason,) = verdict.reasons
    assert reason == ("mean score difference: the candidate's scores are higher by 0.070 on average (at least 0.060) "
                      "on 1980 answered pairs, beyond ±0.05")
    tests = {t["test"]: t for t in verdict.tests}
    mean = tests["mean score difference"]
    assert (mean["kind"], mean["decision"], mean["limit"], mean["pairs"]) == ("mean", "fail", 0.05, 1980)
    assert mean["estimate"] == pytest.approx(0.07) and 0.05 < mean["lower"] < 0.07 < mean["upper"] < 0.09
    assert tests["score shift beyond ±0.1"]["decision"] == "pass"
    lower = ShadowSummary(**{**drift.to_dict(), "score_diff_sum": -0.07 * 1980})
    assert judge_shadow(lower, ShadowSpec(**CONCLUSIVE, expectations=[])).reasons[0].startswith(
        "mean score difference: the candidate's scores are lower by 0.070 on average")


def test_the_mean_difference_test_is_on_by_default_takes_a_share_of_the_level_and_can_be_turned_off():
    on = judge_shadow(HEALTHY, ShadowSpec(**CONCLUSIVE, expectations=[]), alpha=0.05)
    assert on.passed, on.reasons
    assert on.tests[-1]["test"] == "mean score difference" and on.tests[-1]["decision"] == "pass"
    assert -0.05 <= on.tests[-1]["lower"] <= on.tests[-1]["upper"] <= 0.05
    assert on.tests[0]["e_threshold"] == pytest.approx(5 / 0.05)  # five tests share alpha
    blind = ShadowSummary(**{**HEALTHY.to_dict(), "score_diff_sum": None, "score_diff_sum_sq": None})
    off = judge_shadow(blind, ShadowSpec(**CONCLUSIVE, max_mean_score_shift=None, expectations=[]), alpha=0.05)
    assert off.passed and "mean score difference" not in {t["test"] for t in off.tests}
    assert off.tests[0]["e_threshold"] == pytest.approx(4 / 0.05)


MISSING_SUMS = ("mean score difference: not available: the metrics backend reported no sums of score differences for "
                "the 1980 answered pairs; use a per-request metrics store (backend 'local') or set "
                "shadow.max_mean_score_shift: null")


@pytest.mark.parametrize("on_inconclusive", ["proceed", "fail"])
def test_without_score_difference_sums_the_shadow_test_never_passes_and_says_why(on_inconclusive):
    """Missing sums are not "no difference", not even when an inconclusive shadow test would proceed."""
    blind = ShadowSummary(**{**HEALTHY.to_dict(), "score_diff_sum": None, "score_diff_sum_sq": None})
    verdict = judge_shadow(blind, ShadowSpec(**CONCLUSIVE, on_inconclusive=on_inconclusive, expectations=[]))
    assert not verdict.passed and verdict.reasons == [MISSING_SUMS] and verdict.notes == []
    (mean,) = [t for t in verdict.tests if t["test"] == "mean score difference"]
    assert (mean["decision"], mean["lower"], mean["upper"], mean["estimate"]) == ("continue", -1.0, 1.0, None)


def test_run_shadow_stops_at_the_first_look_without_score_difference_sums():
    """The backend will not start reporting them: waiting for max_duration would change nothing."""
    blind = ShadowSummary(**{**HEALTHY.to_dict(), "score_diff_sum": None, "score_diff_sum_sq": None})
    metrics = AggregatesOnly([blind])
    verdict, _, _ = shadow(metrics, ShadowSpec(**CONCLUSIVE, expectations=[], max_duration="30s"))
    assert metrics.polls == 1 and verdict.reasons == [MISSING_SUMS]
