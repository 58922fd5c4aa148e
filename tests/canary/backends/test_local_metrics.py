"""LocalMetricsSource over a real metrics store: exact counts and buckets, windows, no-data, shadow pairs."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes import cumulative_from_latencies

from canary.backends import MetricsSource, build_backend
from canary.backends.base import (
    ConnInfo,
    SegmentedMetricsSource,
    ShadowOutputSource,
    TargetableMetricsSource,
    shadow_outputs,
)
from canary.backends.local_metrics import LocalMetricsSource
from canary.backends.local_serving import LocalTrafficRouter
from canary.errors import BackendError, ConfigError, NoDataError
from canary.policy.evidence import (
    DEFAULT_LATENCY_BUCKETS_MS,
    VersionStats,
    bin_index,
)
from canary.serving.store import MetricsStore, RequestRecord
from canary.serving.traffic import run_traffic

T0 = 1_700_000_000.0


def record(version: str, ts: float, *, latency_ms: float = 3.0, error: bool = False, score: float | None = 0.42,
           kpi: bool = False, mirrored: bool = False, request_id: str = "", endpoint: str = "churn") -> RequestRecord:
    return RequestRecord(ts=ts, endpoint=endpoint, version=version, latency_ms=latency_ms, status=500 if error else 200,
                         error=error, score=None if error else score,
                         label=None if error or score is None else int(score >= 0.5), kpi_event=kpi,
                         segment="returning", request_id=request_id or f"{version}-{ts}-{mirrored}",
                         mirrored=mirrored)


@pytest.fixture
def write(store_path: Path) -> Iterator[Callable[..., None]]:
    """Return a function appending records to the store and flushing them."""
    store = MetricsStore(store_path)

    def write(*records: RequestRecord) -> None:
        for r in records:
            store.append(r)
        store.flush()

    yield write
    store.close()


@pytest.fixture
def source(store_path: Path) -> LocalMetricsSource:
    return LocalMetricsSource(ConnInfo(conn_id="m", extra={"path": str(store_path)}), endpoint="churn")


def test_factory_builds_a_metrics_source(store_path: Path) -> None:
    source = build_backend("metrics", "local", ConnInfo(host=str(store_path)), endpoint="churn")
    assert isinstance(source, LocalMetricsSource) and isinstance(source, MetricsSource)
    assert source.path == store_path


def test_stats_match_what_was_recorded(write: Callable[..., None], source: LocalMetricsSource) -> None:
    latencies = [0.7, 4.9, 5.0, 7.5, 30.0, 120.0, 6000.0]
    scores = [0.0, 0.05, 0.1, 0.55, 0.999, 1.0, 0.42]
    errors = [False, False, False, True, False, False, True]
    kpis = [True, False, True, False, False, True, False]
    write(*[record("v1", T0 + i, latency_ms=ms, error=err, score=s, kpi=k)
            for i, (ms, s, err, k) in enumerate(zip(latencies, scores, errors, kpis, strict=True))],
          record("v1", T0 + 1, mirrored=True), record("v1", T0 + 1, endpoint="other"), record("v2", T0 + 1))
    stats = source.version_stats("v1", start_s=T0, end_s=T0 + 60)
    bins = [0] * 10
    for s, err in zip(scores, errors, strict=True):
        bins[bin_index(s)] += not err
    assert (stats.requests, stats.errors, stats.kpi_events) == (7, 2, 3)
    assert stats.latency_buckets_ms == DEFAULT_LATENCY_BUCKETS_MS
    assert stats.latency_cumulative == cumulative_from_latencies(latencies)
    assert stats.latency_cumulative[:3] == (3, 4, 4)  # 5.0 is inside le=5 (Prometheus "<=")
    assert list(stats.prediction_bins) == bins == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert stats.latency_sum_ms == pytest.approx(sum(latencies))
    assert stats.log_latency_sum == pytest.approx(sum(math.log(ms) for ms in latencies))
    assert stats.log_latency_sumsq == pytest.approx(sum(math.log(ms) ** 2 for ms in latencies))


def test_window_is_start_inclusive_end_exclusive(write: Callable[..., None], source: LocalMetricsSource) -> None:
    write(*[record("v1", T0 + dt) for dt in (0.0, 10.0, 19.999, 20.0)])
    assert source.version_stats("v1", start_s=T0, end_s=T0 + 20).requests == 3
    assert source.version_stats("v1", start_s=T0 + 10, end_s=T0 + 20).requests == 2
    assert source.version_stats("v1", start_s=T0 + 20, end_s=T0 + 30).requests == 1
    cumulative = source.version_stats("v1", start_s=T0, end_s=T0 + 30)
    earlier = source.version_stats("v1", start_s=T0, end_s=T0 + 10)
    assert cumulative.minus(earlier) == source.version_stats("v1", start_s=T0 + 10, end_s=T0 + 30)


def test_empty_window_of_a_known_version_is_zero(write: Callable[..., None], source: LocalMetricsSource) -> None:
    write(record("v1", T0))
    stats = source.version_stats("v1", start_s=T0 + 100, end_s=T0 + 200)
    assert stats == VersionStats(version="v1", log_latency_sum=0.0, log_latency_sumsq=0.0)


def test_no_data_for_a_version_that_never_served(write: Callable[..., None], source: LocalMetricsSource) -> None:
    write(record("v1", T0), record("v2", T0, mirrored=True), record("v3", T0, endpoint="other"))
    for version in ("v2", "v3", "v9"):  # only mirrored / only elsewhere / never seen
        with pytest.raises(NoDataError, match=f"version '{version}' has never served a request on endpoint 'churn'"):
            source.version_stats(version, start_s=T0 - 10, end_s=T0 + 10)


def test_configuration_and_store_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="extra.path"):
        LocalMetricsSource(ConnInfo(conn_id="m", host="metrics-host"), endpoint="churn")
    missing = LocalMetricsSource(ConnInfo(extra={"path": str(tmp_path / "absent.db")}), endpoint="churn")
    with pytest.raises(BackendError, match="absent.db") as err:
        missing.version_stats("v1", start_s=0, end_s=1)
    assert not isinstance(err.value, NoDataError)
    assert not (tmp_path / "absent.db").exists()  # read-only: never creates the store


def test_shadow_summary_joins_mirrored_and_served_answers(write: Callable[..., None],
                                                           source: LocalMetricsSource) -> None:
    pairs = [  # (stable error, stable score, candidate error, candidate score)
        (False, 0.20, False, 0.30),  # labels agree
        (False, 0.60, False, 0.40),  # disagree
        (True, None, False, 0.10),
        (False, 0.90, True, None),
    ]
    records = []
    for i, (s_err, s_score, c_err, c_score) in enumerate(pairs):
        rid = f"req-{i}"
        records += [record("v1", T0 + i, error=s_err, score=s_score, latency_ms=3.0, request_id=rid),
                    record("v2", T0 + i, error=c_err, score=c_score, latency_ms=40.0, mirrored=True, request_id=rid)]
    records += [record("v2", T0 + 1, mirrored=True, request_id="unpaired"),
                record("v1", T0 + 100, request_id="late"), record("v2", T0 + 100, mirrored=True, request_id="late"),
                record("v2", T0 + 2, request_id="served-candidate")]
    write(*records)
    summary = source.shadow_summary(stable="v1", candidate="v2", start_s=T0, end_s=T0 + 10)
    assert (summary.pairs, summary.stable_errors, summary.candidate_errors) == (4, 1, 1)
    assert summary.prediction_agreement == 0.5
    assert summary.mean_abs_score_diff == pytest.approx(0.15)
    # histogram_quantile over the latency buckets: 4 x 3 ms -> 5 * 0.95; 4 x 40 ms -> 25 + 25 * 0.95.
    assert summary.stable_latency_p95_ms == pytest.approx(4.75)
    assert summary.candidate_latency_p95_ms == pytest.approx(48.75)
    # The paired tests' counts: one pair failed by stable alone, one by the candidate alone; of the two
    # pairs both answered, one disagrees; no slow threshold asked for, so no slow pairs.
    assert (summary.candidate_only_errors, summary.stable_only_errors) == (1, 1)
    assert (summary.answered_pairs, summary.disagreements) == (2, 1)
    assert (summary.slow_threshold_ms, summary.candidate_only_slow, summary.stable_only_slow) == (None, 0, 0)
    slow = source.shadow_summary(stable="v1", candidate="v2", start_s=T0, end_s=T0 + 10, slow_threshold_ms=10.0)
    assert (slow.slow_threshold_ms, slow.candidate_only_slow, slow.stable_only_slow) == (10.0, 4, 0)
    assert source.shadow_summary(stable="v1", candidate="v2", start_s=T0, end_s=T0 + 10,
                                 slow_threshold_ms=50.0).candidate_only_slow == 0
    # Of the two answered pairs, the candidate scores 0.1 higher on one and 0.2 lower on the other.
    shifted = source.shadow_summary(stable="v1", candidate="v2", start_s=T0, end_s=T0 + 10, score_shift=0.05)
    assert (shifted.score_shift, shifted.scores_higher, shifted.scores_lower) == (0.05, 1, 1)
    wide = source.shadow_summary(stable="v1", candidate="v2", start_s=T0, end_s=T0 + 10, score_shift=0.15)
    assert (wide.scores_higher, wide.scores_lower) == (0, 1)
    assert (summary.score_shift, summary.scores_higher, summary.scores_lower) == (None, 0, 0)
    # Scores of the two pairs both answered, per tenth: stable 0.2 and 0.6, the candidate 0.3 and 0.4.
    assert summary.stable_score_bins == (0, 0, 1, 0, 0, 0, 1, 0, 0, 0)
    assert summary.candidate_score_bins == (0, 0, 0, 1, 1, 0, 0, 0, 0, 0)
    # The mean-difference test's sums over the two pairs both answered: +0.1 and -0.2 (failed pairs left out).
    assert summary.score_diff_sum == pytest.approx(0.1 - 0.2)
    assert summary.score_diff_sum_sq == pytest.approx(0.1 ** 2 + 0.2 ** 2)
    assert (shifted.score_diff_sum, slow.score_diff_sum_sq) == (summary.score_diff_sum, summary.score_diff_sum_sq)


def test_shadow_score_differences_are_clipped_to_the_tests_domain(write: Callable[..., None],
                                                                 source: LocalMetricsSource) -> None:
    """A score outside [0, 1] (the output expectations fail it) cannot push a difference beyond [-1, 1]."""
    write(record("v1", T0, score=0.1, request_id="a"), record("v2", T0, score=1.6, mirrored=True, request_id="a"),
          record("v1", T0 + 1, score=0.7, request_id="b"), record("v2", T0 + 1, score=0.2, mirrored=True, request_id="b"))
    summary = source.shadow_summary(stable="v1", candidate="v2", start_s=T0, end_s=T0 + 10)
    assert summary.answered_pairs == 2
    assert summary.score_diff_sum == pytest.approx(1.0 - 0.5)
    assert summary.score_diff_sum_sq == pytest.approx(1.0 + 0.25)


def test_shadow_summary_without_pairs(write: Callable[..., None], source: LocalMetricsSource) -> None:
    write(record("v1", T0))
    summary = source.shadow_summary(stable="v1", candidate="v2", start_s=T0, end_s=T0 + 10)
    assert summary.to_dict() == {"pairs": 0, "stable_errors": 0, "candidate_errors": 0, "prediction_agreement": None,
                                 "mean_abs_score_diff": None, "stable_latency_p95_ms": None,
                                 "candidate_latency_p95_ms": None, "candidate_only_errors": 0, "stable_only_errors": 0,
                                 "answered_pairs": 0, "disagreements": 0, "slow_threshold_ms": None,
                                 "candidate_only_slow": 0, "stable_only_slow": 0, "score_shift": None,
                                 "scores_higher": 0, "scores_lower": 0, "stable_score_bins": (),
                                 "candidate_score_bins": (), "score_diff_sum": 0.0, "score_diff_sum_sq": 0.0}


def test_stats_of_real_traffic_match_the_client(serving_url: str, router: LocalTrafficRouter, store_path: Path,
                                                flush: Callable[[], None]) -> None:
    """End to end: what the traffic generator saw is what the source reads, while the server writes."""
    router.deploy("v1")
    router.deploy("v2")
    router.set_weights({"v1": 50, "v2": 50})
    router.set_faults("v2", error_rate=0.2, latency_ms=30)
    source = LocalMetricsSource(ConnInfo(extra={"path": str(store_path)}), endpoint="churn")
    start_s = time.time()
    traffic = run_traffic(serving_url, "churn", rps=300, duration_s=1.0, seed=5)
    flush()
    end_s = time.time() + 1
    v1, v2 = (source.version_stats(v, start_s=start_s, end_s=end_s) for v in ("v1", "v2"))
    assert (v1.requests, v2.requests) == (traffic.by_version["v1"], traffic.by_version["v2"])
    assert v1.errors + v2.errors == traffic.errors > 0 and v1.errors == 0
    # The fault adds 30 ms to every v2 answer; v1 answers are fast at least some of the time, even on a
    # loaded machine (a p95 bound on v1 would measure the load, not the store).
    assert v2.latency_quantile_ms(0.05) > 25 > v1.latency_quantile_ms(0.05)
    assert sum(v2.prediction_bins) == v2.requests - v2.errors

    router.set_weights({"v1": 100, "v2": 0})
    router.set_faults("v2")
    router.set_mirror("v2", 100)
    shadow_start_s = time.time()
    traffic = run_traffic(serving_url, "churn", rps=300, duration_s=0.5, seed=6)
    flush()
    summary = source.shadow_summary(stable="v1", candidate="v2", start_s=shadow_start_s, end_s=end_s + 60)
    assert summary.pairs == traffic.sent == 150
    assert summary.prediction_agreement is not None and summary.prediction_agreement > 0.9
    assert summary.mean_abs_score_diff is not None and summary.mean_abs_score_diff < 0.05


def test_shadow_outputs_are_the_candidates_mirrored_answers_in_the_window(write: Callable[..., None],
                                                                          source: LocalMetricsSource) -> None:
    write(record("v2", T0 + 2, mirrored=True, request_id="b", score=0.7, latency_ms=9.0),
          record("v2", T0 + 1, mirrored=True, request_id="a", error=True, latency_ms=40.0),
          record("v1", T0 + 1, request_id="a"),  # the served answer: stable's, not the candidate's
          record("v2", T0 + 3, request_id="served"), record("v1", T0 + 3, mirrored=True, request_id="v1-mirror"),
          record("v2", T0 + 3, mirrored=True, request_id="elsewhere", endpoint="other"),
          record("v2", T0 + 10, mirrored=True, request_id="late"), record("v2", T0 - 1, mirrored=True, request_id="early"))
    outputs = source.shadow_outputs("v2", start_s=T0, end_s=T0 + 10)
    assert outputs == [
        {"request_id": "a", "ts": T0 + 1, "score": None, "label": None, "latency_ms": 40.0, "error": 1},
        {"request_id": "b", "ts": T0 + 2, "score": 0.7, "label": 1, "latency_ms": 9.0, "error": 0},
    ]
    assert isinstance(source, ShadowOutputSource)
    assert shadow_outputs(source, "v2", start_s=T0, end_s=T0 + 10) == outputs
    assert source.shadow_outputs("v9", start_s=T0, end_s=T0 + 10) == []


def test_shadow_outputs_of_real_mirrored_traffic(serving_url: str, router: LocalTrafficRouter, store_path: Path,
                                                 flush: Callable[[], None]) -> None:
    """The candidate's broken scores reach the outputs exactly as the serving layer recorded them."""
    router.deploy("v1")
    router.deploy("v2")
    router.set_weights({"v1": 100})
    router.set_faults("v2", score_out_of_range=0.5, error_rate=0.1)
    router.set_mirror("v2", 100)
    source = LocalMetricsSource(ConnInfo(extra={"path": str(store_path)}), endpoint="churn")
    start_s = time.time()
    traffic = run_traffic(serving_url, "churn", rps=300, duration_s=0.5, seed=7)
    flush()
    outputs = source.shadow_outputs("v2", start_s=start_s, end_s=time.time() + 1)
    assert len(outputs) == traffic.sent == 150 and traffic.errors == 0  # stable served every request
    assert [o["ts"] for o in outputs] == sorted(o["ts"] for o in outputs)
    failed = [o for o in outputs if o["error"]]
    assert failed and all(o["score"] is None and o["label"] is None for o in failed)
    answered = [o for o in outputs if not o["error"]]
    out_of_range = [o for o in answered if o["score"] > 1.0]
    assert 0.3 < len(out_of_range) / len(answered) < 0.7
    assert all(o["label"] in (0, 1) and o["latency_ms"] > 0 for o in answered)
    served = source.shadow_summary(stable="v1", candidate="v2", start_s=start_s, end_s=time.time() + 1)
    assert served.pairs == len(outputs)


