"""Planning: expected canary requests and time to a decision, per stage and metric (``canary plan``).

For the label tests the expected path is used: the canary and stable event counts after ``n`` canary
requests are replaced by their expectations and the mixture e-value (:func:`label.log_mixture`) is
evaluated on them; the smallest ``n`` at which it reaches the threshold approximates the mean number
of requests to a decision (Wald's approximation E[N] ~ log(1/alpha) / drift, here including the cost
of the mixture; the simulations in ``bench/`` show the mean is within about 15% of it). The
fixed-horizon comparison is statsmodels' ``NormalIndPower`` on the arcsine effect size of the two
rates (one-sided, power 0.9, same alpha share, the stage's stable/canary ratio).

Each stage is planned on its own (evidence carried from earlier stages only makes later stages faster).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from canary.spec.model import MetricKind, MetricSpec, RolloutSpec, StageSpec
from canary.stats import distribution, label, msprt
from canary.stats.analyzer import count_orientation
from canary.stats.budget import error_budget

_MAX_N = 1e9


@dataclass(frozen=True, kw_only=True)
class PlanRow:
    """Expected cost of one metric at one stage (requests are canary requests)."""

    stage: int
    weight_pct: int
    metric: str
    kind: str
    test: str
    rollback_alpha: float  # the metric's share of the error budget (canary.stats.budget)
    detect_requests: float | None  # to detect the MDE (rollback)
    promote_requests: float | None  # to show non-inferiority on a healthy canary
    fixed_horizon_requests: float | None  # fixed-horizon n at power 0.9 for the MDE
    detect_s: float | None
    promote_s: float | None
    stage_decision_s: float | None  # promotion also waits for min_duration and min_requests
    warning: str | None
    #: ``by=value`` for a segment's test (``analysis.segments``), None overall; its share of the traffic.
    segment: str | None = None
    segment_share: float | None = None
    #: Whether the stage waits for this test to show non-inferiority (a small segment's only rolls back).
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _solve(reached: Any) -> float | None:
    """Smallest n (to 1%) with ``reached(n)`` true, assuming monotonicity; None beyond ``_MAX_N``."""
    lo, hi = 1.0, 16.0
    while not reached(hi):
        lo, hi = hi, hi * 4
        if hi > _MAX_N:
            return None
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if reached(mid) else (mid, hi)
    return hi


def _label_costs(metric: MetricSpec, rho: float, base_rate: float, log_rb: float,
                 log_pr: float) -> tuple[float | None, float | None, float | None]:
    orient = count_orientation(metric)
    prior_rb = label.GridPrior.around(math.log(orient.design_ratio))
    prior_ni = label.GridPrior.around(math.log(orient.tolerance_ratio))
    ratio_other = (1.0 - rho) / rho  # stable exposure per canary request

    def periods(n: float, theta: float) -> list[tuple[float, float, float]]:
        # theta = harm rate / other rate; base_rate is the stable rate.
        if orient.canary_is_harm:
            return [(n * base_rate * theta, n * ratio_other * base_rate, rho)]
        return [(n * ratio_other * base_rate, n * base_rate / theta, 1.0 - rho)]

    detect = _solve(lambda n: label.log_mixture(periods(n, orient.design_ratio), 1.0, prior_rb, 1) >= log_rb)
    promote = _solve(lambda n: label.log_mixture(periods(n, 1.0), orient.tolerance_ratio, prior_ni, -1) >= log_pr)
    if orient.canary_is_harm:
        p_canary = min(base_rate * orient.design_ratio, 1.0)
    else:
        p_canary = base_rate / orient.design_ratio
    fixed = fixed_horizon_n(p_canary, base_rate, rho, math.exp(-log_rb))
    return detect, promote, fixed


def fixed_horizon_n(p_canary: float, p_stable: float, rho: float, alpha: float, power: float = 0.9) -> float | None:
    """Return the canary n of a one-sided two-proportion z-test (statsmodels, arcsine effect size)."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    effect = abs(float(proportion_effectsize(p_canary, p_stable)))
    if effect == 0:
        return None
    return float(NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power,
                                              ratio=(1.0 - rho) / rho, alternative="larger"))


