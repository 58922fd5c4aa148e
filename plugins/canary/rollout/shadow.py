"""Shadow test: mirror real requests to the candidate (serving nothing from it), compare with stable, and
validate the candidate's outputs with its spec's Great Expectations suite."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from canary.backends.base import MetricsSource, ShadowSummary, TrafficRouter, shadow_outputs
from canary.errors import NoDataError
from canary.rollout.expectations import ExpectationResult, validate_outputs
from canary.spec import defaults
from canary.spec.durations import format_duration
from canary.spec.model import ShadowInconclusive, ShadowSpec
from canary.stats.paired import (
    PairedAssessment,
    PairedCounts,
    PairedDecision,
    assess_disagreement,
    assess_discordant,
    assess_distribution,
    assess_mean_shift,
    assess_shift,
    combine,
)


@dataclass(frozen=True, kw_only=True)
class OutputValidation:
    """The candidate's mirrored outputs checked against ``shadow.expectations``.

    ``problem`` says why they could not be checked (no answers, a metrics backend without per-request
    outputs); a validation with a problem never passes.
    """

    rows: int
    results: list[ExpectationResult] = field(default_factory=list)
    problem: str | None = None

    @property
    def failed(self) -> list[ExpectationResult]:
        return [r for r in self.results if not r.success]


@dataclass(frozen=True, kw_only=True)
class ShadowVerdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    #: One result per expectation of ``shadow.expectations`` (empty when output validation is off).
    expectations: list[dict[str, Any]] = field(default_factory=list)
    #: Mirrored answers of the candidate that were validated (None when output validation is off).
    outputs_validated: int | None = None
    #: The paired tests at the last look (:class:`canary.stats.paired.PairedAssessment` as dicts).
    tests: list[dict[str, Any]] = field(default_factory=list)
    #: What a person should know of a passed test (e.g. inconclusive, the canary stages decide).
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "summary": dict(self.summary),
                "expectations": [dict(e) for e in self.expectations], "outputs_validated": self.outputs_validated,
                "tests": [dict(t) for t in self.tests], "notes": list(self.notes)}


def validate_candidate_outputs(metrics: MetricsSource, spec: ShadowSpec, *, candidate: str, start_s: float,
                               end_s: float) -> OutputValidation | None:
    """Read the candidate's mirrored answers in the window and run the spec's expectations on them.

    Returns None when ``spec.expectations`` is empty (output validation off). Great Expectations is
    imported only here, when there is something to validate.
    """
    if not spec.expectations:
        return None
    outputs = shadow_outputs(metrics, candidate, start_s=start_s, end_s=end_s)
    if outputs is None:
        return OutputValidation(rows=0, problem=f"the metrics backend ({type(metrics).__name__}) cannot read the "
                                                "candidate's per-request outputs; use a per-request metrics "
                                                "store or set shadow.expectations: []")
    if not outputs:
        return OutputValidation(rows=0, problem="no mirrored answers of the candidate to validate")
    return OutputValidation(rows=len(outputs), results=validate_outputs(outputs, spec.expectations))


#: The paired tests the shadow test's level is split over (Bonferroni): errors, latency, agreement, score shift,
#: and the mean score difference when ``shadow.max_mean_score_shift`` is set (the default), the score
#: distribution when ``shadow.max_score_tv`` is.
PAIRED_TESTS = 4


def paired_tests(spec: ShadowSpec) -> int:
    """Return how many paired tests share the shadow test's level (fixed by the spec, before any pair)."""
    return PAIRED_TESTS + (spec.max_mean_score_shift is not None) + (spec.max_score_tv is not None)


def missing_score_sums(summary: ShadowSummary, spec: ShadowSpec) -> str | None:
    """Return why the mean-difference test cannot run on ``summary`` (a backend without score-difference
    sums), or None. Missing sums are never "no difference": the shadow test does not pass on them."""
    if spec.max_mean_score_shift is None or not summary.answered_pairs or (
            summary.score_diff_sum is not None and summary.score_diff_sum_sq is not None):
        return None
    return (f"mean score difference: not available: the metrics backend reported no sums of score differences "
            f"for the {summary.answered_pairs} answered pairs; use a per-request metrics store (backend 'local') "
            "or set shadow.max_mean_score_shift: null")