def test_segment_stats_split_by_an_attribute_or_the_user_segment(write: Callable[..., None],
                                                                 source: LocalMetricsSource) -> None:
    def rec(ts: float, device: str | None, *, error: bool = False, segment: str = "returning") -> RequestRecord:
        return dataclasses.replace(record("v1", ts, error=error, request_id=f"r{ts}"), segment=segment,
                                   attributes={"device": device, "region": "eu-west"} if device else {})

    write(rec(T0 + 1, "android", error=True), rec(T0 + 2, "android"), rec(T0 + 3, "ios", segment="new"),
          rec(T0 + 4, None), rec(T0 + 5, "tv"), rec(T0 + 20, "android"),
          record("v2", T0 + 1, request_id="other-version"))
    got = source.segment_stats("v1", by="device", values=["android", "ios", "web"], start_s=T0, end_s=T0 + 10)
    assert {v: (s.requests, s.errors) for v, s in got.items()} == {"android": (2, 1), "ios": (1, 0), "web": (0, 0)}
    assert got["android"].latency_observations == 2 and sum(got["android"].prediction_bins) == 1
    whole = source.version_stats("v1", start_s=T0, end_s=T0 + 10)
    assert whole.requests == 5  # the request without a device and the "tv" one count overall only
    by_user = source.segment_stats("v1", by="segment", values=["new", "returning"], start_s=T0, end_s=T0 + 10)
    assert {v: s.requests for v, s in by_user.items()} == {"new": 1, "returning": 4}
    assert isinstance(source, SegmentedMetricsSource)