def _msprt_costs(metric: MetricSpec, rho: float, sd_log: float, log_rb: float,
                 alpha: float) -> tuple[float | None, float | None, float | None]:
    tau = math.log1p(metric.effective_mde)
    delta = tau

    def var(n: float) -> float:
        return sd_log ** 2 * (1.0 / n + rho / ((1.0 - rho) * n))

    burn = float(msprt.BURN_IN_OBSERVATIONS) * max(1.0, rho / (1.0 - rho))
    detect = _solve(lambda n: float(msprt.log_one_sided_mixture(delta, var(n), tau)) >= log_rb)
    promote = _solve(lambda n: float(msprt.confidence_radius(var(n), tau, alpha)) <= math.log1p(metric.tolerance))
    from statsmodels.stats.power import NormalIndPower

    fixed = float(NormalIndPower().solve_power(effect_size=delta / sd_log, alpha=math.exp(-log_rb), power=0.9,
                                               ratio=(1.0 - rho) / rho, alternative="larger"))
    return (None if detect is None else max(detect, burn)), (None if promote is None else max(promote, burn)), fixed


def _tv_costs(metric: MetricSpec, rho: float, a_rb: float, a_pr: float,
              bins: int = 10) -> tuple[float | None, float | None, float | None]:
    base = np.full(bins, 1.0 / bins)
    shifted = base.copy()
    move = min(metric.effective_mde, 0.5)
    half = bins // 2
    shifted[:half] -= move / half
    shifted[half:] += move / (bins - half)
    shifted = np.clip(shifted, 0.0, None)
    shifted /= shifted.sum()
    ratio_other = (1.0 - rho) / rho

    def tv(n: float, canary: np.ndarray, a: float) -> tuple[float, float]:
        lo, hi = distribution.tv_bounds(np.round(n * canary), np.round(n * ratio_other * base), a)
        return float(lo), float(hi)

    detect = _solve(lambda n: tv(n, shifted, a_rb)[0] > metric.tolerance)
    promote = _solve(lambda n: tv(n, base, a_pr)[1] <= metric.tolerance)
    return detect, promote, None


def plan(spec: RolloutSpec, *, rps: float, baseline_error_rate: float = 0.01, baseline_kpi_rate: float = 0.05,
         baseline_exceedance_rate: float | None = None, log_latency_sd: float = 0.5,
         segment_shares: Mapping[str, float] | None = None, baseline_wrong_rate: float = 0.2,
         label_share: float = 1.0) -> list[PlanRow]:
    """Return one :class:`PlanRow` per compared stage (weight < 100) and metric, overall then per segment.

    Parameters
    ----------
    rps : float
        Total requests per second on the endpoint (> 0).
    baseline_error_rate, baseline_kpi_rate : float
        Stable's error rate and KPI events per request, in (0, 1).
    baseline_exceedance_rate : float or None
        Stable's share of requests above a latency metric's threshold; defaults to ``1 - quantile``.
    log_latency_sd : float
        Standard deviation of log-latency, for the mean-log-latency test.
    segment_shares : mapping or None
        With ``analysis.segments``: each segment's share of the traffic (default: equal shares); a segment
        is tested on its share of the requests at its level of the error budget.
    baseline_wrong_rate, label_share : float
        prediction_quality: stable's share of wrong predictions, and the share of requests that get a label;
        its times include the metric's ``label_delay`` (a request counts once its label can have arrived), as
        do those of a kpi metric with an ``outcome`` (every served request counts, at ``baseline_kpi_rate``).
    """
    if rps <= 0:
        raise ValueError(f"rps must be > 0, got {rps}")
    budget = error_budget(spec.analysis)
    scopes: list[tuple[str | None, float, Any, bool]] = [(None, 1.0, budget, True)]
    segments = spec.analysis.segments
    if segments is not None:
        shares = dict(segment_shares or {v: 1.0 / len(segments.values) for v in segments.values})
        unknown = sorted(set(shares) - set(segments.values))
        if unknown:
            raise ValueError(f"segment shares for {unknown}: not in analysis.segments.values {segments.values}")
        seg_budget = budget.for_segment()
        scopes += [(segments.label(v), shares.get(v, 0.0), seg_budget,
                    segments.require_each and shares.get(v, 0.0) >= segments.min_share) for v in segments.values]
    alpha = budget.promote_alpha
    rows: list[PlanRow] = []
    for idx, stage in enumerate(spec.stages):
        if stage.weight >= 100:
            continue
        rho = stage.weight / 100.0
        for segment, share, scope_budget, required in scopes:
            for m in spec.analysis.metrics:
                quality = m.kind is MetricKind.PREDICTION_QUALITY
                canary_rps = rps * rho * share * (label_share if quality else 1.0)
                a_rb = scope_budget.metric(m.name)
                test, costs = _costs(m, rho, a_rb, alpha, baseline_error_rate=baseline_wrong_rate if quality
                                     else baseline_error_rate,
                                     baseline_kpi_rate=baseline_kpi_rate,
                                     baseline_exceedance_rate=baseline_exceedance_rate, log_latency_sd=log_latency_sd)
                rows.append(_row(idx, stage, m, test, a_rb, costs, canary_rps, segment=segment,
                                 segment_share=share if segment else None, required=required,
                                 delay_s=m.label_delay_s))  # feedback metrics only (0 for the rest)
    return rows


