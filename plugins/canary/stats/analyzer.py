"""The anytime-valid analyzer: one e-process and one confidence sequence per metric, plus SRM.

:class:`SequentialAnalyzer` implements :class:`canary.policy.analysis.Analyzer`. At every poll of a stage the
gate passes the cumulative statistics of the current stage (``window``) and the carry-over state of
the previous stages (:class:`SequentialState`, constant during a stage). Every quantity below is a
function of cumulative counts only, so any poll cadence, missed polls, retries and restarts give the
same answer; the state returned is what to carry if the stage ended now.

The error budget (:mod:`canary.stats.budget`): the SRM check spends ``srm_alpha`` (default
``min(0.001, alpha / 10)``) and the metrics share ``alpha - srm_alpha``, so that ``alpha`` bounds the
probability that a healthy, correctly routed canary is rolled back or halted by any test over the whole
rollout. Per metric (``w_i`` = the metric's weight normalised over all metrics):

* ROLLBACK when the metric's e-value ``E_i >= 1 / ((alpha - srm_alpha) w_i)`` (weighted Bonferroni on
  e-values: valid under any dependence between metrics, and it names the metric that fired);
* ADVANCE when its confidence sequence shows non-inferiority within the tolerance at level
  ``alpha`` (an intersection-union test: promotion needs *every* metric, so no split is needed);
* HALT when it cannot be evaluated (missing data, no stable traffic);
* CONTINUE otherwise.

An extra assessment named ``srm`` HALTs on a sample-ratio mismatch (observed split vs the configured
``canary_weight_pct``; e-value ``>= 1 / srm_alpha``, the product over stages) and otherwise says
ADVANCE (it never holds a stage back on its own: the gate advances only when every assessment says
ADVANCE).

With ``analysis.segments`` every metric and the SRM check run again on each listed segment's window
(``Snapshot.segments``), each scope at its share of the budget (:meth:`ErrorBudget.for_segment`) and with
its own carried state; the assessments name their segment (``MetricAssessment.segment``). A segment
without stable traffic waits (CONTINUE, never HALT); one that need not show non-inferiority (below
``min_share`` of the canary requests, or ``require_each: false``) says ADVANCE while undecided, so only
its regressions count; enough canary requests and none in a listed segment is an extra HALT named
``segments``.

Metric kinds:

``error_rate``
    label e-process on errors, exposure = requests, alternative = rate ratio ``1 + mde``.
``kpi``
    label e-process on KPI events per request; if ``higher_is_better`` the harmful direction is a
    *lower* canary rate, so the roles of the versions swap (``theta = stable rate / canary rate``,
    tolerance ``1 / (1 - tolerance)``, design effect ``1 / (1 - mde)``). With an ``outcome`` (a business
    outcome sent as late feedback), the events are the requests that had it and the exposure the served
    requests older than ``label_delay``, as for ``prediction_quality``.
``latency``
    label e-process on exceedances of a fixed threshold (a histogram bucket bound), exposure = latency
    observations. With ``threshold_ms`` that bound is used (it must be a bucket bound, else HALT). With
    only ``quantile`` the largest bound at or below the *pooled* (canary + stable) ``quantile``
    of the first stage's window is used and then carried unchanged in the state. Pooling makes the
    choice blind to the labels the test looks at (under the null, labels are exchangeable given the
    pooled histogram), and fixing it after the first stage makes later stages' evidence use a
    pre-registered threshold. Within the first stage the choice can still move between neighbouring
    bounds as data arrive; it stabilises quickly and the A/A simulations include it. With
    ``quantile <= 0.5`` and log-latency sums on both versions, a broad shift is tested instead: the
    normal-mixture mSPRT on mean log-latency (:mod:`canary.stats.msprt`) with a burn-in.
``prediction_quality``
    label e-process on wrong predictions among the requests whose ground-truth label has arrived,
    exposure = labelled requests, counted only for requests older than the metric's ``label_delay``
    (the backend's window for labels ends that long before the look), so early looks are not biased
    toward requests whose labels come fast.
``prediction_distribution``
    confidence sequence on the total-variation distance from per-bin beta-binomial e-processes
    (:mod:`canary.stats.distribution`): ROLLBACK when its lower bound at the metric's rollback level
    ``(alpha - srm_alpha) w_i`` exceeds the tolerance, ADVANCE when its upper bound at level ``alpha``
    is within it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from canary.policy.analysis import MetricAssessment
from canary.policy.decisions import Decision
from canary.policy.evidence import Snapshot, VersionStats
from canary.spec.model import AnalysisSpec, MetricKind, MetricSpec, RolloutSpec
from canary.stats import distribution, label, msprt, srm
from canary.stats.budget import ErrorBudget, error_budget

STATE_VERSION = 1
#: Pooled latency observations (in units of 1 / (1 - quantile)) needed before a threshold is chosen:
#: about 20 expected exceedances.
THRESHOLD_MIN_EXCEEDANCES = 20
#: The design effect of a harmful-direction KPI is capped here (a 100% drop is not a ratio).
_MAX_RELATIVE_DROP = 0.95


def _finite(x: float | None) -> float | None:
    """Return ``x`` for JSON, with inf/nan as None."""
    if x is None or math.isnan(x) or math.isinf(x):
        return None
    return float(x)


def _e_value(log_e: float) -> float | None:
    return _finite(math.exp(log_e)) if log_e < 700 else None


@dataclass(frozen=True, kw_only=True)
class MetricCarry:
    """Evidence of one metric from completed stages.

    ``periods`` holds ``(canary_events, stable_events, canary_exposure, stable_exposure)`` per
    completed stage for the label tests; ``threshold_ms`` the latency threshold once fixed;
    ``precision_sum``/``precision``/``canary_obs``/``stable_obs`` the pooled mSPRT terms;
    ``bins_canary``/``bins_stable`` the summed prediction bins.
    """

    name: str
    periods: tuple[tuple[float, float, float, float], ...] = ()
    threshold_ms: float | None = None
    precision_sum: float = 0.0
    precision: float = 0.0
    canary_obs: int = 0
    stable_obs: int = 0
    bins_canary: tuple[int, ...] = ()
    bins_stable: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "periods": [list(p) for p in self.periods], "threshold_ms": self.threshold_ms,
                "precision_sum": self.precision_sum, "precision": self.precision, "canary_obs": self.canary_obs,
                "stable_obs": self.stable_obs, "bins_canary": list(self.bins_canary),
                "bins_stable": list(self.bins_stable)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricCarry:
        thr = data.get("threshold_ms")
        return cls(name=str(data["name"]),
                   periods=tuple(tuple(float(v) for v in p) for p in data.get("periods", ())),  # type: ignore[misc]
                   threshold_ms=None if thr is None else float(thr),
                   precision_sum=float(data.get("precision_sum", 0.0)), precision=float(data.get("precision", 0.0)),
                   canary_obs=int(data.get("canary_obs", 0)), stable_obs=int(data.get("stable_obs", 0)),
                   bins_canary=tuple(int(v) for v in data.get("bins_canary", ())),
                   bins_stable=tuple(int(v) for v in data.get("bins_stable", ())))


@dataclass(frozen=True, kw_only=True)
class SequentialState:
    """Carry-over state of :class:`SequentialAnalyzer`: previous stages' sufficient statistics.

    Small, immutable and JSON-able (:meth:`to_dict` / :meth:`from_dict`); it travels in trigger
    kwargs and events.
    """

    stages: int = 0
    srm_log_e: float = 0.0
    metrics: tuple[MetricCarry, ...] = ()
    #: Each segment's own state (``analysis.segments``), by segment value.
    segments: tuple[tuple[str, SequentialState], ...] = ()
    version: int = STATE_VERSION

    def metric(self, name: str) -> MetricCarry:
        for m in self.metrics:
            if m.name == name:
                return m
        return MetricCarry(name=name)

    def segment(self, value: str) -> SequentialState:
        """Return the state carried for segment ``value`` (the initial state before its first stage)."""
        for v, state in self.segments:
            if v == value:
                return state
        return SequentialState()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": self.version, "stages": self.stages, "srm_log_e": self.srm_log_e,
                             "metrics": [m.to_dict() for m in self.metrics]}
        if self.segments:
            d["segments"] = {v: state.to_dict() for v, state in self.segments}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SequentialState:
        """Rebuild a state (``None`` or ``{}`` give the initial state); raise ValueError if foreign."""
        if not data:
            return cls()
        version = int(data.get("version", -1))
        if version != STATE_VERSION:
            raise ValueError(f"sequential state version {version} is not {STATE_VERSION}: {dict(data)!r}")
        return cls(stages=int(data["stages"]), srm_log_e=float(data["srm_log_e"]),
                   metrics=tuple(MetricCarry.from_dict(m) for m in data.get("metrics", ())),
                   segments=tuple((str(v), cls.from_dict(state)) for v, state in (data.get("segments") or {}).items()))


@dataclass(frozen=True, kw_only=True)
class CountOrientation:
    """How a count metric maps onto the label test (``harm`` = the version whose excess is harmful)."""

    canary_is_harm: bool
    tolerance_ratio: float  # largest acceptable theta (harm rate / other rate)
    design_ratio: float  # theta at the minimum detectable effect


def count_orientation(metric: MetricSpec) -> CountOrientation:
    """Return the label-test orientation of an error, exceedance or KPI metric."""
    if metric.kind is MetricKind.KPI and metric.higher_is_better:
        tol = min(metric.tolerance, _MAX_RELATIVE_DROP)
        mde = max(min(metric.effective_mde, _MAX_RELATIVE_DROP), tol)
        return CountOrientation(canary_is_harm=False, tolerance_ratio=1.0 / (1.0 - tol),
                                design_ratio=1.0 / (1.0 - mde))
    return CountOrientation(canary_is_harm=True, tolerance_ratio=1.0 + metric.tolerance,
                            design_ratio=1.0 + metric.effective_mde)


@dataclass(frozen=True)
class LabelVerdict:
    """Outcome of the label test on a list of periods (harm orientation)."""

    log_e: float
    ni_log_e: float
    lower: float  # lower bound on theta (harm orientation) at the rollback level
    upper: float  # upper bound on theta at the promotion level
    estimate: float | None


def label_verdict(periods: Sequence[tuple[float, float, float, float]], orient: CountOrientation,
                  log_rollback: float, log_promote: float, *, bounds: bool = True) -> LabelVerdict:
    """Evaluate the regression e-process, the non-inferiority e-process and the rate-ratio CS.

    ``periods`` are ``(harm_events, other_events, harm_exposure, other_exposure)``. The regression
    e-process mixes ``theta = exp(u)`` around ``log design_ratio`` against ``theta = 1``; the
    non-inferiority one mixes ``theta = tolerance_ratio exp(-u)`` around ``log tolerance_ratio`` (a
    healthy canary) against ``theta = tolerance_ratio``. The CS inverts the same two families.
    """
    per = [(xh, xo, nh / (nh + no)) for xh, xo, nh, no in periods if nh > 0 and no > 0]
    prior_rb = label.GridPrior.around(math.log(orient.design_ratio))
    prior_ni = label.GridPrior.around(math.log(orient.tolerance_ratio))
    log_e = label.log_mixture(per, 1.0, prior_rb, +1)
    ni_log_e = label.log_mixture(per, orient.tolerance_ratio, prior_ni, -1)
    lower = upper = math.nan
    if bounds:
        lower = label.confidence_bound(per, prior_rb, log_rollback, "lower")
        upper = label.confidence_bound(per, prior_ni, log_promote, "upper")
    xh = sum(p[0] for p in periods)
    xo = sum(p[1] for p in periods)
    nh = sum(p[2] for p in periods)
    no = sum(p[3] for p in periods)
    estimate = (xh / nh) / (xo / no) if nh > 0 and no > 0 and xo > 0 else None
    return LabelVerdict(log_e=log_e, ni_log_e=ni_log_e, lower=lower, upper=upper, estimate=estimate)


def floor_bound_ms(buckets_ms: Sequence[float], target_ms: float) -> float:
    """Return the largest finite bucket bound at or below ``target_ms`` (the smallest bound if none is).

    Flooring (rather than rounding to the nearest bound) guarantees that at least the ``1 - q`` tail
    of the pooled histogram exceeds the threshold: a threshold above every observation would carry
    no evidence at all, and non-inferiority could then never be shown.
    """
    finite = sorted(b for b in buckets_ms if math.isfinite(b) and b > 0)
    if not finite:
        raise ValueError(f"no finite latency bucket bounds in {tuple(buckets_ms)}")
    below = [b for b in finite if b <= target_ms]
    return below[-1] if below else finite[0]


def pooled_quantile_ms(stable: VersionStats, canary: VersionStats, q: float) -> float | None:
    """Return the ``q`` quantile of the pooled (label-blind) latency histogram of both versions."""
    if stable.latency_buckets_ms != canary.latency_buckets_ms:
        raise ValueError("canary and stable latency histograms have different buckets")
    pooled = VersionStats(version="pooled", latency_buckets_ms=stable.latency_buckets_ms,
                          latency_cumulative=tuple(a + b for a, b in zip(stable.latency_cumulative,
                                                                         canary.latency_cumulative, strict=True)))
    return pooled.latency_quantile_ms(q)


@dataclass
class _Ctx:
    spec: RolloutSpec
    window: Snapshot
    weight_pct: int
    carry: SequentialState
    budget: ErrorBudget
    in_segment: bool = False
    new_metrics: list[MetricCarry] = field(default_factory=list)


class SequentialAnalyzer:
    """Anytime-valid comparison of canary with stable (implements :class:`canary.policy.analysis.Analyzer`).

    Every level comes from the spec's error budget (:func:`canary.stats.budget.error_budget`).
    """

    def assess(self, spec: RolloutSpec, window: Snapshot, *, canary_weight_pct: int,
               state: Mapping[str, Any] | None) -> tuple[list[MetricAssessment], dict[str, Any]]:
        """Return one assessment per metric plus ``srm``, overall then per segment, and the state to carry.

        With ``analysis.segments`` every metric and the SRM check run again on each segment's window, at the
        segment's level of the error budget, each with its own carried evidence. A segment's assessment
        names it (``segment``); one that need not show non-inferiority (``require_each: false``, or less
        than ``min_share`` of the canary requests) says ADVANCE while it is undecided, so that only its
        regressions count.
        """
        carry = SequentialState.from_dict(state)
        budget = error_budget(spec.analysis)
        out, new_state = self._assess_scope(spec, window, canary_weight_pct, carry, budget, in_segment=False)
        segments = spec.analysis.segments
        if segments is not None:
            seg_budget, seg_states = budget.for_segment(), []
            for value in segments.values:
                sub = window.segments.get(value) or _empty_like(window)
                found, seg_state = self._assess_scope(spec, sub, canary_weight_pct, carry.segment(value), seg_budget,
                                                      in_segment=True)
                share = sub.canary.requests / window.canary.requests if window.canary.requests else 0.0
                required = segments.require_each and share >= segments.min_share
                out += [_in_segment(a, segments.label(value), share, required, segments.min_share) for a in found]
                seg_states.append((value, seg_state))
            new_state = replace(new_state, segments=tuple(seg_states))
            unsegmented = _unsegmented(spec, window)
            if unsegmented is not None:
                out.append(unsegmented)
        return out, new_state.to_dict()

    def _assess_scope(self, spec: RolloutSpec, window: Snapshot, weight_pct: int, carry: SequentialState,
                      budget: ErrorBudget, *, in_segment: bool) -> tuple[list[MetricAssessment], SequentialState]:
        ctx = _Ctx(spec=spec, window=window, weight_pct=weight_pct, carry=carry, budget=budget, in_segment=in_segment)
        out = [self._assess_metric(ctx, metric) for metric in spec.analysis.metrics]
        srm_assessment, srm_log_e = self._assess_srm(ctx)
        out.append(srm_assessment)
        return out, SequentialState(stages=carry.stages + 1, srm_log_e=srm_log_e, metrics=tuple(ctx.new_metrics))

    # -- metrics -------------------------------------------------------------------------------------

    def _assess_metric(self, ctx: _Ctx, metric: MetricSpec) -> MetricAssessment:
        a_rollback, a_promote = ctx.budget.metric(metric.name), ctx.budget.promote_alpha
        log_rollback = math.log(1.0 / a_rollback)
        log_promote = math.log(1.0 / a_promote)
        carry = ctx.carry.metric(metric.name)
        w = ctx.window

        def verdict(decision: Decision, reason: str, evidence: Mapping[str, Any]) -> MetricAssessment:
            return MetricAssessment(metric=metric.name, kind=metric.kind.value, decision=decision,
                                    reason=reason, evidence=dict(evidence))

        no_control = w.stable.requests == 0
        if no_control and w.canary.requests > 0 and ctx.weight_pct < 100:
            ctx.new_metrics.append(carry)
            ev = {"canary_requests": w.canary.requests, "stable_requests": 0}
            if ctx.in_segment:  # the overall test halts on missing stable traffic; a segment waits for it
                return verdict(Decision.CONTINUE, "no stable traffic in the segment yet", ev)
            return verdict(Decision.HALT, "no stable traffic in the window to compare with", ev)

        if metric.kind in (MetricKind.ERROR_RATE, MetricKind.KPI, MetricKind.PREDICTION_QUALITY):
            return self._count_metric(ctx, metric, carry, log_rollback, log_promote, verdict)
        if metric.kind is MetricKind.LATENCY:
            return self._latency_metric(ctx, metric, carry, log_rollback, log_promote, verdict)
        if metric.kind is MetricKind.PREDICTION_DISTRIBUTION:
            return self._prediction_metric(ctx, metric, carry, a_rollback, a_promote, verdict)
        raise ValueError(f"unknown metric kind {metric.kind!r}")  # the spec validates kinds

    def _label_assessment(self, ctx: _Ctx, metric: MetricSpec, carry: MetricCarry,
                          period: tuple[float, float, float, float] | None, log_rollback: float,
                          log_promote: float, verdict: Any, extra: Mapping[str, Any]) -> MetricAssessment:
        """Run the label test on carried periods plus this stage's ``period`` (canary, stable order)."""
        orient = count_orientation(metric)
        periods = list(carry.periods)
        if period is not None and period[2] > 0 and period[3] > 0:
            periods.append(period)
        ctx.new_metrics.append(replace(carry, periods=tuple(periods)))

        def harm(p: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
            return p if orient.canary_is_harm else (p[1], p[0], p[3], p[2])

        res = label_verdict([harm(p) for p in periods], orient, log_rollback, log_promote)
        # Report the canary/stable ratio whatever the harmful direction.
        if orient.canary_is_harm:
            lo, hi, est, tol_ratio = res.lower, res.upper, res.estimate, orient.tolerance_ratio
        else:
            lo = 1.0 / res.upper if res.upper > 0 else math.inf
            hi = 1.0 / res.lower if res.lower > 0 else math.inf
            est = 1.0 / res.estimate if res.estimate else None
            tol_ratio = 1.0 / orient.tolerance_ratio
        ev = {"test": "label", "log_e_value": res.log_e, "e_value": _e_value(res.log_e),
              "threshold": math.exp(log_rollback), "ni_log_e_value": res.ni_log_e,
              "ni_threshold": math.exp(log_promote), "ratio_estimate": _finite(est),
              "ratio_lower": _finite(lo), "ratio_upper": _finite(hi), "tolerance_ratio": tol_ratio,
              "canary_events": int(sum(p[0] for p in periods)), "stable_events": int(sum(p[1] for p in periods)),
              "canary_exposure": int(sum(p[2] for p in periods)), "stable_exposure": int(sum(p[3] for p in periods)),
              "stages": len(periods), **extra}
        direction = "below" if not orient.canary_is_harm else "above"
        if res.log_e >= log_rollback:
            return verdict(Decision.ROLLBACK, f"e-value {math.exp(min(res.log_e, 700)):.3g} >= "
                           f"{math.exp(log_rollback):.3g}: canary/stable ratio {direction} 1 "
                           f"(CS bound {_fmt(lo if orient.canary_is_harm else hi)})", ev)
        if ctx.window.stable.requests == 0 and ctx.weight_pct >= 100:
            if res.ni_log_e >= log_promote:
                return verdict(Decision.ADVANCE, "no control traffic at 100%; non-inferiority was shown by "
                               "earlier stages", ev)
            return verdict(Decision.HALT, "no control traffic at 100% and earlier stages did not show "
                           "non-inferiority", ev)
        if res.ni_log_e >= log_promote:
            bound = hi if orient.canary_is_harm else lo
            return verdict(Decision.ADVANCE, f"non-inferior: canary/stable ratio CS bound {_fmt(bound)} within "
                           f"{tol_ratio:.3g}", ev)
        return verdict(Decision.CONTINUE, f"not yet conclusive (ratio CS [{_fmt(lo)}, {_fmt(hi)}])", ev)

    def _count_metric(self, ctx: _Ctx, metric: MetricSpec, carry: MetricCarry, log_rollback: float,
                      log_promote: float, verdict: Any) -> MetricAssessment:
        s, c = ctx.window.stable, ctx.window.canary
        extra: dict[str, Any] = {}
        if metric.kind is MetricKind.ERROR_RATE:
            period = (float(c.errors), float(s.errors), float(c.requests), float(s.requests))
        elif metric.kind is MetricKind.PREDICTION_QUALITY:
            # Only labelled requests (old enough for label_delay) are exposure: a wrong prediction is the event.
            period = (float(c.wrong), float(s.wrong), float(c.labelled), float(s.labelled))
            extra = {"label_delay_s": metric.label_delay_s, "canary_labelled": c.labelled,
                     "stable_labelled": s.labelled}
        elif metric.outcome is not None:
            # A business outcome sent as feedback: exposure is the served requests old enough for it to arrive.
            name = metric.outcome
            period = (float(c.outcome_events(name)), float(s.outcome_events(name)), float(c.aged), float(s.aged))
            extra = {"label_delay_s": metric.label_delay_s, "outcome": name}
        else:
            period = (float(c.kpi_events), float(s.kpi_events), float(c.requests), float(s.requests))
        return self._label_assessment(ctx, metric, carry, period, log_rollback, log_promote, verdict, extra)

    def _latency_metric(self, ctx: _Ctx, metric: MetricSpec, carry: MetricCarry, log_rollback: float,
                        log_promote: float, verdict: Any) -> MetricAssessment:
        s, c = ctx.window.stable, ctx.window.canary
        for v in (s, c):
            if v.requests > 0 and v.latency_observations == 0:
                ctx.new_metrics.append(carry)
                return verdict(Decision.HALT, f"no latency observations for {v.version} while it served "
                               f"{v.requests} requests", {"requests": v.requests})
        if s.latency_buckets_ms != c.latency_buckets_ms:
            ctx.new_metrics.append(carry)
            return verdict(Decision.HALT, "canary and stable latency histograms have different buckets", {})
        use_msprt = (metric.threshold_ms is None and metric.quantile is not None and metric.quantile <= 0.5
                     and s.log_latency_sum is not None and c.log_latency_sum is not None
                     and s.log_latency_sumsq is not None and c.log_latency_sumsq is not None)
        if use_msprt:
            return self._mean_log_latency(ctx, metric, carry, log_rollback, verdict)
        threshold = carry.threshold_ms
        chosen = "carried"
        if metric.threshold_ms is not None:
            threshold, chosen = metric.threshold_ms, "spec"
            if threshold not in s.latency_buckets_ms:
                ctx.new_metrics.append(carry)
                bounds = [b for b in s.latency_buckets_ms if math.isfinite(b)]
                return verdict(Decision.HALT, f"threshold_ms {threshold:g} is not a latency bucket bound "
                               f"{bounds}: exceedances cannot be counted", {"threshold_ms": threshold})
        elif threshold is None:
            if not any(math.isfinite(b) for b in s.latency_buckets_ms):
                ctx.new_metrics.append(carry)
                return verdict(Decision.HALT, "the metrics backend has no latency histogram (only a count): "
                               "configure exceedance counters or set threshold_ms on a bound it has", {})
            q = metric.quantile if metric.quantile is not None else 0.99
            pooled_obs = s.latency_observations + c.latency_observations
            needed = THRESHOLD_MIN_EXCEEDANCES / (1.0 - q)
            if pooled_obs < needed:
                ctx.new_metrics.append(carry)
                return verdict(Decision.CONTINUE, f"{pooled_obs} latency observations, {math.ceil(needed)} needed "
                               f"to fix the p{q * 100:g} threshold", {"latency_observations": pooled_obs})
            target = pooled_quantile_ms(s, c, q)
            threshold = floor_bound_ms(s.latency_buckets_ms, target if target is not None else 0.0)
            chosen = f"pooled p{q * 100:g} of the first stage ({_fmt(target)} ms)"
        carry = replace(carry, threshold_ms=threshold)
        period = (float(c.latency_exceedances(threshold)), float(s.latency_exceedances(threshold)),
                  float(c.latency_observations), float(s.latency_observations))
        return self._label_assessment(ctx, metric, carry, period, log_rollback, log_promote, verdict,
                                      {"threshold_ms": threshold, "threshold_from": chosen})

    def _mean_log_latency(self, ctx: _Ctx, metric: MetricSpec, carry: MetricCarry, log_rollback: float,
                          verdict: Any) -> MetricAssessment:
        s, c = ctx.window.stable, ctx.window.canary
        alpha = ctx.budget.promote_alpha
        ps, pi = carry.precision_sum, carry.precision
        n_c, n_s = carry.canary_obs + c.latency_observations, carry.stable_obs + s.latency_observations
        if c.latency_observations >= 2 and s.latency_observations >= 2:
            ds, di = msprt.precision_terms(c.latency_observations, c.log_latency_sum or 0.0,
                                           c.log_latency_sumsq or 0.0, s.latency_observations,
                                           s.log_latency_sum or 0.0, s.log_latency_sumsq or 0.0)
            ps, pi = ps + ds, pi + di
        ctx.new_metrics.append(replace(carry, precision_sum=ps, precision=pi, canary_obs=n_c, stable_obs=n_s))
        tau = math.log1p(metric.effective_mde)
        ev: dict[str, Any] = {"test": "msprt_mean_log_latency", "canary_observations": n_c,
                              "stable_observations": n_s, "burn_in": msprt.BURN_IN_OBSERVATIONS,
                              "threshold": math.exp(log_rollback), "tolerance_ratio": 1.0 + metric.tolerance}
        if min(n_c, n_s) < msprt.BURN_IN_OBSERVATIONS or pi <= 0:
            return verdict(Decision.CONTINUE, f"burn-in: {min(n_c, n_s)} < {msprt.BURN_IN_OBSERVATIONS} latency "
                           "observations per version", ev)
        delta, var = ps / pi, 1.0 / pi
        log_e = float(msprt.log_one_sided_mixture(delta, var, tau))
        r_rb = float(msprt.confidence_radius(var, tau, math.exp(-log_rollback)))
        r_pr = float(msprt.confidence_radius(var, tau, alpha))
        ev.update({"log_e_value": log_e, "e_value": _e_value(log_e), "ratio_estimate": math.exp(delta),
                   "ratio_lower": math.exp(delta - r_rb), "ratio_upper": math.exp(delta + r_pr)})
        if log_e >= log_rollback:
            return verdict(Decision.ROLLBACK, f"e-value {math.exp(min(log_e, 700)):.3g} >= {math.exp(log_rollback):.3g}:"
                           f" geometric-mean latency ratio {math.exp(delta):.3f}", ev)
        if delta + r_pr <= math.log1p(metric.tolerance):
            return verdict(Decision.ADVANCE, f"non-inferior: geometric-mean latency ratio <= "
                           f"{math.exp(delta + r_pr):.3f} within {1 + metric.tolerance:g}", ev)
        return verdict(Decision.CONTINUE, f"not yet conclusive (ratio {math.exp(delta):.3f}, CS upper "
                       f"{math.exp(delta + r_pr):.3f})", ev)

    def _prediction_metric(self, ctx: _Ctx, metric: MetricSpec, carry: MetricCarry, a_rollback: float,
                           a_promote: float, verdict: Any) -> MetricAssessment:
        s, c = ctx.window.stable, ctx.window.canary
        k = len(c.prediction_bins)
        bins_c = carry.bins_canary or (0,) * k
        bins_s = carry.bins_stable or (0,) * k
        if len(bins_c) != k or len(s.prediction_bins) != k:
            ctx.new_metrics.append(carry)
            return verdict(Decision.HALT, f"prediction bins changed size ({len(bins_c)} carried, {k} canary, "
                           f"{len(s.prediction_bins)} stable)", {})
        bins_c = tuple(a + b for a, b in zip(bins_c, c.prediction_bins, strict=True))
        bins_s = tuple(a + b for a, b in zip(bins_s, s.prediction_bins, strict=True))
        ctx.new_metrics.append(replace(carry, bins_canary=bins_c, bins_stable=bins_s))
        n_c, n_s = sum(bins_c), sum(bins_s)
        for v, n_now in ((c, sum(c.prediction_bins)), (s, sum(s.prediction_bins))):
            if v.requests - v.errors > 0 and n_now == 0 and not (v is s and ctx.weight_pct >= 100):
                return verdict(Decision.HALT, f"no predictions recorded for {v.version} while it served "
                               f"{v.requests} requests", {"requests": v.requests})
        import numpy as np

        lo_rb, _ = distribution.tv_bounds(np.array(bins_c), np.array(bins_s), a_rollback)
        _, hi_pr = distribution.tv_bounds(np.array(bins_c), np.array(bins_s), a_promote)
        tv_hat = 0.5 * sum(abs(a / n_c - b / n_s) for a, b in zip(bins_c, bins_s, strict=True)) \
            if n_c and n_s else None
        ev = {"test": "tv_confidence_sequence", "tv_estimate": _finite(tv_hat), "tv_lower": float(lo_rb),
              "tv_upper": float(hi_pr), "tolerance": metric.tolerance, "rollback_level": a_rollback,
              "promote_level": a_promote, "canary_predictions": n_c, "stable_predictions": n_s}
        if float(lo_rb) > metric.tolerance:
            return verdict(Decision.ROLLBACK, f"prediction distribution moved: TV >= {float(lo_rb):.3f} > "
                           f"{metric.tolerance:g}", ev)
        if ctx.window.stable.requests == 0 and ctx.weight_pct >= 100 and float(hi_pr) > metric.tolerance:
            return verdict(Decision.HALT, "no control traffic at 100% and earlier stages did not bound the shift", ev)
        if float(hi_pr) <= metric.tolerance:
            return verdict(Decision.ADVANCE, f"prediction shift TV <= {float(hi_pr):.3f} within {metric.tolerance:g}", ev)
        return verdict(Decision.CONTINUE, f"not yet conclusive (TV in [{float(lo_rb):.3f}, {float(hi_pr):.3f}])", ev)

    # -- traffic split -------------------------------------------------------------------------------

    def _assess_srm(self, ctx: _Ctx) -> tuple[MetricAssessment, float]:
        alpha = ctx.budget.srm_alpha
        s, c = ctx.window.stable, ctx.window.canary
        w = ctx.weight_pct / 100.0
        log_e = ctx.carry.srm_log_e
        if 0.0 < w < 1.0:
            log_e += float(srm.log_e_value(c.requests, s.requests, w))
        total = s.requests + c.requests
        ev = {"test": "srm", "log_e_value": log_e, "e_value": _e_value(log_e), "threshold": 1.0 / alpha,
              "srm_alpha": alpha,
              "configured_weight_pct": ctx.weight_pct, "canary_requests": c.requests, "stable_requests": s.requests,
              "observed_weight_pct": (100.0 * c.requests / total) if total else None}
        if log_e >= ctx.budget.log_srm_threshold:
            decision, reason = Decision.HALT, (f"sample-ratio mismatch: observed {ev['observed_weight_pct']:.2f}% "
                                               f"canary vs configured {ctx.weight_pct}% (e-value "
                                               f"{math.exp(min(log_e, 700)):.3g} >= {1 / alpha:.3g})")
        else:
            # ADVANCE = "nothing against advancing": the gate advances only when every assessment does.
            decision, reason = Decision.ADVANCE, "traffic split consistent with the configured weight"
        return MetricAssessment(metric="srm", kind="srm", decision=decision, reason=reason, evidence=ev), log_e


def unsegmented_halt_min_requests(analysis: AnalysisSpec) -> int:
    """Return the canary requests after which none in a listed segment is a HALT (:func:`_unsegmented`).

    ``guardrails.min_requests``, at least 1: before any canary request, no segment can have one.
    Replay applies the same threshold to every row.
    """
    return max(analysis.guardrails.min_requests, 1)


def _unsegmented(spec: RolloutSpec, window: Snapshot) -> MetricAssessment | None:
    """HALT when the canary has served enough requests and none of them is in a listed segment.

    That is a misconfiguration (clients do not send the attribute, or its values are spelled otherwise),
    never "healthy segments": the segment tests would have nothing to look at.
    """
    segments = spec.analysis.segments
    assert segments is not None
    enough = unsegmented_halt_min_requests(spec.analysis)
    in_segments = sum(seg.canary.requests for seg in window.segments.values())
    if window.canary.requests < enough or in_segments > 0:
        return None
    return MetricAssessment(
        metric="segments", kind="segments", decision=Decision.HALT,
        reason=(f"none of {window.canary.requests} canary requests has {segments.by} in {segments.values}: check "
                f"that clients send the attribute {segments.by!r} with these values (analysis.segments)"),
        evidence={"canary_requests": window.canary.requests, "in_segments": 0, "by": segments.by,
                  "values": list(segments.values)})


def _empty_like(window: Snapshot) -> Snapshot:
    """Return a window with no requests, for a segment the backend saw none of."""
    return Snapshot(stable=VersionStats(version=window.stable.version), canary=VersionStats(version=window.canary.version),
                    start_s=window.start_s, end_s=window.end_s)


def _in_segment(a: MetricAssessment, segment: str, share: float, required: bool, min_share: float) -> MetricAssessment:
    """Name the segment of an assessment; an undecided one that need not show non-inferiority says ADVANCE."""
    evidence = {**a.evidence, "segment": segment, "canary_share": share, "required": required}
    if required or a.decision is not Decision.CONTINUE:
        return replace(a, segment=segment, evidence=evidence)
    why = (f"{share:.1%} of canary requests, below min_share {min_share:.0%}" if share < min_share
           else "segments need not show non-inferiority (require_each: false)")
    return replace(a, segment=segment, evidence=evidence, decision=Decision.ADVANCE,
                   reason=f"not required to advance ({why}); {a.reason}")


def _fmt(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}"