def slow_threshold_ms(metrics: MetricsSource, spec: ShadowSpec, *, stable: str,
                      before_s: float) -> tuple[float | None, str | None]:
    """Return the paired latency test's threshold, fixed before the test sees a pair, or why there is none.

    Stable's p95 latency over ``spec.latency_baseline_s`` of served traffic before ``before_s``, plus
    ``spec.latency_p95_slack_ms``.
    """
    window = f"the {format_duration(spec.latency_baseline_s)} before the shadow test"
    try:
        stats = metrics.version_stats(stable, start_s=before_s - spec.latency_baseline_s, end_s=before_s)
    except NoDataError:
        stats = None
    p95 = stats.latency_quantile_ms(0.95) if stats is not None and stats.requests else None
    if p95 is None or not math.isfinite(p95):
        return None, (f"no latency of stable {stable} in {window} to set the slow threshold from "
                      "(shadow.latency_baseline)")
    return p95 + spec.latency_p95_slack_ms, None


def assess_pairs(summary: ShadowSummary, spec: ShadowSpec, *, alpha: float) -> list[PairedAssessment]:
    """Run the paired tests (:mod:`canary.stats.paired`) on one look at the mirrored pairs.

    Each test fails at level ``alpha / paired_tests(spec)`` and passes on bounds at level ``alpha``. Without a
    slow threshold (``summary.slow_threshold_ms`` None) there is no latency test, without
    ``summary.score_shift`` no score-shift test, without ``spec.max_mean_score_shift`` no mean-difference test.
    """
    fail_alpha = alpha / paired_tests(spec)
    common = {"fail_alpha": fail_alpha, "pass_alpha": alpha, "design_ratio": defaults.SHADOW_DESIGN_RATIO,
              "min_pairs": spec.requests}
    tests = [assess_discordant("errors", PairedCounts(pairs=summary.pairs, candidate_only=summary.candidate_only_errors,
                                                      stable_only=summary.stable_only_errors),
                               max_increase=spec.max_error_rate_increase, what="failed", **common)]
    if summary.slow_threshold_ms is not None:
        tests.append(assess_discordant(
            f"latency above {summary.slow_threshold_ms:.1f} ms",
            PairedCounts(pairs=summary.pairs, candidate_only=summary.candidate_only_slow,
                         stable_only=summary.stable_only_slow),
            max_increase=spec.max_slow_share_increase, what="was slow", **common))
    tests.append(assess_disagreement(summary.answered_pairs, summary.disagreements, fail_alpha=fail_alpha,
                                     pass_alpha=alpha, max_disagreement=1.0 - spec.min_prediction_agreement,
                                     min_pairs=spec.requests))
    if summary.score_shift is not None:
        tests.append(assess_shift(summary.answered_pairs, summary.scores_higher, summary.scores_lower,
                                  shift=summary.score_shift, fail_alpha=fail_alpha, pass_alpha=alpha,
                                  max_imbalance=spec.max_score_shift_imbalance, min_pairs=spec.requests))
    if spec.max_mean_score_shift is not None:
        tests.append(assess_mean_shift(summary.answered_pairs, summary.score_diff_sum, summary.score_diff_sum_sq,
                                       fail_alpha=fail_alpha, pass_alpha=alpha, max_shift=spec.max_mean_score_shift,
                                       min_pairs=spec.requests, v_opt=defaults.SHADOW_MEAN_SHIFT_TUNING_V))
    if spec.max_score_tv is not None:
        tests.append(assess_distribution(summary.candidate_score_bins, summary.stable_score_bins,
                                         fail_alpha=fail_alpha, pass_alpha=alpha, max_tv=spec.max_score_tv,
                                         min_pairs=spec.requests))
    return tests


def judge_shadow(summary: ShadowSummary, spec: ShadowSpec, outputs: OutputValidation | None = None, *,
                 alpha: float = defaults.ALPHA) -> ShadowVerdict:
    """Judge the shadow test at its last look: the paired tests, the pair count and the expectations.

    :param outputs: the candidate's outputs validated by :func:`validate_candidate_outputs`; None is a
        failure when the spec has expectations (outputs that were not checked never pass).
    :param alpha: the level of the paired tests (the spec's ``analysis.alpha``).
    """
    reasons: list[str] = []
    notes: list[str] = []
    tests = assess_pairs(summary, spec, alpha=alpha)
    decision = combine(tests)
    reasons += [t.reason for t in tests if t.decision == PairedDecision.FAIL]
    missing = missing_score_sums(summary, spec)
    if missing:
        reasons.append(missing)
    if summary.pairs < spec.requests and decision != PairedDecision.FAIL:  # a test may fail on fewer pairs
        reasons.append(f"only {summary.pairs} mirrored requests answered by both versions, "
                       f"{spec.requests} required")
    if decision == PairedDecision.CONTINUE and summary.pairs >= spec.requests and not missing:
        open_tests = "; ".join(t.reason for t in tests if t.decision == PairedDecision.CONTINUE)
        if spec.on_inconclusive == ShadowInconclusive.FAIL:
            reasons.append(f"inconclusive by shadow.max_duration (shadow.on_inconclusive: fail): {open_tests}")
        else:
            notes.append(f"inconclusive by shadow.max_duration, no regression shown; the canary stages decide: "
                         f"{open_tests}")
    if spec.expectations:
        if outputs is None:
            reasons.append("the candidate's outputs were not validated against shadow.expectations")
        elif outputs.problem:
            reasons.append(f"output validation: {outputs.problem}")
        else:
            reasons += [f"expectation {r.describe()} failed: {r.observed()}" for r in outputs.failed]
    return ShadowVerdict(passed=not reasons, reasons=reasons, summary=summary.to_dict(),
                         expectations=[r.to_dict() for r in outputs.results] if outputs else [],
                         outputs_validated=outputs.rows if outputs else None,
                         tests=[t.to_dict() for t in tests], notes=notes)