def _costs(m: MetricSpec, rho: float, a_rb: float, alpha: float, *, baseline_error_rate: float,
           baseline_kpi_rate: float, baseline_exceedance_rate: float | None,
           log_latency_sd: float) -> tuple[str, tuple[float | None, float | None, float | None]]:
    log_rb, log_pr = math.log(1.0 / a_rb), math.log(1.0 / alpha)
    if m.kind in (MetricKind.ERROR_RATE, MetricKind.PREDICTION_QUALITY):
        return "label", _label_costs(m, rho, baseline_error_rate, log_rb, log_pr)
    if m.kind is MetricKind.KPI:
        return "label", _label_costs(m, rho, baseline_kpi_rate, log_rb, log_pr)
    if m.kind is MetricKind.LATENCY and m.threshold_ms is None and m.quantile is not None and m.quantile <= 0.5:
        return "msprt_mean_log_latency", _msprt_costs(m, rho, log_latency_sd, log_rb, alpha)
    if m.kind is MetricKind.LATENCY:
        rate = baseline_exceedance_rate if baseline_exceedance_rate is not None else (
            1.0 - (m.quantile if m.quantile is not None else 0.99))
        return "label_exceedance", _label_costs(m, rho, rate, log_rb, log_pr)
    return "tv_confidence_sequence", _tv_costs(m, rho, a_rb, alpha)


def _row(idx: int, stage: StageSpec, m: MetricSpec, test: str, rollback_alpha: float,
         costs: tuple[float | None, float | None, float | None], canary_rps: float, *, segment: str | None = None,
         segment_share: float | None = None, required: bool = True, delay_s: float = 0.0) -> PlanRow:
    detect, promote, fixed = costs

    def secs(n: float | None) -> float | None:
        return None if n is None or canary_rps <= 0 else n / canary_rps + delay_s

    decision_s = None
    if promote is not None and canary_rps > 0:
        decision_s = max(promote / canary_rps + delay_s, stage.min_duration_s, stage.min_requests / canary_rps)
    name = m.name if segment is None else f"{m.name} in segment {segment}"
    warning = None
    if not required:
        detect_s = secs(detect)
        if detect_s is None or detect_s > stage.max_duration_s:
            warning = (f"stage {idx} ({stage.weight}%): {name} ({_share(segment_share)} of the traffic) cannot "
                       f"detect its MDE within max_duration {stage.max_duration_s:.0f}s: too small a segment to "
                       "decide within the stage")
    elif decision_s is None or decision_s > stage.max_duration_s:
        need = "never" if decision_s is None else f"{decision_s:.0f}s"
        small = f" ({_share(segment_share)} of the traffic: too small a segment to decide within the stage)" \
            if segment else ""
        warning = (f"stage {idx} ({stage.weight}%): {name} needs {need} to show non-inferiority on a healthy "
                   f"canary, beyond max_duration {stage.max_duration_s:.0f}s (the stage will time out){small}")
    elif detect is None or detect / canary_rps + delay_s > stage.max_duration_s:
        warning = (f"stage {idx} ({stage.weight}%): {name} cannot detect its MDE within max_duration "
                   f"{stage.max_duration_s:.0f}s")
    return PlanRow(stage=idx, weight_pct=stage.weight, metric=m.name, kind=m.kind.value, test=test,
                   rollback_alpha=rollback_alpha,
                   detect_requests=detect, promote_requests=promote, fixed_horizon_requests=fixed,
                   detect_s=secs(detect), promote_s=secs(promote), stage_decision_s=decision_s, warning=warning,
                   segment=segment, segment_share=segment_share, required=required)


def _share(share: float | None) -> str:
    return f"{100 * (share or 0.0):.0f}%"