def test_segment_stats_of_real_traffic_with_a_fault_confined_to_one_device(
        serving_url: str, router: LocalTrafficRouter, store_path: Path, flush: Callable[[], None]) -> None:
    """The traffic generator's users send their device; a fault ``when: {device: android}`` hits android only."""
    router.deploy("v1")
    router.set_weights({"v1": 100})
    router.set_faults("v1", error_rate=0.5, when={"device": "android"})
    source = LocalMetricsSource(ConnInfo(extra={"path": str(store_path)}), endpoint="churn")
    start_s = time.time()
    traffic = run_traffic(serving_url, "churn", rps=300, duration_s=1.0, seed=8)
    flush()
    got = source.segment_stats("v1", by="device", values=["android", "ios", "web"], start_s=start_s,
                               end_s=time.time() + 1)
    assert sum(s.requests for s in got.values()) == traffic.sent == 300
    assert got["ios"].errors == got["web"].errors == 0 and got["android"].errors == traffic.errors > 0
    assert all(s.requests > 0 for s in got.values())


def test_label_stats_of_real_traffic_that_sends_its_labels_late(
        serving_url: str, serving_conn: ConnInfo, router: LocalTrafficRouter, store_path: Path,
        flush: Callable[[], None]) -> None:
    """The traffic generator sends true labels back 0.3 s late; v2 flips 40% of its predictions: wrong more often."""
    from canary.backends.base import LabelledMetricsSource
    from canary.serving.traffic import LabelFeedback

    token = serving_conn.password  # the admin token: the feedback route's default
    assert token

    router.deploy("v1")
    router.deploy("v2")
    router.set_weights({"v1": 50, "v2": 50})
    router.set_faults("v2", score_flip=0.4)
    source = LocalMetricsSource(ConnInfo(extra={"path": str(store_path)}), endpoint="churn")
    assert isinstance(source, LabelledMetricsSource)
    start_s = time.time()
    assert source.label_stats("v1", start_s=start_s, end_s=start_s + 60) == {None: (0, 0)}  # no feedback table yet
    traffic = run_traffic(serving_url, "churn", rps=300, duration_s=1.5, seed=9,
                          feedback=LabelFeedback(token=token, share=0.8, delay_s=0.3))
    flush()
    end_s = time.time() + 1
    # Labels still in flight when the traffic stopped are dropped, never sent early.
    assert traffic.labels_refused == 0 and traffic.labels_sent + traffic.labels_pending < traffic.ok
    assert traffic.labels_sent > 0.5 * traffic.ok
    got = {v: source.label_stats(v, start_s=start_s, end_s=end_s, by="device", values=["android", "ios", "web"])
           for v in ("v1", "v2")}
    assert got["v1"][None][0] + got["v2"][None][0] == traffic.labels_sent
    for v in ("v1", "v2"):
        assert sum(got[v][d][0] for d in ("android", "ios", "web")) == got[v][None][0]
    wrong_rate = {v: got[v][None][1] / got[v][None][0] for v in ("v1", "v2")}
    assert wrong_rate["v2"] > wrong_rate["v1"] + 0.15, wrong_rate
    # A window that ends before the requests: nothing labelled in it.
    assert source.label_stats("v1", start_s=start_s - 60, end_s=start_s)[None] == (0, 0)


