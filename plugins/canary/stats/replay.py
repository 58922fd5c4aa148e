"""Backtest a spec's decision policy on recorded per-version counts (``canary replay``).

Input: a CSV with one row per (run, t, version) holding counts *since the previous row* of that run
and version, read and checked by :mod:`canary.stats.replay_input`. The analysis is evaluated at every distinct row time of
every run, as the observe tasks of all stages would see it: a *stage* is a maximal stretch of equal
``weight`` (the whole run without a ``weight`` column; then the SRM check is skipped), its window
starts ``analysis.warmup`` after its first row, and the state of :class:`SequentialAnalyzer` is carried
from each stage's last evaluation to the next stage.

Each stretch takes the rules of the spec stage with the same weight (the first such stage; without
a ``weight`` column, or before the first weight of a run, the spec's first stage; a weight that no
spec stage has takes the largest ``min_duration`` and ``min_requests`` of the spec and no deadline;
a weight of 0 is no canary stage and takes no rules). The stage rules are the live gate's own
(:mod:`canary.policy.stage_rules`, which :func:`canary.policy.gate.evaluate_stage` calls too), applied to every row at
once with ``elapsed`` = time since the stretch's first row: warm-up, guardrails (after
``guardrails.min_requests`` canary requests in the window), an empty window (no canary requests, or
below 100% no stable requests) that HALTs at the no-data deadline (metric ``data``), the analysis'
ROLLBACK and HALT verdicts, then bake time (``min_duration``), ``min_requests`` canary requests in the
window of the last stretch and ``max_duration``.

A run's decision is ``rollback`` or ``halt`` if the gate's decision at one of its rows is (the first
such row), else the gate's decision at the last row: ``promote`` (ADVANCE; below 100%, with the
analyzer evaluated in the last stretch; at 100%, where the gate compares nothing, with the last
evaluated assessments all ADVANCE, standing for the gates of the earlier stages), ``timeout`` or
``continue``. Stage progression is not re-simulated: an ADVANCE or TIMEOUT before the last row does
not end a run.

With ``analysis.segments`` and a ``segment`` column, each point also holds every segment's counts (the
rows with that value), and each segment's tests fire at its share of the error budget, as in the live
gate; the analyzer confirming a stop, and the end-of-data verdicts, see the same per-segment windows.

A ``prediction_quality`` metric reads the ``labelled`` and ``wrong`` columns (the file's author applies
``label_delay``, see :mod:`canary.stats.replay_input`): the labelled requests are its exposure and the
wrong predictions its events, as in the analyzer.

Everything that can fire is computed vectorised over all rows of all runs (label e-processes on a
grid, SRM, TV bounds, guardrails); the evidence of the row where a run's decision first held, and the
end-of-data verdicts, come from :class:`SequentialAnalyzer` itself, so replay and the live gate agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from canary.policy import stage_rules
from canary.policy.decisions import Decision
from canary.policy.evidence import Snapshot, VersionStats
from canary.policy.stage_rules import Rule, StageRules, Verdict
from canary.spec.model import MetricKind, MetricSpec, RolloutSpec
from canary.stats import distribution, label, srm
from canary.stats.analyzer import (
    THRESHOLD_MIN_EXCEEDANCES,
    SequentialAnalyzer,
    count_orientation,
    unsegmented_halt_min_requests,
)
from canary.stats.budget import ErrorBudget, error_budget
from canary.stats.replay_input import LABEL_COLUMNS, Layout

#: The test index of the analyzer's "no request in any listed segment" HALT.
_UNSEGMENTED = -3
#: Rows evaluated per vectorised block (bounds memory at about 100 MB).
_BLOCK = 100_000


@dataclass
class Points:
    """One evaluation point per (run, t): cumulative stage-window counts per version."""

    run: np.ndarray  # run codes
    run_names: np.ndarray
    t: np.ndarray
    stage: np.ndarray  # stage index within the run
    weight: np.ndarray  # configured canary %, nan if unknown
    evaluated: np.ndarray  # the analyzer is called here
    in_window: np.ndarray
    run_canary_requests: np.ndarray  # cumulative over the whole run
    cum: dict[str, np.ndarray]  # "<version>_<field>" -> cumulative within the stage window
    last_of_stage: np.ndarray
    stage_start_t: np.ndarray
    elapsed_s: np.ndarray  # since the first row of the stage (the gate's stage clock)
    min_duration_s: np.ndarray  # rules of the spec stage matched by weight (see _stage_rules)
    min_requests: np.ndarray
    max_duration_s: np.ndarray
    has_rules: np.ndarray  # False for weight 0 (no canary stage)
    compares: np.ndarray  # canary vs stable is compared (weight below 100 or unknown)
    #: With ``analysis.segments``: per segment value, its own ``cum`` (same points, that segment's rows).
    segments: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _segment_points(p: Points, value: str) -> Points:
    """Return the points of one segment: its counts, evaluated where it has traffic of both versions."""
    cum = p.segments[value]
    return replace(p, cum=cum, segments={},
                   evaluated=p.evaluated & (cum["canary_requests"] > 0) & (cum["stable_requests"] > 0))


def _stage_rules(spec: RolloutSpec, weight: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return per point ``min_duration_s, min_requests, max_duration_s, has_rules`` of the matching spec stage.

    ``weight`` is the configured canary percentage (nan if unknown: the spec's first stage). The first
    spec stage with the rounded weight gives the rules; an unmatched weight takes the strictest promotion
    rules of the spec (largest ``min_duration`` and ``min_requests``) and no deadline; weight 0 none.
    """
    stages = spec.stages
    w = np.where(np.isnan(weight), float(stages[0].weight), np.round(np.nan_to_num(weight)))
    min_dur = np.full(len(w), max(s.min_duration_s for s in stages), dtype=float)
    min_req = np.full(len(w), max(s.min_requests for s in stages), dtype=float)
    max_dur = np.full(len(w), math.inf)
    matched = np.zeros(len(w), dtype=bool)
    for s in stages:
        hit = (w == s.weight) & ~matched
        min_dur[hit], min_req[hit], max_dur[hit] = s.min_duration_s, s.min_requests, s.max_duration_s
        matched |= hit
    has_rules = w > 0
    return min_dur, min_req, max_dur, has_rules


