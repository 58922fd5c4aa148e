"""The comparison interface: canary vs stable, one verdict per metric.

An :class:`Analyzer` turns a window of cumulative statistics into one :class:`MetricAssessment` per
metric of the spec, plus an immutable state value that travels between polls (JSON-able, so it
can ride in trigger kwargs and events). The gate (:mod:`canary.gate`) combines the assessments with
the guardrails, the stage timing and the policy.

:class:`ThresholdAnalyzer` is the simple fixed-horizon check: it is *not* valid under repeated
looks and is kept as the baseline the sequential analyzer is benchmarked against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from canary.metrics import Snapshot, VersionStats
from canary.phases import Decision
from canary.spec import MetricKind, MetricSpec, RolloutSpec


@dataclass(frozen=True, kw_only=True)
class MetricAssessment:
    """One metric's verdict at one poll.

    ``decision`` is ROLLBACK (a regression is shown), HALT (the metric cannot be evaluated: missing
    data, sample-ratio mismatch), ADVANCE (non-inferiority within tolerance is shown) or CONTINUE.
    """

    metric: str
    kind: str
    decision: Decision
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "kind": self.kind, "decision": self.decision.value,
                "reason": self.reason, "evidence": dict(self.evidence)}


class Analyzer(Protocol):
    """Compares canary with stable; pure, deterministic, no I/O."""

    def assess(self, spec: RolloutSpec, window: Snapshot, *, canary_weight_pct: int,
               state: Mapping[str, Any] | None) -> tuple[list[MetricAssessment], dict[str, Any]]:
        """Return one assessment per metric (and any extra checks) and the next state."""


def _z(alpha: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(1.0 - alpha)


def _rate_bounds(events: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval for a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = events / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class ThresholdAnalyzer:
    """Fixed-horizon relative checks (Wilson bounds on rates, quantile ratios, total variation).

    Regression: the canary's lower bound is worse than stable's upper bound by more than the
    tolerance. Non-inferiority: the canary's upper bound is within tolerance of stable's estimate.
    """

    #: Canary observations a metric needs before it says anything.
    min_observations = 100

    def assess(self, spec: RolloutSpec, window: Snapshot, *, canary_weight_pct: int,
               state: Mapping[str, Any] | None) -> tuple[list[MetricAssessment], dict[str, Any]]:
        z = _z(spec.analysis.alpha / len(spec.analysis.metrics))
        out = [self._assess_one(m, window.stable, window.canary, z) for m in spec.analysis.metrics]
        return out, dict(state or {})

    def _assess_one(self, metric: MetricSpec, stable: VersionStats, canary: VersionStats,
                    z: float) -> MetricAssessment:
        def verdict(decision: Decision, reason: str, **evidence: Any) -> MetricAssessment:
            return MetricAssessment(metric=metric.name, kind=metric.kind.value, decision=decision,
                                    reason=reason, evidence=evidence)

        if stable.requests == 0:
            return verdict(Decision.HALT, "no stable traffic in the window to compare with")
        if canary.requests < self.min_observations:
            return verdict(Decision.CONTINUE, f"{canary.requests} canary requests < {self.min_observations}",
                           canary_requests=canary.requests)
        tol = metric.tolerance
        if metric.kind is MetricKind.ERROR_RATE or metric.kind is MetricKind.KPI:
            bad_c = canary.errors if metric.kind is MetricKind.ERROR_RATE else canary.kpi_events
            bad_s = stable.errors if metric.kind is MetricKind.ERROR_RATE else stable.kpi_events
            harmful_up = metric.kind is MetricKind.ERROR_RATE or not metric.higher_is_better
            c_lo, c_hi = _rate_bounds(bad_c, canary.requests, z)
            s_lo, s_hi = _rate_bounds(bad_s, stable.requests, z)
            s_hat = bad_s / stable.requests
            ev = {"canary_rate": bad_c / canary.requests, "stable_rate": s_hat, "canary_bounds": [c_lo, c_hi],
                  "stable_bounds": [s_lo, s_hi], "canary_requests": canary.requests,
                  "stable_requests": stable.requests}
            if harmful_up:
                if c_lo > s_hi * (1 + tol):
                    return verdict(Decision.ROLLBACK, f"canary rate >= {c_lo:.4f} > stable {s_hi:.4f} x (1+{tol:g})",
                                   **ev)
                if c_hi <= max(s_hat * (1 + tol), 1.0 / canary.requests):
                    return verdict(Decision.ADVANCE, f"canary rate <= {c_hi:.4f} within tolerance", **ev)
            else:
                if c_hi < s_lo * (1 - tol):
                    return verdict(Decision.ROLLBACK, f"canary rate <= {c_hi:.4f} < stable {s_lo:.4f} x (1-{tol:g})",
                                   **ev)
                if c_lo >= s_hat * (1 - tol):
                    return verdict(Decision.ADVANCE, f"canary rate >= {c_lo:.4f} within tolerance", **ev)
            return verdict(Decision.CONTINUE, "not yet conclusive", **ev)
        if metric.kind is MetricKind.LATENCY:
            q = metric.quantile or 0.99
            c_q, s_q = canary.latency_quantile_ms(q), stable.latency_quantile_ms(q)
            if c_q is None or s_q is None:
                return verdict(Decision.HALT, "no latency observations")
            ratio = c_q / s_q if s_q > 0 else math.inf
            ev = {"quantile": q, "canary_ms": c_q, "stable_ms": s_q, "ratio": ratio}
            if ratio > (1 + tol) * 1.5:
                return verdict(Decision.ROLLBACK, f"p{q * 100:g} latency {ratio:.2f}x stable", **ev)
            if ratio <= 1 + tol:
                return verdict(Decision.ADVANCE, f"p{q * 100:g} latency {ratio:.2f}x stable, within tolerance", **ev)
            return verdict(Decision.CONTINUE, f"p{q * 100:g} latency {ratio:.2f}x stable", **ev)
        if metric.kind is MetricKind.PREDICTION_DISTRIBUTION:
            pc, ps = canary.prediction_distribution(), stable.prediction_distribution()
            if pc is None or ps is None:
                return verdict(Decision.HALT, "no predictions recorded")
            tv = 0.5 * sum(abs(a - b) for a, b in zip(pc, ps, strict=True))
            ev = {"total_variation": tv}
            if tv > 2 * tol:
                return verdict(Decision.ROLLBACK, f"prediction distribution moved by TV {tv:.3f}", **ev)
            if tv <= tol:
                return verdict(Decision.ADVANCE, f"prediction distribution within TV {tol:g}", **ev)
            return verdict(Decision.CONTINUE, f"prediction distribution TV {tv:.3f}", **ev)
        raise ValueError(f"unknown metric kind {metric.kind!r}")  # unreachable: the spec validates kinds
