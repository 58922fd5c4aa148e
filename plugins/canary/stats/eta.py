"""Time to a decision: how long until a stage's gate decides, estimated from one look's evidence.

For people watching a rollout (the observe log, the rollout page), never for a decision: the gate
decides from the evidence alone. The estimate extrapolates the evidence along its expected path, as
the planner (:mod:`canary.stats.plan`) does, but with the rates observed so far instead of assumed
baselines: more canary requests at the current request rate, with the current event rates.

* label tests (error rate, KPI, latency exceedances): the label log likelihood ratio of every grid
  point of the mixture is linear in the event counts (:func:`canary.stats.label.period_log_lr`), so
  the mixture e-value after ``f`` times the exposure is ``logsumexp(f * llr_k + log w_k)``; the
  first ``f`` at which the regression e-value reaches its threshold (rollback) or the
  non-inferiority e-value reaches its own (advance) is found on a grid of future times, one
  vectorised evaluation for all of them. Carried stages are pooled into one period (an
  approximation: their canary share differed).
* mean-log-latency mSPRT and the prediction-distribution confidence sequence: the confidence
  sequence's half-widths shrink like ``1 / sqrt(n)`` around the current estimate (this ignores the
  slowly growing log factor, so it is a little optimistic).

The stage decides at the first of: any metric reaching rollback; every metric reaching advance with
the bake time and minimum requests reached; the stage's maximum duration. The estimate is None when
there is nothing to extrapolate from (no canary requests yet: warm-up, no data, an empty window).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from canary.spec.model import MetricKind, MetricSpec, RolloutSpec, StageSpec
from canary.stats import label
from canary.stats.analyzer import count_orientation

#: Future times evaluated between now and the stage's deadline (the estimate's resolution is
#: 1/GRID_POINTS of the time left).
GRID_POINTS = 240

_TERMINAL = ("advance", "rollback", "halt", "timeout")


def _label_times(metric: MetricSpec, ev: Mapping[str, Any], future_exposure: np.ndarray) -> tuple[
        float | None, float | None]:
    """Return the indices (into ``future_exposure``) at which rollback and advance are first reached."""
    ce, se = float(ev.get("canary_events") or 0), float(ev.get("stable_events") or 0)
    cx, sx = float(ev.get("canary_exposure") or 0), float(ev.get("stable_exposure") or 0)
    threshold, ni_threshold = ev.get("threshold"), ev.get("ni_threshold")
    if cx <= 0 or sx <= 0 or ce + se <= 0 or not threshold or not ni_threshold:
        return None, None  # no events yet: the label test has nothing to extrapolate
    orient = count_orientation(metric)
    if orient.canary_is_harm:
        xh, xo, rho = ce, se, cx / (cx + sx)
    else:
        xh, xo, rho = se, ce, sx / (cx + sx)
    scale = (cx + future_exposure) / cx  # exposure grows by canary requests, stable in proportion

    def first(theta0: float, design: float, direction: int, log_level: float) -> float | None:
        prior = label.GridPrior.around(math.log(design))
        thetas = theta0 * np.exp(direction * prior.log_effects)
        llr = label.period_log_lr(thetas, xh, xo, rho) - label.period_log_lr(theta0, xh, xo, rho)
        grown = scale[:, None] * llr[None, :] + prior.log_weights[None, :]
        peak = grown.max(axis=1)
        log_e = peak + np.log(np.exp(grown - peak[:, None]).sum(axis=1))
        hit = np.nonzero(log_e >= log_level)[0]
        return None if hit.size == 0 else float(hit[0])

    rollback = first(1.0, orient.design_ratio, +1, math.log(float(threshold)))
    advance = first(orient.tolerance_ratio, orient.tolerance_ratio, -1, math.log(float(ni_threshold)))
    return rollback, advance


def _width_times(estimate: float | None, lower: float | None, upper: float | None, *, harm_above: float,
                 tolerance: float, n: float, future_n: np.ndarray, log_scale: bool) -> tuple[
        float | None, float | None]:
    """Indices at which a CS shrinking like 1/sqrt(n) excludes ``harm_above`` (rollback) or fits ``tolerance``."""
    if estimate is None or lower is None or upper is None or n <= 0:
        return None, None
    f = math.log if log_scale else float
    try:
        est, lo, hi, no_harm, tol = f(estimate), f(lower), f(upper), f(harm_above), f(tolerance)
    except ValueError:  # a bound of 0 on the log scale
        return None, None
    shrink = np.sqrt(n / (n + future_n))
    rollback_hit = np.nonzero(est - (est - lo) * shrink > no_harm)[0]
    advance_hit = np.nonzero(est + (hi - est) * shrink <= tol)[0]
    return (float(rollback_hit[0]) if rollback_hit.size else None,
            float(advance_hit[0]) if advance_hit.size else None)


def metric_decision_times(metric: MetricSpec, assessment: Mapping[str, Any],
                          future_requests: np.ndarray) -> tuple[float | None, float | None]:
    """Return grid indices at which one undecided metric would roll back and advance (None: not before the end)."""
    ev = assessment.get("evidence") or {}
    test = ev.get("test")
    if test == "label":
        return _label_times(metric, ev, future_requests)
    if test == "msprt_mean_log_latency":
        if ev.get("ratio_estimate") is None:  # burn-in: it decides nothing before it has enough observations
            return None, None
        return _width_times(ev.get("ratio_estimate"), ev.get("ratio_lower"), ev.get("ratio_upper"), harm_above=1.0,
                            tolerance=float(ev.get("tolerance_ratio") or 1.0),
                            n=float(ev.get("canary_observations") or 0), future_n=future_requests, log_scale=True)
    if test == "tv_confidence_sequence":
        return _width_times(ev.get("tv_estimate"), ev.get("tv_lower"), ev.get("tv_upper"),
                            harm_above=float(ev.get("tolerance") or 0.0), tolerance=float(ev.get("tolerance") or 0.0),
                            n=float(ev.get("canary_predictions") or 0), future_n=future_requests, log_scale=False)
    return None, None


def eta_s(spec: RolloutSpec, stage: StageSpec, evidence: Mapping[str, Any], *, decision: str) -> float | None:
    """Estimate the seconds until this stage's gate decides, from one look.

    Parameters
    ----------
    spec, stage : the frozen spec and the stage being observed.
    evidence : mapping
        The gate result's evidence (:func:`canary.policy.gate.evaluate_stage`): ``elapsed_s``,
        ``canary_requests`` and, below 100%, ``metrics`` (each assessment's ``to_dict()``).
    decision : str
        The gate's decision at this look; a terminal one gives 0.

    Returns
    -------
    float or None
        Seconds from this look, in ``[0, stage.max_duration_s - elapsed_s]``; None without canary
        requests to take a rate from.
    """
    if decision in _TERMINAL:
        return 0.0
    elapsed_s = float(evidence.get("elapsed_s") or 0.0)
    left_s = max(0.0, stage.max_duration_s - elapsed_s)
    canary_requests = float(evidence.get("canary_requests") or 0)
    window_s = elapsed_s - spec.analysis.warmup_s
    if canary_requests <= 0 or window_s <= 0:
        return None
    if left_s <= 0:
        return 0.0
    rps = canary_requests / window_s
    times_s = left_s * np.arange(1, GRID_POINTS + 1) / GRID_POINTS
    future_requests = rps * times_s

    def at(index: float | None) -> float:
        return left_s if index is None else float(times_s[int(index)])

    bake_s = max(0.0, stage.min_duration_s - elapsed_s, (stage.min_requests - canary_requests) / rps)
    by_name = {m.name: m for m in spec.analysis.metrics}
    rollback_s, advance_s = left_s, bake_s
    for assessment in evidence.get("metrics") or ():
        if assessment.get("decision") == "advance":
            continue  # shown already (the SRM check says advance unless it halted)
        metric = by_name.get(str(assessment.get("metric")))
        if metric is None:
            advance_s = left_s
            continue
        ev = assessment.get("evidence") or {}
        # A segment's test sees its share of the canary requests; a prediction_quality test the labelled
        # share of them, each label label_delay after its request; an outcome KPI every one, as late.
        growth = float(ev.get("canary_share", 1.0)) if assessment.get("segment") else 1.0
        lag_s = 0.0
        if metric.kind is MetricKind.PREDICTION_QUALITY:
            growth *= float(ev.get("canary_labelled") or 0) / canary_requests
            lag_s = metric.label_delay_s
        elif metric.uses_feedback:  # a business outcome: every served request counts, label_delay after it
            lag_s = metric.label_delay_s
        rollback_i, advance_i = metric_decision_times(metric, assessment, future_requests * growth)
        rollback_s = min(rollback_s, at(rollback_i) + (lag_s if rollback_i is not None else 0.0))
        advance_s = max(advance_s, at(advance_i) + (lag_s if advance_i is not None else 0.0))
    return round(min(rollback_s, advance_s, left_s), 3)


__all__ = ["GRID_POINTS", "eta_s", "metric_decision_times"]