def _points(df: pd.DataFrame, layout: Layout, spec: RolloutSpec) -> Points:
    fields = ["requests", "errors", *(["kpi_events"] if layout.has_kpi else []),
              *(LABEL_COLUMNS if layout.has_labels else ()), *layout.latency_columns, *layout.pred_columns]
    run_codes, run_names = pd.factorize(df["run"])
    df = df.assign(_run=run_codes, _row=np.arange(len(df)))
    df = df.sort_values(["_run", "_row"], kind="stable")
    key = pd.MultiIndex.from_arrays([df["_run"].to_numpy(), df["t"].to_numpy()])
    new_point = np.ones(len(df), dtype=bool)
    new_point[1:] = (key.codes[0][1:] != key.codes[0][:-1]) | (df["t"].to_numpy()[1:] != df["t"].to_numpy()[:-1])
    pid = np.cumsum(new_point) - 1
    n = int(pid[-1]) + 1
    is_c = (df["version"] == "canary").to_numpy()
    inc: dict[str, np.ndarray] = {}
    for f in fields:
        v = df[f].to_numpy(dtype=float)
        for name, mask in (("canary", is_c), ("stable", ~is_c)):
            inc[f"{name}_{f}"] = np.bincount(pid[mask], weights=v[mask], minlength=n)
    first = np.flatnonzero(new_point)
    run = df["_run"].to_numpy()[first]
    t = df["t"].to_numpy(dtype=float)[first]
    if layout.has_weight:
        w = df.groupby(pid)["weight"].max().to_numpy(dtype=float)
        w = pd.Series(w).groupby(run).ffill().to_numpy()
    else:
        w = np.full(n, np.nan)
    wkey = np.where(np.isnan(w), -1.0, w)
    change = np.ones(n, dtype=bool)
    change[1:] = (run[1:] != run[:-1]) | (wkey[1:] != wkey[:-1])
    stage_global = np.cumsum(change) - 1
    run_start = np.ones(n, dtype=bool)
    run_start[1:] = run[1:] != run[:-1]
    stage = stage_global - stage_global[np.flatnonzero(run_start)][np.cumsum(run_start) - 1]
    stage_start_t = t[np.flatnonzero(change)][stage_global]
    in_window = t >= stage_start_t + spec.analysis.warmup_s
    run_canary = pd.Series(inc["canary_requests"]).groupby(run).cumsum().to_numpy()
    def cumulative(increments: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: pd.Series(np.where(in_window, v, 0.0)).groupby(stage_global).cumsum().to_numpy()
                for k, v in increments.items()}

    cum = cumulative(inc)
    segments: dict[str, dict[str, np.ndarray]] = {}
    if spec.analysis.segments is not None and layout.has_segment:
        seg = df["segment"].to_numpy()
        for value in spec.analysis.segments.values:
            mine = seg == value
            segments[value] = cumulative({
                f"{name}_{f}": np.bincount(pid[mask & mine], weights=df[f].to_numpy(dtype=float)[mask & mine],
                                           minlength=n)
                for f in fields for name, mask in (("canary", is_c), ("stable", ~is_c))})
    compares = np.isnan(w) | ((w > 0) & (w < 100))
    evaluated = in_window & compares & (cum["canary_requests"] > 0) & (cum["stable_requests"] > 0)
    last = np.ones(n, dtype=bool)
    last[:-1] = stage_global[1:] != stage_global[:-1]
    min_dur, min_req, max_dur, has_rules = _stage_rules(spec, w)
    return Points(run=run, run_names=np.asarray(run_names), t=t, stage=stage, weight=w, evaluated=evaluated,
                  in_window=in_window, run_canary_requests=run_canary, cum=cum, last_of_stage=last,
                  stage_start_t=stage_start_t, elapsed_s=t - stage_start_t, min_duration_s=min_dur,
                  min_requests=min_req, max_duration_s=max_dur, has_rules=has_rules, compares=np.isnan(w) | (w < 100),
                  segments=segments)


