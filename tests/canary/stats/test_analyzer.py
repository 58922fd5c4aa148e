"""SequentialAnalyzer: decisions, evidence, state round trips and invariances."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.policy.decisions import Decision
from canary.stats import MetricCarry, SequentialAnalyzer, SequentialState, label

from .helpers import make_spec, snap, vstats

A = SequentialAnalyzer()


def by_name(assessments):
    return {a.metric: a for a in assessments}


def test_clear_regression_rolls_back_and_names_the_metric():
    spec = make_spec()
    res, _ = A.assess(spec, snap(vstats("s", 95_000, 950), vstats("c", 5_000, 150)), canary_weight_pct=5, state=None)
    got = by_name(res)
    assert got["error_rate"].decision is Decision.ROLLBACK
    ev = got["error_rate"].evidence
    assert ev["log_e_value"] >= math.log(ev["threshold"])
    assert ev["ratio_lower"] > 1.0
    assert ev["canary_events"] == 150 and ev["stable_events"] == 950
    json.dumps([a.to_dict() for a in res])  # evidence is JSON-able


def test_healthy_canary_advances_with_enough_data():
    spec = make_spec()
    res, _ = A.assess(spec, snap(vstats("s", 950_000, 9_500), vstats("c", 50_000, 480)), canary_weight_pct=5,
                      state=None)
    got = by_name(res)
    assert got["error_rate"].decision is Decision.ADVANCE
    assert got["error_rate"].evidence["ratio_upper"] <= 1.25
    assert got["srm"].decision is Decision.ADVANCE


def test_little_data_continues():
    res, _ = A.assess(make_spec(), snap(vstats("s", 1900, 19), vstats("c", 100, 1)), canary_weight_pct=5, state=None)
    assert by_name(res)["error_rate"].decision is Decision.CONTINUE


@pytest.mark.parametrize(("alpha", "srm_alpha", "want_a", "want_b", "want_srm"), [
    # The default SRM share min(0.001, alpha / 10) is carved out of alpha; the metrics split the rest 3:1.
    (0.05, None, 1 / (0.049 * 0.75), 1 / (0.049 * 0.25), 1 / 0.001),
    (0.005, None, 1 / (0.0045 * 0.75), 1 / (0.0045 * 0.25), 1 / 0.0005),
    (0.1, 0.01, 1 / (0.09 * 0.75), 1 / (0.09 * 0.25), 1 / 0.01),
])
def test_weighted_bonferroni_thresholds_share_alpha_with_srm(alpha, srm_alpha, want_a, want_b, want_srm):
    spec = make_spec([{"name": "a", "kind": "error_rate", "tolerance": 0.2, "weight": 3},
                      {"name": "b", "kind": "kpi", "tolerance": 0.1, "weight": 1}], alpha=alpha, srm_alpha=srm_alpha)
    res, _ = A.assess(spec, snap(vstats("s", 1000, 10, kpi=50), vstats("c", 100, 1, kpi=5)),
                      canary_weight_pct=10, state=None)
    got = by_name(res)
    assert got["a"].evidence["threshold"] == pytest.approx(want_a)
    assert got["b"].evidence["threshold"] == pytest.approx(want_b)
    assert got["srm"].evidence["threshold"] == pytest.approx(want_srm)
    # The promotion (non-inferiority) level is the whole alpha: a different error, not split.
    assert got["a"].evidence["ni_threshold"] == pytest.approx(1 / alpha)
    # Together the rollback and halt levels spend exactly alpha.
    assert 1 / want_a + 1 / want_b + 1 / want_srm == pytest.approx(alpha)


def test_srm_halts_on_a_mismatched_split():
    res, _ = A.assess(make_spec(), snap(vstats("s", 90_000, 900), vstats("c", 10_000, 100)), canary_weight_pct=5,
                      state=None)
    srm = by_name(res)["srm"]
    assert srm.decision is Decision.HALT
    assert srm.evidence["observed_weight_pct"] == pytest.approx(10.0)


def test_missing_data_halts():
    spec = make_spec([{"name": "p99", "kind": "latency", "quantile": 0.99, "tolerance": 0.2}])
    res, _ = A.assess(spec, snap(vstats("s", 1900, latency=False), vstats("c", 100)), canary_weight_pct=5, state=None)
    assert by_name(res)["p99"].decision is Decision.HALT
    res, _ = A.assess(make_spec(), snap(vstats("s", 0), vstats("c", 100)), canary_weight_pct=5, state=None)
    assert by_name(res)["error_rate"].decision is Decision.HALT


def test_threshold_that_is_not_a_bucket_bound_halts():
    spec = make_spec([{"name": "slow", "kind": "latency", "threshold_ms": 333, "tolerance": 0.2}])
    res, _ = A.assess(spec, snap(vstats("s", 1900), vstats("c", 100)), canary_weight_pct=5, state=None)
    assert by_name(res)["slow"].decision is Decision.HALT


def test_latency_threshold_is_fixed_in_the_first_stage_and_carried():
    spec = make_spec([{"name": "p99", "kind": "latency", "quantile": 0.99, "tolerance": 0.2}])
    res, state = A.assess(spec, snap(vstats("s", 19_000, exceed=285), vstats("c", 1_000, exceed=15)),
                          canary_weight_pct=5, state=None)
    thr = by_name(res)["p99"].evidence["threshold_ms"]
    assert thr == 300.0  # pooled p99 ~367 ms (interpolated in (300, 500]); the bound at or below it
    assert SequentialState.from_dict(state).metric("p99").threshold_ms == thr
    res2, _ = A.assess(spec, snap(vstats("s", 15_000, exceed=3_000), vstats("c", 5_000, exceed=1_000)),
                       canary_weight_pct=25, state=state)
    assert by_name(res2)["p99"].evidence["threshold_from"] == "carried"


def test_latency_tail_regression_rolls_back():
    spec = make_spec([{"name": "p99", "kind": "latency", "quantile": 0.99, "tolerance": 0.2}])
    res, _ = A.assess(spec, snap(vstats("s", 95_000, exceed=950), vstats("c", 5_000, exceed=150)),
                      canary_weight_pct=5, state=None)
    assert by_name(res)["p99"].decision is Decision.ROLLBACK


def test_kpi_drop_is_harmful_when_higher_is_better():
    spec = make_spec([{"name": "conv", "kind": "kpi", "tolerance": 0.1}])
    res, _ = A.assess(spec, snap(vstats("s", 95_000, kpi=9_500), vstats("c", 5_000, kpi=300)),
                      canary_weight_pct=5, state=None)
    got = by_name(res)["conv"]
    assert got.decision is Decision.ROLLBACK
    assert got.evidence["ratio_upper"] < 1.0  # canary/stable conversion ratio
    res, _ = A.assess(spec, snap(vstats("s", 95_000, kpi=9_500), vstats("c", 5_000, kpi=800)),
                      canary_weight_pct=5, state=None)
    assert by_name(res)["conv"].decision is not Decision.ROLLBACK
    spec = make_spec([{"name": "churn", "kind": "kpi", "tolerance": 0.1, "higher_is_better": False}])
    res, _ = A.assess(spec, snap(vstats("s", 95_000, kpi=9_500), vstats("c", 5_000, kpi=800)),
                      canary_weight_pct=5, state=None)
    assert by_name(res)["churn"].decision is Decision.ROLLBACK


def test_prediction_distribution_guardrail():
    spec = make_spec([{"name": "pred", "kind": "prediction_distribution", "tolerance": 0.1}])
    same = (10_000,) * 10
    res, _ = A.assess(spec, snap(vstats("s", 100_000, bins=same), vstats("c", 100_000, bins=same)),
                      canary_weight_pct=50, state=None)
    assert by_name(res)["pred"].decision is Decision.ADVANCE
    moved = (0, 0, 0, 0, 0, 20_000, 20_000, 20_000, 20_000, 20_000)
    res, _ = A.assess(spec, snap(vstats("s", 100_000, bins=same), vstats("c", 100_000, bins=moved)),
                      canary_weight_pct=50, state=None)
    got = by_name(res)["pred"]
    assert got.decision is Decision.ROLLBACK and got.evidence["tv_lower"] > 0.1


def test_mean_log_latency_msprt_when_log_sums_exist():
    spec = make_spec([{"name": "p50", "kind": "latency", "quantile": 0.5, "tolerance": 0.1}])
    n_s, n_c, mu, sd = 19_000, 1_000, math.log(50), 0.5

    def sums(n, m):
        return (n * m, n * (m * m + sd * sd))

    res, _ = A.assess(spec, snap(vstats("s", n_s, log_sums=sums(n_s, mu)), vstats("c", n_c, log_sums=sums(n_c, mu + 0.3))),
                      canary_weight_pct=5, state=None)
    got = by_name(res)["p50"]
    assert got.evidence["test"] == "msprt_mean_log_latency"
    assert got.decision is Decision.ROLLBACK
    res, _ = A.assess(spec, snap(vstats("s", n_s, log_sums=sums(n_s, mu)), vstats("c", 100, log_sums=sums(100, mu + 0.3))),
                      canary_weight_pct=5, state=None)
    assert "burn-in" in by_name(res)["p50"].reason


def test_stages_combine_as_a_product_of_periods():
    spec = make_spec()
    _, st1 = A.assess(spec, snap(vstats("s", 19_000, 190), vstats("c", 1_000, 15)), canary_weight_pct=5, state=None)
    res, st2 = A.assess(spec, snap(vstats("s", 7_500, 75), vstats("c", 2_500, 40)), canary_weight_pct=25, state=st1)
    prior = label.GridPrior.around(math.log(2.0))
    ref = label.log_mixture([(15, 190, 0.05), (40, 75, 0.25)], 1.0, prior, 1)
    assert by_name(res)["error_rate"].evidence["log_e_value"] == pytest.approx(ref)
    assert SequentialState.from_dict(st2).stages == 2


def test_answer_depends_only_on_cumulative_counts():
    """Poll cadence, repeated and missed polls: the same window and state give the same answer."""
    spec = make_spec()
    rng = np.random.default_rng(3)
    cum_s = cum_c = err_s = err_c = 0
    answers = []
    for _ in range(30):
        cum_s += 1900
        cum_c += 100
        err_s += int(rng.binomial(1900, 0.01))
        err_c += int(rng.binomial(100, 0.012))
        answers.append((cum_s, cum_c, err_s, err_c))
    final = answers[-1]
    w = snap(vstats("s", final[0], final[2]), vstats("c", final[1], final[3]))
    direct = A.assess(spec, w, canary_weight_pct=5, state=None)
    for _ in range(3):  # retried / restarted polls
        again = A.assess(spec, w, canary_weight_pct=5, state=None)
        assert [a.to_dict() for a in again[0]] == [a.to_dict() for a in direct[0]]
        assert again[1] == direct[1]


carry = st.builds(
    MetricCarry, name=st.sampled_from(["a", "b.c", "x-1"]),
    periods=st.lists(st.tuples(*[st.floats(0, 1e7, allow_nan=False)] * 4), max_size=4).map(tuple),
    threshold_ms=st.none() | st.floats(1, 1e4), precision_sum=st.floats(-1e6, 1e6), precision=st.floats(0, 1e9),
    canary_obs=st.integers(0, 10**9), stable_obs=st.integers(0, 10**9),
    bins_canary=st.lists(st.integers(0, 10**9), max_size=10).map(tuple),
    bins_stable=st.lists(st.integers(0, 10**9), max_size=10).map(tuple))


@settings(max_examples=60, deadline=None)
@given(stages=st.integers(0, 20), srm_log_e=st.floats(-1e6, 1e6), metrics=st.lists(carry, max_size=4).map(tuple))
def test_state_round_trips_through_json(stages, srm_log_e, metrics):
    state = SequentialState(stages=stages, srm_log_e=srm_log_e, metrics=metrics)
    assert SequentialState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_foreign_state_is_rejected():
    with pytest.raises(ValueError, match="version"):
        SequentialState.from_dict({"version": 99, "stages": 1, "srm_log_e": 0.0})
    assert SequentialState.from_dict(None) == SequentialState()


def test_aa_false_rollback_through_the_analyzer_with_a_ramp():
    """A/A over a 5 -> 25 -> 50% ramp with state carried between stages: few false rollbacks."""
    rng = np.random.default_rng(5)
    spec = make_spec([{"name": "error_rate", "kind": "error_rate", "tolerance": 0.25, "mde": 1.0}])
    reps, fired = 150, 0
    for _ in range(reps):
        state = None
        hit = False
        for weight in (5, 25, 50):
            s = c = es = ec = 0
            for _ in range(5):
                nc = int(rng.binomial(8000, weight / 100))
                c += nc
                s += 8000 - nc
                ec += int(rng.binomial(nc, 0.01))
                es += int(rng.binomial(8000 - nc, 0.01))
                res, new_state = A.assess(spec, snap(vstats("s", s, es), vstats("c", c, ec)),
                                          canary_weight_pct=weight, state=state)
                hit |= by_name(res)["error_rate"].decision is Decision.ROLLBACK
            state = new_state
        fired += hit
    assert fired / reps <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps)


def test_quantile_threshold_never_sits_above_every_observation():
    """A threshold nothing exceeds carries no evidence: non-inferiority could never be shown."""
    from fakes import cumulative_from_latencies

    from canary.policy.evidence import Snapshot, VersionStats

    spec = make_spec([{"name": "p95", "kind": "latency", "quantile": 0.95, "tolerance": 0.5}])
    lat_c = [10 + 20 * i / 999 for i in range(1000)]  # uniform 10..30 ms: pooled p95 interpolates to ~45 ms
    lat_s = [10 + 20 * i / 2999 for i in range(3000)]
    window = Snapshot(stable=VersionStats(version="s", requests=3000, latency_cumulative=cumulative_from_latencies(lat_s)),
                      canary=VersionStats(version="c", requests=1000, latency_cumulative=cumulative_from_latencies(lat_c)),
                      start_s=0.0, end_s=1.0)
    (p95, _srm), _ = A.assess(spec, window, canary_weight_pct=25, state=None)
    assert p95.evidence["threshold_ms"] == 25.0
    assert p95.evidence["canary_events"] > 0 and p95.evidence["stable_events"] > 0
