"""Builders shared by the statistics tests."""

from __future__ import annotations

from typing import Any

from canary.policy.evidence import DEFAULT_LATENCY_BUCKETS_MS, Snapshot, VersionStats
from canary.spec.model import RolloutSpec, parse_spec


def make_spec(metrics: list[dict[str, Any]] | None = None, *, alpha: float = 0.05, srm_alpha: float | None = None,
              stages: list[dict[str, Any]] | None = None) -> RolloutSpec:
    """Return a small valid spec with the given metrics (``srm_alpha`` None: the default share)."""
    srm = {} if srm_alpha is None else {"srm_alpha": srm_alpha}
    return parse_spec({
        "model": "m", "endpoint": "e",
        "stages": stages or [{"weight": 5, "max_duration": "1h"}, {"weight": 25, "max_duration": "1h"},
                             {"weight": 50, "max_duration": "1h"}, {"weight": 100, "max_duration": "1h"}],
        "analysis": {"alpha": alpha, **srm, "metrics": metrics or [
            {"name": "error_rate", "kind": "error_rate", "tolerance": 0.25, "mde": 1.0}]},
    })


def vstats(version: str, requests: int, errors: int = 0, *, exceed: int | None = None, kpi: int = 0,
           bins: tuple[int, ...] | None = None, log_sums: tuple[float, float] | None = None,
           latency: bool = True) -> VersionStats:
    """Return stats with ``exceed`` requests slower than 300 ms (others at <= 50 ms)."""
    buckets = DEFAULT_LATENCY_BUCKETS_MS
    n_obs = requests if latency else 0
    slow = min(exceed if exceed is not None else 0, n_obs)
    cum = tuple(n_obs - slow if b <= 300.0 and b >= 50.0 else (0 if b < 50.0 else n_obs) for b in buckets)
    return VersionStats(version=version, requests=requests, errors=errors, latency_cumulative=cum, kpi_events=kpi,
                        prediction_bins=bins if bins is not None else (requests // 10,) * 10,
                        log_latency_sum=None if log_sums is None else log_sums[0],
                        log_latency_sumsq=None if log_sums is None else log_sums[1])


def snap(stable: VersionStats, canary: VersionStats) -> Snapshot:
    return Snapshot(stable=stable, canary=canary, start_s=0.0, end_s=600.0)