def run_shadow(router: TrafficRouter, metrics: MetricsSource, spec: ShadowSpec, *, stable: str, candidate: str,
               alpha: float = defaults.ALPHA, poll_interval_s: float = 2.0,
               settle_s: float = defaults.SHADOW_SETTLE_S, clock: Callable[[], float] = time.time,
               sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = print) -> ShadowVerdict:
    """Mirror traffic to ``candidate`` until the paired tests are conclusive or ``spec.max_duration_s``, then judge.

    Every poll looks at the cumulative pairs: it stops as soon as a test fails, or every test passes on at
    least ``spec.requests`` pairs (the tests are anytime-valid, so looking at every poll costs nothing), or
    the backend turns out not to report what the mean-difference test needs (:func:`missing_score_sums`).
    A look counts the requests that arrived until ``settle_s`` before it: a pair shows up only once both
    answers are stored, and a slow answer is stored late, so without the settling time the order in which
    pairs are counted would depend on their outcome (and the McNemar e-process would not be one).
    The candidate is deployed at 0% (it must be loaded to answer mirrored requests); mirroring is
    always switched off again, whatever happens. The candidate's mirrored answers of the same window
    are then validated against ``spec.expectations``. Without a slow threshold nothing is mirrored.
    """
    threshold_ms, problem = slow_threshold_ms(metrics, spec, stable=stable, before_s=clock())
    if problem:
        log(f"shadow: {problem}")
        return ShadowVerdict(passed=False, reasons=[problem])
    log(f"shadow: slow means above {threshold_ms:.1f} ms (stable's p95 before the test + "
        f"{spec.latency_p95_slack_ms:g} ms)")
    router.deploy(candidate)
    start_s = clock()
    router.set_mirror(candidate, spec.mirror_percent)
    try:
        while True:
            end_s = max(start_s, clock() - settle_s)
            summary = metrics.shadow_summary(stable=stable, candidate=candidate, start_s=start_s, end_s=end_s,
                                             slow_threshold_ms=threshold_ms, score_shift=spec.score_shift)
            elapsed = clock() - start_s
            tests = assess_pairs(summary, spec, alpha=alpha)
            decision = combine(tests)
            log(f"shadow: {summary.pairs} mirrored pairs after {elapsed:.0f}s: {decision}; "
                + "; ".join(f"{t.test} {t.decision}" for t in tests))
            if decision == PairedDecision.FAIL or elapsed >= spec.max_duration_s:
                break
            if missing_score_sums(summary, spec):
                break  # the backend will not start reporting them: judge now (the verdict says why)
            if decision == PairedDecision.PASS and summary.pairs >= spec.requests:
                break
            sleep(min(poll_interval_s, max(0.0, spec.max_duration_s - elapsed)))
    finally:
        router.set_mirror(None)
    for t in tests:
        log(f"shadow: {t.reason}")
    outputs = validate_candidate_outputs(metrics, spec, candidate=candidate, start_s=start_s, end_s=end_s)
    if outputs is None:
        log("shadow: output validation off (shadow.expectations: [])")
    elif outputs.problem:
        log(f"shadow: output validation failed: {outputs.problem}")
    else:
        log(f"shadow: validated {outputs.rows} mirrored answers of {candidate} against "
            f"{len(outputs.results)} expectations")
        for r in outputs.results:
            log(f"shadow: expectation {r.describe()}: {'passed' if r.success else 'FAILED'} ({r.observed()})")
    return judge_shadow(summary, spec, outputs, alpha=alpha)