def _carry(p: Points, values: np.ndarray, carried_if: np.ndarray) -> np.ndarray:
    """Return, per point, the sum of ``values`` at the last point of each *earlier* stage of its run."""
    contrib = np.where((p.last_of_stage & carried_if).reshape(-1, *([1] * (values.ndim - 1))), values, 0.0)
    run_cum = pd.DataFrame(contrib.reshape(len(p.t), -1)).groupby(p.run).cumsum().to_numpy()
    run_cum = run_cum.reshape(values.shape)
    # Inclusive cumsum at the last point of the previous stage = exclusive carry for this stage.
    gstage = np.cumsum(np.r_[True, (p.stage[1:] != p.stage[:-1]) | (p.run[1:] != p.run[:-1])]) - 1
    first_idx = np.flatnonzero(np.r_[True, gstage[1:] != gstage[:-1]])
    carry_at_stage = np.zeros((len(first_idx),) + values.shape[1:])
    prev = first_idx - 1
    same_run = (prev >= 0) & (p.run[np.maximum(prev, 0)] == p.run[first_idx])
    carry_at_stage[same_run] = run_cum[prev[same_run]]
    return carry_at_stage[gstage]


def _quantile(cum_counts: np.ndarray, bounds: np.ndarray, q: float) -> np.ndarray:
    """Vectorised :meth:`VersionStats.latency_quantile_ms` (rows of cumulative counts, last bound inf)."""
    total = cum_counts[:, -1]
    rank = q * total
    idx = np.argmax(cum_counts >= rank[:, None], axis=1)
    bound = bounds[idx]
    prev_bound = np.where(idx > 0, bounds[np.maximum(idx - 1, 0)], 0.0)
    count = cum_counts[np.arange(len(idx)), idx]
    prev_count = np.where(idx > 0, cum_counts[np.arange(len(idx)), np.maximum(idx - 1, 0)], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        interp = prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
    out = np.where(np.isinf(bound), prev_bound, np.where(count == prev_count, bound, interp))
    return np.where(total > 0, out, np.nan)


def _floor_bound(targets: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    finite = np.sort(bounds[np.isfinite(bounds) & (bounds > 0)])
    idx = np.searchsorted(finite, targets, side="right") - 1  # as floor_bound_ms
    return finite[np.clip(idx, 0, len(finite) - 1)]


def _latency_hist(p: Points, layout: Layout, version: str) -> np.ndarray:
    cols = [p.cum[f"{version}_{c}"] for c in layout.latency_columns] + [p.cum[f"{version}_requests"]]
    return np.stack(cols, axis=1)


def _label_log_e(p: Points, metric: MetricSpec, xc: np.ndarray, xs: np.ndarray, nc: np.ndarray, ns: np.ndarray,
                 ok: np.ndarray, carried_if: np.ndarray) -> np.ndarray:
    orient = count_orientation(metric)
    if not orient.canary_is_harm:
        xc, xs, nc, ns = xs, xc, ns, nc
    prior = label.GridPrior.around(math.log(orient.design_ratio))
    has = ok & (nc > 0) & (ns > 0)
    rho = np.where(has, nc / np.where(has, nc + ns, 1.0), 0.5)
    llr = np.zeros((len(xc), len(prior.log_effects)))
    for s in range(0, len(xc), _BLOCK):
        sl = slice(s, s + _BLOCK)
        llr[sl] = np.where(has[sl, None], label.grid_log_lr(xc[sl], xs[sl], rho[sl], 1.0, prior, 1), 0.0)
    total = llr + _carry(p, llr, carried_if & has)
    return logsumexp(total + prior.log_weights, axis=1)


def _fire(p: Points, layout: Layout, spec: RolloutSpec,
          budget: ErrorBudget | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return per point where the analysis' tests fire: ``rollback``, ``halt`` and the index of the
    metric that fired for each (-2 none, ``len(metrics)`` for srm), at ``budget``'s levels (default: the
    overall scope's). Which rule wins is :func:`_row_verdicts`."""
    n = len(p.t)
    metrics = spec.analysis.metrics
    budget = budget or error_budget(spec.analysis)
    c, ev = p.cum, p.evaluated

    rollback = np.zeros(n, dtype=bool)
    halt = np.zeros(n, dtype=bool)
    rb_metric = np.full(n, -2, dtype=int)
    halt_metric = np.full(n, -2, dtype=int)
    for i, m in enumerate(metrics):
        log_thr = budget.log_rollback_threshold(m.name)
        fired = np.zeros(n, dtype=bool)
        halted = np.zeros(n, dtype=bool)
        if m.kind is MetricKind.ERROR_RATE:
            log_e = _label_log_e(p, m, c["canary_errors"], c["stable_errors"], c["canary_requests"],
                                 c["stable_requests"], ev, ev)
            fired = ev & (log_e >= log_thr)
        elif m.kind is MetricKind.KPI:
            log_e = _label_log_e(p, m, c["canary_kpi_events"], c["stable_kpi_events"], c["canary_requests"],
                                 c["stable_requests"], ev, ev)
            fired = ev & (log_e >= log_thr)
        elif m.kind is MetricKind.PREDICTION_QUALITY:
            # Exposure is the labelled requests, as in the analyzer (a stage without labels adds no evidence).
            log_e = _label_log_e(p, m, c["canary_wrong"], c["stable_wrong"], c["canary_labelled"],
                                 c["stable_labelled"], ev, ev)
            fired = ev & (log_e >= log_thr)
        elif m.kind is MetricKind.LATENCY:
            fired, halted = _latency_fires(p, layout, m, log_thr)
        elif m.kind is MetricKind.PREDICTION_DISTRIBUTION:
            fired, halted = _prediction_fires(p, layout, m, budget.metric(m.name))
        rb_metric[fired & (rb_metric == -2)] = i
        halt_metric[halted & (halt_metric == -2)] = i
        rollback |= fired
        halt |= halted
    if layout.has_weight:
        w = p.weight / 100.0
        srm_ok = ev & (w > 0) & (w < 1)
        le = np.where(srm_ok, srm.log_e_value(c["canary_requests"], c["stable_requests"],
                                              np.where(srm_ok, w, 0.5)), 0.0)
        le = le + _carry(p, le, srm_ok)
        srm_fire = ev & (le >= budget.log_srm_threshold)
        halt_metric[srm_fire & ~halt] = len(metrics)
        halt |= srm_fire
    return rollback, halt, rb_metric, halt_metric


def _rules(spec: RolloutSpec, p: Points, at: int | slice = slice(None)) -> StageRules:
    """The stage rules at point ``at`` (default: arrays over every point)."""
    return StageRules(warmup_s=spec.analysis.warmup_s, poll_interval_s=spec.analysis.poll_interval_s,
                      min_duration_s=p.min_duration_s[at], max_duration_s=p.max_duration_s[at],
                      min_requests=p.min_requests[at], compares=p.compares[at])


def _guardrails(p: Points, layout: Layout, spec: RolloutSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per point ``(error_rate_breached, latency_p99_breached)`` (:func:`canary.policy.stage_rules.guardrail_breaches`)."""
    c, rails = p.cum, spec.analysis.guardrails
    p99 = np.full(len(p.t), np.nan)
    if rails.max_latency_p99_ms is not None and layout.latency_columns:
        p99 = _quantile(_latency_hist(p, layout, "canary"), np.array([*layout.latency_bounds_ms, math.inf]), 0.99)
    return stage_rules.guardrail_breaches(rails, c["canary_requests"], c["canary_errors"], p99)


def _row_verdicts(p: Points, layout: Layout, spec: RolloutSpec) -> tuple[Verdict, np.ndarray]:
    """Return the gate's stage decision at every point (the rule book's :func:`stage_decision` on arrays)
    and, per point, the metric index that fired (see :func:`_fire`).

    Non-inferiority is not computed per row (only the firing tests are): below 100% the analysis'
    verdict is ROLLBACK, HALT or CONTINUE here, and :func:`replay` asks the analyzer at the end of the
    data whether the run promotes. A weight of 0 is no canary stage: CONTINUE.
    """
    rollback, halt, rb_metric, halt_metric = _fire(p, layout, spec)
    segments = spec.analysis.segments
    if segments is not None and p.segments:
        # Each segment's tests at its share of the budget; test index (k + 1) * (metrics + 1) + i names them.
        seg_budget, width = error_budget(spec.analysis).for_segment(), len(spec.analysis.metrics) + 1
        for k, value in enumerate(segments.values):
            s_rb, s_halt, s_rb_metric, s_halt_metric = _fire(_segment_points(p, value), layout, spec, seg_budget)
            rb_metric = np.where(s_rb & (rb_metric == -2), (k + 1) * width + s_rb_metric, rb_metric)
            halt_metric = np.where(s_halt & (halt_metric == -2), (k + 1) * width + s_halt_metric, halt_metric)
            rollback |= s_rb
            halt |= s_halt
        # As the analyzer: enough canary requests and none in a listed segment is a misconfiguration.
        in_segments = sum(c["canary_requests"] for c in p.segments.values())
        unsegmented = p.evaluated & (p.cum["canary_requests"] >= unsegmented_halt_min_requests(spec.analysis)) \
            & (in_segments == 0)
        halt_metric = np.where(unsegmented & (halt_metric == -2), _UNSEGMENTED, halt_metric)
        halt |= unsegmented
    rate, p99 = _guardrails(p, layout, spec)
    verdict = stage_rules.analysis_verdict(rollback=rollback, halt=halt, all_non_inferior=~p.compares)
    rows = stage_rules.stage_decision(_rules(spec, p), p.elapsed_s, has_data=True,
                                      canary_requests=p.cum["canary_requests"],
                                      stable_requests=p.cum["stable_requests"], breached=rate | p99, verdict=verdict)
    # The fill is an object array: np.where would store a bare enum member as a plain string.
    decision = np.where(p.has_rules, rows.decision, np.full(len(p.t), Decision.CONTINUE, dtype=object))
    rule = np.where(p.has_rules, rows.rule, np.full(len(p.t), Rule.OBSERVING, dtype=object))
    which = np.where(decision == Decision.ROLLBACK, rb_metric, np.where(decision == Decision.HALT, halt_metric, -2))
    return Verdict(decision, rule), which


def _latency_fires(p: Points, layout: Layout, m: MetricSpec, log_thr: float) -> tuple[np.ndarray, np.ndarray]:
    n = len(p.t)
    ev = p.evaluated
    bounds = np.array([*layout.latency_bounds_ms, math.inf])
    hc, hs = _latency_hist(p, layout, "canary"), _latency_hist(p, layout, "stable")
    if m.threshold_ms is not None:
        if m.threshold_ms not in layout.latency_bounds_ms:
            return np.zeros(n, dtype=bool), ev.copy()
        thr = np.full(n, float(m.threshold_ms))
        chosen_ok = np.ones(n, dtype=bool)
    else:
        q = m.quantile if m.quantile is not None else 0.99
        pooled = hc + hs
        enough = pooled[:, -1] >= THRESHOLD_MIN_EXCEEDANCES / (1.0 - q)
        own = np.where(enough, _floor_bound(np.nan_to_num(_quantile(pooled, bounds, q)), bounds), np.nan)
        # The threshold is fixed at the end of the first stage (with evaluations) where enough data existed.
        fix_here = p.last_of_stage & ev & enough
        fixed = np.full(n, np.nan)
        idx = np.flatnonzero(fix_here)
        first_fix = pd.Series(idx).groupby(p.run[idx]).first()
        fix_run = np.full(int(p.run.max()) + 1, -1)
        fix_run[first_fix.index.to_numpy()] = first_fix.to_numpy()
        fpos = fix_run[p.run]
        after = (fpos >= 0) & (np.arange(n) > fpos) & (p.stage > p.stage[np.maximum(fpos, 0)])
        fixed[after] = own[fpos[after]]
        thr = np.where(after, fixed, own)
        chosen_ok = after | enough
    col = np.searchsorted(bounds, np.nan_to_num(thr, nan=bounds[0]))
    rows = np.arange(n)
    xc = hc[:, -1] - hc[rows, col]
    xs = hs[:, -1] - hs[rows, col]
    ok = ev & chosen_ok
    log_e = _label_log_e(p, m, xc, xs, hc[:, -1], hs[:, -1], ok, ok)
    return ok & (log_e >= log_thr), np.zeros(n, dtype=bool)


def _prediction_fires(p: Points, layout: Layout, m: MetricSpec, a: float) -> tuple[np.ndarray, np.ndarray]:
    ev = p.evaluated
    bc = np.stack([p.cum[f"canary_{c}"] for c in layout.pred_columns], axis=1)
    bs = np.stack([p.cum[f"stable_{c}"] for c in layout.pred_columns], axis=1)
    halted = ev & (((p.cum["canary_requests"] - p.cum["canary_errors"] > 0) & (bc.sum(1) == 0))
                   | ((p.cum["stable_requests"] - p.cum["stable_errors"] > 0) & (bs.sum(1) == 0)))
    bc = bc + _carry(p, bc, ev)
    bs = bs + _carry(p, bs, ev)
    lower = np.zeros(len(p.t))
    idx = np.flatnonzero(ev & ~halted)
    for s in range(0, len(idx), _BLOCK):
        sl = idx[s:s + _BLOCK]
        lower[sl], _ = distribution.tv_bounds(bc[sl], bs[sl], a)
    return ev & ~halted & (lower > m.tolerance), halted


# -- scalar confirmation and output -----------------------------------------------------------------


def _snapshot(p: Points, layout: Layout, i: int) -> Snapshot:
    def stats(version: str, c: dict[str, np.ndarray]) -> VersionStats:
        kw: dict[str, Any] = {}
        if layout.latency_columns:
            kw["latency_buckets_ms"] = (*layout.latency_bounds_ms, math.inf)
            kw["latency_cumulative"] = tuple(int(c[f"{version}_{col}"][i]) for col in layout.latency_columns) + (
                int(c[f"{version}_requests"][i]),)
        else:
            # No latency data recorded: an empty histogram.
            kw["latency_cumulative"] = (0,) * len(VersionStats(version=version).latency_buckets_ms)
        if layout.pred_columns:
            kw["prediction_bins"] = tuple(int(c[f"{version}_{col}"][i]) for col in layout.pred_columns)
        if layout.has_labels:
            kw |= {f: int(c[f"{version}_{f}"][i]) for f in LABEL_COLUMNS}
        return VersionStats(version=version, requests=int(c[f"{version}_requests"][i]),
                            errors=int(c[f"{version}_errors"][i]),
                            kpi_events=int(c[f"{version}_kpi_events"][i]) if layout.has_kpi else 0, **kw)

    start_s, end_s = float(p.stage_start_t[i]), float(p.t[i])
    return Snapshot(stable=stats("stable", p.cum), canary=stats("canary", p.cum), start_s=start_s, end_s=end_s,
                    segments={v: Snapshot(stable=stats("stable", c), canary=stats("canary", c), start_s=start_s,
                                          end_s=end_s) for v, c in p.segments.items()})


def _weight_label(p: Points, i: int) -> str:
    return "unknown weight" if np.isnan(p.weight[i]) else f"{p.weight[i]:g}%"


def _gate_evidence(spec: RolloutSpec, p: Points, i: int) -> dict[str, Any]:
    """Stage clock and rules at point ``i`` (what the gate's ``timing`` evidence holds)."""
    return {"stage": int(p.stage[i]), "weight_pct": None if np.isnan(p.weight[i]) else float(p.weight[i]),
            "elapsed_s": float(p.elapsed_s[i]), "min_duration_s": float(p.min_duration_s[i]),
            "no_data_deadline_s": float(stage_rules.no_data_deadline_s(_rules(spec, p, i))),
            "canary_requests": int(p.cum["canary_requests"][i]), "min_requests": int(p.min_requests[i])}


def _promotion_waits(spec: RolloutSpec, p: Points, i: int) -> list[str]:
    """What keeps the gate from advancing at point ``i`` besides the metrics (empty when nothing does)."""
    rules, elapsed_s, canary = _rules(spec, p, i), float(p.elapsed_s[i]), p.cum["canary_requests"][i]
    waits = []
    if not p.has_rules[i]:
        waits.append("weight 0 is no canary stage")
    if stage_rules.warming_up(rules, elapsed_s):
        waits.append("warming up")
    if not stage_rules.bake_time_reached(rules, elapsed_s):
        waits.append(f"{elapsed_s:g}/{p.min_duration_s[i]:g} s")
    if not stage_rules.enough_requests(rules, canary) or canary == 0:
        waits.append(f"{int(canary)}/{int(p.min_requests[i])} canary requests")
    return waits


def _weight_pct(p: Points, i: int) -> int:
    return int(round(p.weight[i])) if not np.isnan(p.weight[i]) else 0


def _analyze_at(spec: RolloutSpec, p: Points, layout: Layout, i: int, analyzer: SequentialAnalyzer):
    """Run the analyzer at point ``i`` with the state carried from the earlier stages of its run."""
    state = None
    run_idx = np.flatnonzero((p.run == p.run[i]) & p.last_of_stage & p.evaluated & (p.stage < p.stage[i]))
    for j in run_idx:
        _, state = analyzer.assess(spec, _snapshot(p, layout, j), canary_weight_pct=_weight_pct(p, j), state=state)
    return analyzer.assess(spec, _snapshot(p, layout, i), canary_weight_pct=_weight_pct(p, i), state=state)


#: A run's ``decision`` in replay's output, from the gate's decision that ended it (or held at the end).
RUN_DECISION = {Decision.ROLLBACK: "rollback", Decision.HALT: "halt", Decision.ADVANCE: "promote",
                Decision.TIMEOUT: "timeout", Decision.CONTINUE: "continue"}


def _stop_evidence(spec: RolloutSpec, p: Points, layout: Layout, i: int, rule: Rule, metric_idx: int,
                   decision: Decision, analyzer: SequentialAnalyzer) -> tuple[str, dict[str, Any]]:
    """Return the metric and evidence of a ROLLBACK or HALT at point ``i``."""
    c, rails, metrics = p.cum, spec.analysis.guardrails, spec.analysis.metrics
    if rule is Rule.EMPTY:
        evidence = {**_gate_evidence(spec, p, i), "stable_requests": int(c["stable_requests"][i])}
        canary_empty, stable_empty = stage_rules.empty_versions(_rules(spec, p, i), c["canary_requests"][i],
                                                                c["stable_requests"][i])
        empty = [v for v, flag in (("canary", canary_empty), ("stable", stable_empty)) if flag]
        evidence["reason"] = (f"no {' or '.join(empty)} requests after {p.elapsed_s[i]:g} s at "
                              f"{_weight_label(p, i)} (no-data deadline {evidence['no_data_deadline_s']:g} s)")
        return "data", evidence
    if rule is Rule.GUARDRAIL:
        rate, _ = stage_rules.guardrail_breaches(rails, c["canary_requests"][i], c["canary_errors"][i], None)
        evidence = {"canary_requests": int(c["canary_requests"][i]), "canary_errors": int(c["canary_errors"][i]),
                    "max_error_rate": rails.max_error_rate, "max_latency_p99_ms": rails.max_latency_p99_ms}
        return ("guardrail.max_error_rate" if rate else "guardrail.max_latency_p99_ms"), evidence
    scope, index = divmod(max(metric_idx, 0), len(metrics) + 1)
    metric = "srm" if index == len(metrics) else metrics[index].name
    if metric_idx == _UNSEGMENTED:
        scope, metric = 0, "segments"
    segment = spec.analysis.segments.label(spec.analysis.segments.values[scope - 1]) \
        if scope and spec.analysis.segments is not None else None
    assessments, _ = _analyze_at(spec, p, layout, i, analyzer)
    hit = [x for x in assessments if x.decision is decision]
    chosen = next((x for x in hit if x.metric == metric and x.segment == segment), hit[0] if hit else None)
    if chosen is None:
        return metric, {}
    return chosen.label, {"reason": chosen.reason, **chosen.evidence}


def replay(spec: RolloutSpec, df: pd.DataFrame, layout: Layout) -> Iterator[dict[str, Any]]:
    """Yield one result dict per run (in order of first appearance)."""
    p = _points(df, layout, spec)
    rows, which = _row_verdicts(p, layout, spec)
    stops = np.flatnonzero((rows.decision == Decision.ROLLBACK) | (rows.decision == Decision.HALT))
    analyzer = SequentialAnalyzer()
    starts = np.flatnonzero(np.r_[True, p.run[1:] != p.run[:-1]])
    ends = np.r_[starts[1:], len(p.t)]
    for a, b in zip(starts, ends, strict=True):
        name = str(p.run_names[p.run[a]])
        k = np.searchsorted(stops, a)
        if k < len(stops) and stops[k] < b:
            i = int(stops[k])
            decision = rows.decision[i]
            metric, evidence = _stop_evidence(spec, p, layout, i, rows.rule[i], int(which[i]), decision, analyzer)
            yield {"run": name, "decision": RUN_DECISION[decision], "t": float(p.t[i]),
                   "canary_requests": int(p.run_canary_requests[i]), "metric": metric, "evidence": evidence}
            continue
        # Nothing fired: what the gate says at the last row, with the analyzer's non-inferiority verdict.
        i = b - 1
        evaluated = np.flatnonzero(p.evaluated[a:b])
        evidence: dict[str, Any] = {}
        verdict = Decision.CONTINUE
        if evaluated.size:
            j = a + int(evaluated[-1])
            assessments, _ = _analyze_at(spec, p, layout, j, analyzer)
            evidence = {x.label: x.decision.value for x in assessments}
            # Below 100% the gate decides on the last stretch's own evaluation; at 100% it compares
            # nothing, and the last evaluated (earlier) stage stands for the gates that led there.
            current = p.stage[j] == p.stage[i] or not p.compares[i]
            verdict = stage_rules.analysis_verdict(
                rollback=False, halt=False,
                all_non_inferior=current and bool(assessments) and all(x.decision is Decision.ADVANCE
                                                                       for x in assessments))
        final = stage_rules.stage_decision(_rules(spec, p, i), float(p.elapsed_s[i]), has_data=True,
                                           canary_requests=p.cum["canary_requests"][i],
                                           stable_requests=p.cum["stable_requests"][i], breached=False,
                                           verdict=verdict)
        decision = final.decision if p.has_rules[i] else Decision.CONTINUE
        evidence["gate"] = {**_gate_evidence(spec, p, i), "waiting": _promotion_waits(spec, p, i)}
        yield {"run": name, "decision": RUN_DECISION[decision], "t": float(p.t[i]),
               "canary_requests": int(p.run_canary_requests[i]), "metric": None, "evidence": evidence}
