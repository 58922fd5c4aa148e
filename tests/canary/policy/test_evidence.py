from __future__ import annotations

import math

import pytest
from fakes import cumulative_from_latencies
from hypothesis import given
from hypothesis import strategies as st

from canary.policy.evidence import (
    DEFAULT_LATENCY_BUCKETS_MS,
    Snapshot,
    VersionStats,
    bin_index,
)


def stats(latencies, errors=0, version="v") -> VersionStats:
    return VersionStats(version=version, requests=len(latencies), errors=errors,
                        latency_cumulative=cumulative_from_latencies(latencies),
                        latency_sum_ms=float(sum(latencies)))


def test_quantile_interpolates_within_buckets_like_histogram_quantile():
    s = stats([3, 40, 900])
    # rank 1.5 falls in (25, 50]: 25 + 25 * (1.5 - 1) / (2 - 1)
    assert s.latency_quantile_ms(0.5) == pytest.approx(37.5)
    assert s.latency_exceedances(500.0) == 1
    assert stats([]).latency_quantile_ms(0.99) is None


def test_invalid_stats_are_refused_with_the_version_named():
    with pytest.raises(ValueError, match="v: errors"):
        VersionStats(version="v", requests=1, errors=2)
    with pytest.raises(ValueError, match="non-decreasing"):
        VersionStats(version="v", requests=2, latency_cumulative=(2,) + (1,) * (len(DEFAULT_LATENCY_BUCKETS_MS) - 1))
    with pytest.raises(ValueError, match="not a latency bucket"):
        stats([1]).latency_exceedances(123.0)


@given(st.lists(st.floats(min_value=0.1, max_value=10_000), max_size=200),
       st.lists(st.floats(min_value=0.1, max_value=10_000), max_size=200))
def test_minus_inverts_accumulation(first, second):
    a, ab = stats(first), stats(first + second)
    diff = ab.minus(a)
    assert diff.requests == len(second)
    assert diff.latency_cumulative == cumulative_from_latencies(second)


@given(st.floats(min_value=0.0, max_value=1.0))
def test_bin_index_in_range(score):
    assert 0 <= bin_index(score) <= 9


def test_round_trips_are_json_safe():
    import json

    s = stats([1, 2, 3000], errors=1)
    snap = Snapshot(stable=s, canary=s, start_s=1.0, end_s=2.0)
    again = Snapshot.from_dict(json.loads(json.dumps(snap.to_dict())))
    assert again == snap and math.isinf(again.canary.latency_buckets_ms[-1])
