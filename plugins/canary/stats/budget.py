"""The error budget: how ``analysis.alpha`` is split between the tests that can stop a healthy canary.

``analysis.alpha`` bounds the probability that a healthy, correctly routed canary (same error rates,
latencies, KPIs and predictions as stable; the traffic split the configured one) is rolled back or
halted by any statistical test, over the whole rollout and at any poll cadence. Two kinds of test can
stop such a canary, and each gets a fixed share:

* the sample-ratio-mismatch check (HALT): ``srm_alpha``, by default ``min(0.001, alpha / 10)``
  (:data:`canary.spec.defaults.SRM_ALPHA`);
* the metrics (ROLLBACK): ``alpha - srm_alpha``, split over the metrics by their normalised weights
  ``w_i`` (weighted Bonferroni on e-values: metric ``i`` rolls back when ``E_i >= 1 / ((alpha -
  srm_alpha) w_i)``).

Each test is one e-process over the whole rollout: the analyzer carries every stage's evidence into
the next (the label tests multiply per-stage likelihood ratios inside one mixture; the SRM test
multiplies the e-values of per-stage mixtures), so each is a nonnegative supermartingale with initial
value 1 across stages, and Ville's inequality bounds the probability that it *ever* crosses
``1 / level`` by ``level``, whenever and however often it is looked at. A union bound over the tests
gives ``srm_alpha + sum_i (alpha - srm_alpha) w_i = alpha``.

The bound assumes what the tests assume: requests routed independently with the configured share
(the SRM null) and independent requests (the label tests); a routing that is sticky per user makes
the request split clustered, and a stage whose ``set_traffic`` task is cleared by hand restarts that
stage's window without accounting for the looks already taken.

With ``analysis.segments`` every test also runs in each listed segment, and each test's level is split
again (weighted Bonferroni across scopes): the overall test keeps ``1 - alpha_share`` of it, each of the
``k`` segments gets ``alpha_share / k``. The segments are declared before the rollout, so the split is
fixed in advance and the union bound still gives ``alpha``. The e-values make this natural: every scope's
e-process is valid on its own, whatever the dependence between scopes.

Not covered by ``alpha`` (they are not statistical tests of canary against stable): the absolute
guardrails (``analysis.guardrails``: fixed limits that roll back whatever stable does), HALT on missing
data, and TIMEOUT at a stage deadline. Promotion is a different error: a canary that truly regresses by
its tolerance is promoted with probability at most ``alpha`` (every metric's confidence sequence at
level ``alpha``; an intersection-union test needs no split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from canary.spec import defaults
from canary.spec.model import AnalysisSpec


def default_srm_alpha(alpha: float) -> float:
    """Return the SRM check's level when the spec sets none: ``min(0.001, alpha / 10)``."""
    return min(defaults.SRM_ALPHA, defaults.SRM_MAX_ALPHA_FRACTION * alpha)


@dataclass(frozen=True, kw_only=True)
class ErrorBudget:
    """Levels of every test that can stop a healthy canary, in one scope: overall, or one segment.

    ``srm_alpha`` and ``metric_alpha`` (``(metric name, rollback level)`` in the spec's metric order) are the
    scope's levels; ``scope_share`` is the scope's share of each test's whole level (1 without segments).
    Over all scopes the levels sum to ``alpha``. :func:`error_budget` returns the overall scope;
    :meth:`for_segment` a segment's.
    """

    alpha: float
    srm_alpha: float
    metric_alpha: tuple[tuple[str, float], ...]
    scope_share: float = 1.0
    segment_share: float = 0.0
    segments: tuple[str, ...] = ()

    @property
    def metrics_alpha(self) -> float:
        """The metrics' part of this scope's budget (``alpha - srm_alpha`` without segments)."""
        return sum(level for _, level in self.metric_alpha)

    @property
    def promote_alpha(self) -> float:
        """Level of the non-inferiority confidence sequences that promotion needs (not split)."""
        return self.alpha

    def metric(self, name: str) -> float:
        """Return the rollback level of metric ``name``."""
        for metric_name, level in self.metric_alpha:
            if metric_name == name:
                return level
        raise KeyError(f"no metric {name!r} in the error budget ({[n for n, _ in self.metric_alpha]})")

    def log_rollback_threshold(self, name: str) -> float:
        """Return ``log(1 / level)``: metric ``name`` rolls back when its log e-value reaches it."""
        return math.log(1.0 / self.metric(name))

    @property
    def log_srm_threshold(self) -> float:
        """Return ``log(1 / srm_alpha)``: the SRM check HALTs when its log e-value reaches it."""
        return math.log(1.0 / self.srm_alpha)

    def for_segment(self) -> ErrorBudget:
        """Return the levels of one segment's tests (each test's whole level times ``alpha_share / k``).

        :raises ValueError: the analysis has no segments.
        """
        if not self.segments:
            raise ValueError("the analysis has no segments")
        f = self.segment_share / self.scope_share
        return replace(self, srm_alpha=self.srm_alpha * f, metric_alpha=tuple((n, a * f) for n, a in self.metric_alpha),
                       scope_share=self.segment_share, segments=())

    def describe(self) -> str:
        """One line for people: ``alpha 0.05 = SRM 0.001 + metrics 0.049 (error_rate 0.049)``."""
        whole = 1.0 / self.scope_share
        parts = ", ".join(f"{name} {level * whole:.3g}" for name, level in self.metric_alpha)
        line = (f"alpha {self.alpha:g} = SRM {self.srm_alpha * whole:.3g} + metrics {self.metrics_alpha * whole:.3g} "
                f"({parts})")
        if self.segments:
            line += (f"; each test's level split: overall {self.scope_share:.0%}, each of {len(self.segments)} "
                     f"segments {self.segment_share:.1%}")
        return line + ": the chance that a healthy, correctly routed canary is rolled back or halted by any test"


def error_budget(analysis: AnalysisSpec) -> ErrorBudget:
    """Split ``analysis.alpha`` between the SRM check and the metrics, and between the scopes (module docstring).

    Returns the overall scope's levels (the whole budget without segments). Raises ValueError if
    ``srm_alpha >= alpha`` (spec validation reports it as ``analysis.srm_alpha``).
    """
    alpha = analysis.alpha
    srm_alpha = analysis.srm_alpha if analysis.srm_alpha is not None else default_srm_alpha(alpha)
    if not 0.0 < srm_alpha < alpha:
        raise ValueError(f"analysis.srm_alpha {srm_alpha:g} must be below analysis.alpha {alpha:g}: it is carved "
                         "out of alpha, and the metrics share the rest")
    segments = analysis.segments
    overall = 1.0 - segments.alpha_share if segments is not None else 1.0
    total_weight = sum(m.weight for m in analysis.metrics)
    levels = tuple((m.name, overall * (alpha - srm_alpha) * m.weight / total_weight) for m in analysis.metrics)
    if segments is None:
        return ErrorBudget(alpha=alpha, srm_alpha=srm_alpha, metric_alpha=levels)
    return ErrorBudget(alpha=alpha, srm_alpha=overall * srm_alpha, metric_alpha=levels, scope_share=overall,
                       segment_share=segments.alpha_share / len(segments.values),
                       segments=tuple(segments.values))
