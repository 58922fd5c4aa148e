"""Fuzz metrics-backend responses: garbage is a BackendError (or NoDataError), never a healthy-looking count."""

from __future__ import annotations

import json
import math
from typing import Any

import requests
from fuzz_inputs import FUZZ, GARBAGE, NUMBERS, TEXT, mutated
from hypothesis import example, given
from hypothesis import strategies as st

from canary.backends.base import ConnInfo
from canary.backends.cloudwatch import CloudWatchMetricsSource
from canary.backends.prometheus import MetricNames, PrometheusMetricsSource, stats_from_matrix
from canary.errors import BackendError, NoDataError
from canary.policy.evidence import VersionStats

NAMES = MetricNames.from_prefix("canary")
START_S, END_S = 1000.0, 1600.0
NAME_CHOICES = st.sampled_from([*NAMES.all(), "other_total"])
SAMPLE_VALUES = st.one_of(st.integers(-5, 10**6).map(str), NUMBERS.map(str), NUMBERS, TEXT, st.none(),
                          st.sampled_from(["NaN", "+Inf", "-Inf", "1e400", "-1"]))


def _series(name: str, values: list[list[Any]], **labels: str) -> dict[str, Any]:
    return {"metric": {"__name__": name, "version": "v2", **labels}, "values": values}


GOOD_MATRIX = [
    _series(NAMES.requests, [[900, "10"], [1200, "40"], [1500, "100"]]),
    _series(NAMES.errors, [[900, "0"], [1200, "1"], [1500, "3"]]),
    _series(NAMES.latency_bucket, [[900, "5"], [1500, "50"]], le="100"),
    _series(NAMES.latency_bucket, [[900, "10"], [1500, "100"]], le="+Inf"),
    _series(NAMES.prediction_bins, [[900, "1"], [1500, "9"]], bin="3"),
]


@st.composite
def series_lists(draw: st.DrawFn) -> Any:
    """Series of the right names and labels with arbitrary samples: decreasing (resets), negative, NaN, absurd."""
    out = []
    for _ in range(draw(st.integers(0, 5))):
        samples = draw(st.lists(st.lists(st.one_of(st.floats(800, 1700), SAMPLE_VALUES), min_size=2, max_size=2)
                                | GARBAGE, max_size=6))
        labels = draw(st.dictionaries(st.sampled_from(["le", "bin", "instance", "job"]),
                                      st.sampled_from(["+Inf", "100", "0", "3", "x", "", "99999999", "²"]) | GARBAGE,
                                      max_size=2))
        out.append({"metric": {"__name__": draw(NAME_CHOICES), "version": "v2", **labels}, "values": samples})
    return out


def _check_stats(stats: VersionStats) -> None:
    """A VersionStats read from a response holds whole, finite, consistent counts."""
    counts = [stats.requests, stats.errors, stats.kpi_events, *stats.latency_cumulative, *stats.prediction_bins]
    assert all(isinstance(c, int) and c >= 0 for c in counts), stats
    assert stats.errors <= stats.requests
    assert math.isfinite(stats.latency_sum_ms) and stats.latency_sum_ms >= 0
    assert len(stats.prediction_bins) <= 1000


@FUZZ
@given(result=series_lists() | mutated(GOOD_MATRIX) | GARBAGE)
@example(result=[_series(NAMES.requests, [[1200, "NaN"]])])
@example(result=[_series(NAMES.requests, [[1200, "+Inf"]])])
@example(result=[_series(NAMES.requests, [[900, "10"], [1200, "-5"], [1500, "20"]])])
@example(result=[_series(NAMES.requests, [[1200, "5"]]), _series(NAMES.prediction_bins, [[1200, "1"]],
                                                                 bin="99999999")])
@example(result=[_series(NAMES.requests, [[1200, "5"]]), _series(NAMES.prediction_bins, [[1200, "1"]], bin=["3"])])
@example(result=["not a series"])
def test_matrix_is_stats_or_a_value_error(result):
    """``stats_from_matrix`` raises NoDataError or ValueError (which the source turns into BackendError) only."""
    try:
        stats = stats_from_matrix("v2", result, NAMES, start_s=START_S, end_s=END_S)
    except NoDataError:
        return
    except ValueError as err:
        assert str(err)
        return
    _check_stats(stats)


class _Session:
    """The HTTP boundary: answers every GET with one status and body."""

    def __init__(self, status: int, body: str) -> None:
        self.status, self.body = status, body

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        resp = requests.Response()
        resp.status_code, resp._content, resp.url = self.status, self.body.encode("utf-8", "surrogatepass"), url
        return resp


def _body(value: Any) -> str:
    try:
        return json.dumps(value)
    except (ValueError, TypeError, OverflowError):
        return str(value)


API_BODIES = st.one_of(
    series_lists().map(lambda r: {"status": "success", "data": {"resultType": "matrix", "result": r}}),
    mutated({"status": "success", "data": {"resultType": "matrix", "result": GOOD_MATRIX}}),
    GARBAGE,
).map(_body) | st.text(max_size=100)


@FUZZ
@given(status=st.sampled_from([200, 200, 200, 400, 404, 422, 503]), body=API_BODIES,
       segments=st.booleans())
def test_api_responses_are_stats_or_backend_errors(status, body, segments):
    source = PrometheusMetricsSource(ConnInfo(conn_id="prom", host="prom.example", port=9090), endpoint="e",
                                     session=_Session(status, body), retries=0, sleep=lambda _s: None)
    try:
        if segments:
            found = source.segment_stats("v2", by="device", values=["ios", "web"], start_s=START_S, end_s=END_S)
            stats_list = list(found.values())
        else:
            stats_list = [source.version_stats("v2", start_s=START_S, end_s=END_S)]
    except BackendError as err:  # NoDataError is one
        assert str(err).startswith("prometheus: ")
        return
    for stats in stats_list:
        _check_stats(stats)


class _CloudWatch:
    def __init__(self, pages: list[Any]) -> None:
        self.pages = pages

    def get_metric_data(self, **kwargs: Any) -> Any:
        return self.pages.pop(0) if self.pages else {}


CW_IDS = st.sampled_from(["requests", "errors0", "errors1", "latencysum", "latencycount"]) | GARBAGE
CW_VALUES = st.lists(st.one_of(st.integers(-5, 10**6), NUMBERS, st.booleans(), TEXT), max_size=4) | GARBAGE
CW_RESULTS = st.fixed_dictionaries({"Id": CW_IDS, "Values": CW_VALUES},
                                   optional={"StatusCode": st.sampled_from(["Complete", "PartialData",
                                                                            "InternalError"])})


@FUZZ
@given(results=st.lists(CW_RESULTS, max_size=6))
@example(results=[{"Id": "requests", "Values": [float("nan")]}])
@example(results=[{"Id": "requests", "Values": [-5.0]}, {"Id": "errors0", "Values": [0.0]}])
@example(results=[{"Id": "requests", "Values": [1e308, 1e308]}])
@example(results=[{"Id": "unknown", "Values": [1.0]}])
@example(results=[{"Id": "requests", "Values": [10**400]}])  # an int beyond any float: found under xdist
def test_cloudwatch_results_are_stats_or_backend_errors(results):
    source = CloudWatchMetricsSource(ConnInfo(), endpoint="churn", period_s=60, settle_s=0,
                                     cloudwatch_client=_CloudWatch([{"MetricDataResults": results}]))
    try:
        stats = source.version_stats("v2", start_s=0.0, end_s=600.0)
    except BackendError as err:
        assert str(err).startswith("cloudwatch: ")
        return
    _check_stats(stats)