def test_within_counts_only_the_targeted_population(write: Callable[..., None], source: LocalMetricsSource) -> None:
    def rec(ts: float, version: str, region: str | None, *, plan: str = "free", segment: str = "returning",
            error: bool = False) -> RequestRecord:
        attributes = {"plan": plan, **({"region": region} if region else {})}
        return dataclasses.replace(record(version, ts, error=error, request_id=f"{version}-{ts}"), segment=segment,
                                   attributes=attributes)

    write(rec(T0 + 1, "v1", "eu-west", error=True), rec(T0 + 2, "v1", "eu-west", plan="internal"),
          rec(T0 + 3, "v1", "us-east"), rec(T0 + 4, "v1", None), rec(T0 + 5, "v1", "eu-north", segment="new"),
          rec(T0 + 6, "v2", "eu-west"), rec(T0 + 7, "v2", "us-east", error=True))
    europe = source.within({"region": ["eu-west", "eu-north"]})
    assert isinstance(europe, TargetableMetricsSource) and europe is not source
    stats = {v: europe.version_stats(v, start_s=T0, end_s=T0 + 10) for v in ("v1", "v2")}
    assert {v: (s.requests, s.errors) for v, s in stats.items()} == {"v1": (3, 1), "v2": (1, 0)}
    assert source.version_stats("v1", start_s=T0, end_s=T0 + 10).requests == 5  # the source itself is unchanged
    # Every attribute must match; the user segment derived by the serving layer is an attribute too.
    both = source.within({"region": ["eu-west", "eu-north"], "plan": ["internal"]})
    assert both.version_stats("v1", start_s=T0, end_s=T0 + 10).requests == 1
    new_users = source.within({"segment": ["new"]})
    assert new_users.version_stats("v1", start_s=T0, end_s=T0 + 10).requests == 1
    # Segments within the population: a segment's requests outside it do not count.
    by_plan = europe.segment_stats("v1", by="plan", values=["free", "internal"], start_s=T0, end_s=T0 + 10)
    assert {v: s.requests for v, s in by_plan.items()} == {"free": 2, "internal": 1}
    # Nobody in the population: zero counts (not enough data yet), never the whole endpoint's.
    nobody = source.within({"region": ["ap-south"]})
    assert nobody.version_stats("v1", start_s=T0, end_s=T0 + 10).requests == 0
    # Values are bound parameters, never SQL text.
    tricky = source.within({"region": ["eu-west') OR 1=1 --"]})
    assert tricky.version_stats("v1", start_s=T0, end_s=T0 + 10).requests == 0


