"""Shadow test: mirror real requests to the candidate (serving nothing from it), compare with stable, and
validate the candidate's outputs with its spec's Great Expectations suite."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from canary.backends.base import MetricsSource, ShadowSummary, TrafficRouter, shadow_outputs
from canary.rollout.expectations import ExpectationResult, validate_outputs
from canary.spec.model import ShadowSpec


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

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "summary": dict(self.summary),
                "expectations": [dict(e) for e in self.expectations], "outputs_validated": self.outputs_validated}


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


def judge_shadow(summary: ShadowSummary, spec: ShadowSpec,
                 outputs: OutputValidation | None = None) -> ShadowVerdict:
    """Compare the candidate's mirrored answers with stable's against the spec's thresholds and expectations.

    :param outputs: the candidate's outputs validated by :func:`validate_candidate_outputs`; None is a
        failure when the spec has expectations (outputs that were not checked never pass).
    """
    reasons: list[str] = []
    if summary.pairs < spec.requests:
        reasons.append(f"only {summary.pairs} mirrored requests answered by both versions, "
                       f"{spec.requests} required")
    if summary.pairs:
        increase = (summary.candidate_errors - summary.stable_errors) / summary.pairs
        if increase > spec.max_error_rate_increase:
            reasons.append(f"candidate error rate {increase:+.2%} vs stable on the same requests "
                           f"(limit {spec.max_error_rate_increase:+.2%})")
        agreement = summary.prediction_agreement
        if agreement is None or agreement < spec.min_prediction_agreement:
            shown = "none" if agreement is None else f"{agreement:.1%}"
            reasons.append(f"prediction agreement {shown} below {spec.min_prediction_agreement:.0%}")
        s95, c95 = summary.stable_latency_p95_ms, summary.candidate_latency_p95_ms
        if s95 is None or c95 is None:
            reasons.append("no latency recorded for mirrored requests")
        elif s95 > 0 and c95 / s95 > spec.max_latency_p95_ratio and c95 - s95 > spec.latency_p95_slack_ms:
            reasons.append(f"candidate p95 latency {c95:.1f} ms is {c95 / s95:.2f}x stable's {s95:.1f} ms "
                           f"(limit {spec.max_latency_p95_ratio:g}x and {spec.latency_p95_slack_ms:g} ms more)")
    if spec.expectations:
        if outputs is None:
            reasons.append("the candidate's outputs were not validated against shadow.expectations")
        elif outputs.problem:
            reasons.append(f"output validation: {outputs.problem}")
        else:
            reasons += [f"expectation {r.describe()} failed: {r.observed()}" for r in outputs.failed]
    return ShadowVerdict(passed=not reasons, reasons=reasons, summary=summary.to_dict(),
                         expectations=[r.to_dict() for r in outputs.results] if outputs else [],
                         outputs_validated=outputs.rows if outputs else None)


def run_shadow(router: TrafficRouter, metrics: MetricsSource, spec: ShadowSpec, *, stable: str, candidate: str,
               poll_interval_s: float = 2.0, clock: Callable[[], float] = time.time,
               sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = print) -> ShadowVerdict:
    """Mirror traffic to ``candidate`` until ``spec.requests`` pairs or ``spec.max_duration_s``, then judge.

    The candidate is deployed at 0% (it must be loaded to answer mirrored requests); mirroring is
    always switched off again, whatever happens. The candidate's mirrored answers of the same window
    are then validated against ``spec.expectations``.
    """
    router.deploy(candidate)
    start_s = clock()
    router.set_mirror(candidate, spec.mirror_percent)
    try:
        while True:
            end_s = clock()
            summary = metrics.shadow_summary(stable=stable, candidate=candidate, start_s=start_s, end_s=end_s)
            elapsed = clock() - start_s
            log(f"shadow: {summary.pairs}/{spec.requests} mirrored pairs after {elapsed:.0f}s")
            if summary.pairs >= spec.requests or elapsed >= spec.max_duration_s:
                break
            sleep(min(poll_interval_s, max(0.0, spec.max_duration_s - elapsed)))
    finally:
        router.set_mirror(None)
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
    return judge_shadow(summary, spec, outputs)
