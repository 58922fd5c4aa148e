"""Shadow test: mirror real requests to the candidate (serving nothing from it) and compare with stable."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from canary.backends.base import MetricsSource, ShadowSummary, TrafficRouter
from canary.spec import ShadowSpec


@dataclass(frozen=True, kw_only=True)
class ShadowVerdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "summary": dict(self.summary)}


def judge_shadow(summary: ShadowSummary, spec: ShadowSpec) -> ShadowVerdict:
    """Compare the candidate's mirrored answers with stable's against the spec's thresholds."""
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
        elif s95 > 0 and c95 / s95 > spec.max_latency_p95_ratio:
            reasons.append(f"candidate p95 latency {c95:.0f} ms is {c95 / s95:.2f}x stable's {s95:.0f} ms "
                           f"(limit {spec.max_latency_p95_ratio:g}x)")
    return ShadowVerdict(passed=not reasons, reasons=reasons, summary=summary.to_dict())


def run_shadow(router: TrafficRouter, metrics: MetricsSource, spec: ShadowSpec, *, stable: str, candidate: str,
               poll_interval_s: float = 2.0, clock: Callable[[], float] = time.time,
               sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = print) -> ShadowVerdict:
    """Mirror traffic to ``candidate`` until ``spec.requests`` pairs or ``spec.max_duration_s``, then judge.

    The candidate is deployed at 0% (it must be loaded to answer mirrored requests); mirroring is
    always switched off again, whatever happens.
    """
    router.deploy(candidate)
    start_s = clock()
    router.set_mirror(candidate, spec.mirror_percent)
    try:
        while True:
            summary = metrics.shadow_summary(stable=stable, candidate=candidate, start_s=start_s, end_s=clock())
            elapsed = clock() - start_s
            log(f"shadow: {summary.pairs}/{spec.requests} mirrored pairs after {elapsed:.0f}s")
            if summary.pairs >= spec.requests or elapsed >= spec.max_duration_s:
                break
            sleep(min(poll_interval_s, max(0.0, spec.max_duration_s - elapsed)))
    finally:
        router.set_mirror(None)
    return judge_shadow(summary, spec)