def test_targeted_traffic_reaches_the_canary_only_in_its_population(
        serving_url: str, router: LocalTrafficRouter, store_path: Path, flush: Callable[[], None]) -> None:
    """The serving layer routes by the targeting rule; the metrics source reads the same population."""
    router.deploy("v1")
    router.deploy("v2")
    router.set_targeting("v2", {"region": ["eu-west"]})
    router.set_weights({"v1": 50, "v2": 50})
    assert router.state()["targeting"] == {"version": "v2", "match": {"region": ["eu-west"]}}
    source = LocalMetricsSource(ConnInfo(extra={"path": str(store_path)}), endpoint="churn")
    start_s = time.time()
    traffic = run_traffic(serving_url, "churn", rps=400, duration_s=1.0, seed=12)
    flush()
    end_s = time.time() + 1
    by_region = {v: source.segment_stats(v, by="region", values=["eu-west", "us-east", "ap-south"], start_s=start_s,
                                         end_s=end_s) for v in ("v1", "v2")}
    assert by_region["v2"]["us-east"].requests == by_region["v2"]["ap-south"].requests == 0
    eu = {v: by_region[v]["eu-west"].requests for v in ("v1", "v2")}
    assert sum(eu.values()) > 0.25 * traffic.sent and 0.3 < eu["v2"] / sum(eu.values()) < 0.7, eu
    europe = source.within({"region": ["eu-west"]})
    assert {v: europe.version_stats(v, start_s=start_s, end_s=end_s).requests for v in ("v1", "v2")} == eu
    # Lifting the rule exposes everyone; removing the version lifts it too.
    router.set_targeting(None)
    assert router.state()["targeting"] is None
    router.set_targeting("v2", {"region": ["eu-west"]})
    router.set_weights({"v1": 100})
    router.remove("v2")
    assert router.state()["targeting"] is None


def test_outcome_stats_of_real_traffic_that_sends_conversions_late(
        serving_url: str, serving_conn: ConnInfo, router: LocalTrafficRouter, store_path: Path,
        flush: Callable[[], None]) -> None:
    """Users convert more often when the prediction was right: a version flipping every prediction converts less
    (2% + 20% x its accuracy: about 6% against 18% for stable); every served request of the window is exposure,
    with an outcome or not."""
    from canary.serving.traffic import LabelFeedback

    assert serving_conn.password
    router.deploy("v1")
    router.deploy("v2")
    router.set_weights({"v1": 50, "v2": 50})
    router.set_faults("v2", score_flip=1.0)
    source = LocalMetricsSource(ConnInfo(extra={"path": str(store_path)}), endpoint="churn")
    start_s = time.time()
    empty = source.outcome_stats("v1", names=["conversion"], start_s=start_s, end_s=start_s + 60)
    assert empty == {None: (0, {"conversion": 0})}  # no request, no feedback table yet
    traffic = run_traffic(serving_url, "churn", rps=400, duration_s=2.0, seed=13,
                          feedback=LabelFeedback(token=serving_conn.password, share=0.1, delay_s=0.2,
                                                 outcome="conversion"))
    flush()
    end_s = time.time() + 1
    got = {v: source.outcome_stats(v, names=["conversion", "refund"], start_s=start_s, end_s=end_s, by="device",
                                   values=["android", "ios", "web"]) for v in ("v1", "v2")}
    served = {v: source.version_stats(v, start_s=start_s, end_s=end_s).requests for v in ("v1", "v2")}
    for v in ("v1", "v2"):
        aged, events = got[v][None]
        assert aged == served[v] and events["refund"] == 0
        assert sum(got[v][d][0] for d in ("android", "ios", "web")) == aged
        assert sum(got[v][d][1]["conversion"] for d in ("android", "ios", "web")) == events["conversion"]
    rate = {v: got[v][None][1]["conversion"] / got[v][None][0] for v in ("v1", "v2")}
    assert rate["v1"] > rate["v2"] + 0.04 and traffic.labels_refused == 0, rate
    # Targeted: the population's requests only.
    web = source.within({"device": ["web"]}).outcome_stats("v1", names=["conversion"], start_s=start_s, end_s=end_s)
    assert web[None] == (got["v1"]["web"][0], {"conversion": got["v1"]["web"][1]["conversion"]})
