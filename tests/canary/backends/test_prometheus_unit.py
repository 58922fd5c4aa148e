"""Prometheus metrics source: counter arithmetic, bucket mapping, query building and error mapping.

The HTTP boundary is faked with a ``requests`` transport adapter that answers literal API JSON; the
source itself (session, retries, auth, parsing) runs unchanged.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from requests.adapters import BaseAdapter

from canary.backends import build_backend
from canary.backends.base import ConnInfo
from canary.backends.prometheus import (
    MetricNames,
    PrometheusMetricsSource,
    bucket_counts,
    extra_matcher_list,
    map_bounds_ms,
    redact_url,
    restart_windows,
    stats_from_matrix,
    window_increase,
)
from canary.errors import BackendError, ConfigError, NoDataError
from canary.policy.evidence import DEFAULT_LATENCY_BUCKETS_MS

INF = math.inf
CONN = ConnInfo(conn_id="prom_test", host="prom.example", port=9090)
DEFAULT_QUERY_NAMES = ("canary_requests_total|canary_request_errors_total|canary_request_latency_ms_bucket|"
                       "canary_request_latency_ms_sum|canary_kpi_events_total|canary_prediction_score_bin_total")


# --- the fake HTTP layer ---------------------------------------------------------------------------------

Reply = tuple[int, str] | Exception


class FakeTransport(BaseAdapter):
    """Answer each request with the next queued reply (status, body) or raise the queued exception."""

    def __init__(self, replies: list[Reply]) -> None:
        super().__init__()
        self.replies = list(replies)
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):
        self.requests.append(request)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        status, body = reply
        resp = requests.Response()
        resp.status_code = status
        resp._content = body.encode()
        resp.url = request.url
        resp.request = request
        resp.headers["Content-Type"] = "application/json"
        return resp

    def close(self) -> None:
        pass

    def params(self, i: int = -1) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.requests[i].url).query).items()}


def make_source(replies: list[Reply], conn: ConnInfo = CONN, **options) -> tuple[PrometheusMetricsSource,
                                                                                   FakeTransport, list[float]]:
    transport = FakeTransport(replies)
    session = requests.Session()
    session.mount("http://", transport)
    session.mount("https://", transport)
    sleeps: list[float] = []
    source = PrometheusMetricsSource(conn, endpoint="churn", session=session, sleep=sleeps.append, **options)
    return source, transport, sleeps


def matrix(*series: tuple[dict[str, str], list[tuple[float, float]]]) -> tuple[int, str]:
    result = [{"metric": labels, "values": [[t, str(v)] for t, v in values]} for labels, values in series]
    return 200, json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}})


def labels(name: str, pod: str = "a", **extra: str) -> dict[str, str]:
    return {"__name__": name, "endpoint": "churn", "version": "v2", "mirrored": "false", "pod": pod, **extra}


# --- counter arithmetic ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("samples", "start", "end", "expected"), [
    pytest.param([(0, 10), (10, 20), (20, 30)], 5, 20, 20, id="plain-difference-from-baseline"),
    pytest.param([(0, 10), (10, 20), (20, 30)], 10, 20, 10, id="sample-at-start-is-the-baseline"),
    pytest.param([(0, 10), (10, 20), (20, 30)], 0, 15, 10, id="samples-after-end-ignored"),
    pytest.param([(0, 100), (10, 120), (20, 5), (30, 25)], 5, 30, 45, id="reset-counts-new-value-from-zero"),
    pytest.param([(0, 100), (10, 3), (20, 1), (30, 4)], 5, 30, 7, id="two-resets"),
    pytest.param([(0, 100), (10, 100)], 5, 30, 0, id="no-traffic"),
    pytest.param([(12, 7), (20, 9)], 5, 30, 9, id="series-born-in-window-counts-from-zero"),
    pytest.param([(0, 50), (10, 60)], 20, 30, 0, id="series-gone-before-window"),
    pytest.param([(0, 50), (10, 60)], 5, 30, 10, id="series-gone-within-window-keeps-its-increments"),
    pytest.param([(20, 30), (0, 10), (10, 20)], 5, 20, 20, id="unsorted-input"),
    pytest.param([], 0, 10, 0, id="empty"),
    pytest.param([(0, 1.5), (10, 4.0)], 5, 10, 2.5, id="float-counter"),
])
def test_window_increase(samples, start, end, expected):
    assert window_increase(samples, start, end) == pytest.approx(expected)


# --- latency buckets ---------------------------------------------------------------------------------------

DEFAULT_LES = ["+Inf" if math.isinf(b) else repr(b) for b in DEFAULT_LATENCY_BUCKETS_MS]


@pytest.mark.parametrize(("les", "scale", "expected"), [
    (["5.0", "+Inf"], 1.0, {"5.0": 5.0, "+Inf": INF}),
    (["5", "1e3"], 1.0, {"5": 5.0, "1e3": 1000.0}),
    (["0.005", "0.075", "2.5", "+Inf"], 1000.0, {"0.005": 5.0, "0.075": 75.0, "2.5": 2500.0, "+Inf": INF}),
    (["0.25"], 1000.0, {"0.25": 250.0}),
])
def test_map_bounds_ms(les, scale, expected):
    assert map_bounds_ms(les, scale) == expected


def test_default_buckets_are_returned_as_the_default_tuple():
    increments = {le: float(i) for i, le in enumerate(DEFAULT_LES)}
    buckets, cumulative = bucket_counts(increments, [set(DEFAULT_LES)])
    assert buckets is DEFAULT_LATENCY_BUCKETS_MS
    assert cumulative == tuple(range(len(DEFAULT_LES)))


def test_seconds_histogram_with_default_bounds_maps_to_the_default_tuple():
    les = ["+Inf" if math.isinf(b) else repr(b / 1000) for b in DEFAULT_LATENCY_BUCKETS_MS]
    buckets, _ = bucket_counts(dict.fromkeys(les, 1.0), [set(les)], scale_to_ms=1000.0)
    assert buckets is DEFAULT_LATENCY_BUCKETS_MS


@pytest.mark.parametrize(("increments", "les_per_series", "expected"), [
    pytest.param({"50": 3, "+Inf": 4, "10": 1}, [{"10", "50", "+Inf"}], ((10.0, 50.0, INF), (1, 3, 4)),
                 id="other-bounds-returned-sorted"),
    pytest.param({"10": 1, "50": 3, "+Inf": 4}, [{"10", "50", "+Inf"}, {"50", "+Inf"}], ((50.0, INF), (3, 4)),
                 id="bounds-missing-on-one-pod-dropped"),
    pytest.param({}, [], (DEFAULT_LATENCY_BUCKETS_MS, (0,) * len(DEFAULT_LATENCY_BUCKETS_MS)),
                 id="no-histogram-zero-observations"),
])
def test_bucket_counts(increments, les_per_series, expected):
    assert bucket_counts(increments, les_per_series) == expected


def test_histogram_without_inf_bucket_is_rejected():
    with pytest.raises(ValueError, match=r"\+Inf"):
        bucket_counts({"10": 1}, [{"10"}])


# --- query building ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "expected"), [
    pytest.param({}, f'{{__name__=~"{DEFAULT_QUERY_NAMES}",version="v2",endpoint="churn",mirrored!="true"}}[360000ms]',
                 id="defaults-match-the-serving-layer"),
    pytest.param({"extra_matchers": {"job": "serving", "ns": 'a"b'}},
                 f'{{__name__=~"{DEFAULT_QUERY_NAMES}",version="v2",endpoint="churn",mirrored!="true",'
                 'job="serving",ns="a\\"b"}[360000ms]', id="extra-matchers-dict-escaped"),
    pytest.param({"extra_matchers": 'namespace=~"prod-.*",', "mirrored_label": "", "endpoint_label": "",
                  "lookback_s": 0},
                 f'{{__name__=~"{DEFAULT_QUERY_NAMES}",version="v2",namespace=~"prod-.*"}}[60000ms]',
                 id="extra-matchers-text-no-endpoint-no-mirrored"),
    pytest.param({"metric_prefix": "ml", "version_label": "model_version", "kpi_metric": "",
                  "prediction_bins_metric": None, "latency_metric": "ml_latency_seconds", "lookback_s": 0.0005},
                 '{__name__=~"ml_requests_total|ml_request_errors_total|ml_latency_seconds_bucket|'
                 'ml_latency_seconds_sum",model_version="v2",endpoint="churn",mirrored!="true"}[60001ms]',
                 id="names-and-labels-configurable"),
])
def test_query_for(options, expected):
    source, _, _ = make_source([], **options)
    assert source.query_for("v2", start_s=1000.0, end_s=1060.0) == expected


@pytest.mark.parametrize(("options", "message"), [
    ({"requests_metric_typo": "x"}, "unknown option"),
    ({"version_label": "bad-label"}, "not a label name"),
    ({"requests_metric": "bad name"}, "not a metric name"),
    ({"requests_metric": ""}, "must not be empty"),
    ({"extra_matchers": '{job="x"}'}, "without braces"),
    ({"extra_matchers": ["job"]}, "mapping or a string"),
    ({"latency_unit": "us"}, "latency_unit"),
    ({"retries": -1}, "retries"),
])
def test_bad_options_are_configuration_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        make_source([], **options)


def test_extra_matchers_empty():
    assert extra_matcher_list(None) == [] and extra_matcher_list({}) == [] and extra_matcher_list(" ") == []


def test_factory_builds_the_source_from_the_registered_name():
    source = build_backend("metrics", "prometheus", CONN, endpoint="churn", extra_matchers={"job": "serving"})
    assert isinstance(source, PrometheusMetricsSource)
    assert 'job="serving"' in source.query_for("v1", start_s=0, end_s=1)


# --- reading a window ------------------------------------------------------------------------------------

def test_version_stats_sums_pods_handles_resets_and_maps_buckets():
    start, end = 1000.0, 1060.0
    reply = matrix(
        (labels("canary_requests_total", "a"), [(990, 100), (1000, 110), (1030, 150), (1060, 170)]),
        (labels("canary_requests_total", "b"), [(995, 500), (1020, 520), (1040, 8), (1060, 30)]),  # restart
        (labels("canary_request_errors_total", "a"), [(990, 1), (1060, 4)]),
        (labels("canary_request_errors_total", "b"), [(995, 9), (1040, 0), (1060, 2)]),
        (labels("canary_request_latency_ms_bucket", "a", le="50.0"), [(995, 10), (1060, 40)]),
        (labels("canary_request_latency_ms_bucket", "a", le="+Inf"), [(995, 100), (1060, 170)]),
        (labels("canary_request_latency_ms_bucket", "b", le="50.0"), [(995, 0), (1060, 50)]),
        (labels("canary_request_latency_ms_bucket", "b", le="+Inf"), [(995, 500), (1020, 520), (1060, 30)]),
        (labels("canary_request_latency_ms_sum", "a"), [(995, 1000.0), (1060, 1500.5)]),
        (labels("canary_prediction_score_bin_total", "a", bin="3"), [(995, 1), (1060, 6)]),
        (labels("canary_prediction_score_bin_total", "b", bin="9"), [(1030, 2)]),
    )
    source, transport, _ = make_source([reply])
    stats = source.version_stats("v2", start_s=start, end_s=end)
    # a: 170-110 = 60; b: 520-500 + 8 (reset) + 22 = 50
    assert stats.requests == 110
    assert stats.errors == 3 + 2
    assert stats.latency_buckets_ms == (50.0, INF)
    assert stats.latency_cumulative == (30 + 50, 70 + 50)
    assert stats.latency_sum_ms == pytest.approx(500.5)
    assert stats.prediction_bins == (0, 0, 0, 5, 0, 0, 0, 0, 0, 2)
    assert stats.kpi_events == 0  # optional series absent
    assert stats.log_latency_sum is None
    params = transport.params()
    assert urlsplit(transport.requests[0].url).path == "/api/v1/query"
    assert params["time"] == "1060.000" and params["timeout"] == "10s"
    assert params["query"] == source.query_for("v2", start_s=start, end_s=end)


def test_histogram_in_seconds_is_read_in_milliseconds():
    les = ["+Inf" if math.isinf(b) else repr(b / 1000) for b in DEFAULT_LATENCY_BUCKETS_MS]
    series = [(labels("ml_latency_seconds_bucket", le=le), [(0, 0), (10, 2 + i)]) for i, le in enumerate(les)]
    reply = matrix((labels("canary_requests_total"), [(0, 0), (10, 2 + len(les) - 1)]), *series,
                   (labels("ml_latency_seconds_sum"), [(0, 0.0), (10, 1.25)]))
    source, _, _ = make_source([reply], latency_metric="ml_latency_seconds", latency_unit="s")
    stats = source.version_stats("v2", start_s=5, end_s=10)
    assert stats.latency_buckets_ms is DEFAULT_LATENCY_BUCKETS_MS
    assert stats.latency_cumulative == tuple(2 + i for i in range(len(les)))
    assert stats.latency_sum_ms == pytest.approx(1250.0)


@pytest.mark.parametrize("reply", [
    pytest.param(matrix(), id="no-series"),
    pytest.param(matrix((labels("canary_kpi_events_total"), [(0, 1)])), id="only-optional-series"),
])
def test_no_requests_series_is_no_data(reply):
    source, _, _ = make_source([reply])
    with pytest.raises(NoDataError, match="no data for version 'v2'") as info:
        source.version_stats("v2", start_s=0, end_s=10)
    assert "canary_requests_total" in str(info.value) and "prom.example:9090" in str(info.value)


def test_version_with_series_but_no_traffic_in_window_has_zero_counts():
    source, _, _ = make_source([matrix((labels("canary_requests_total"), [(0, 40), (5, 40), (10, 40)]))])
    stats = source.version_stats("v2", start_s=1, end_s=10)
    assert stats.requests == 0 and stats.latency_observations == 0


@pytest.mark.parametrize(("series", "message"), [
    pytest.param([(labels("canary_request_latency_ms_bucket"), [(0, 1)])], "without an le label", id="no-le"),
    pytest.param([(labels("canary_prediction_score_bin_total", bin="high"), [(0, 1)])], "not a bin index",
                 id="bad-bin"),
    pytest.param([(labels("canary_request_errors_total"), [(0, 0), (10, 9)])], "exceed requests",
                 id="errors-exceed-requests"),
    pytest.param([(labels("canary_request_latency_ms_bucket", le="10"), [(0, 1)])], r"\+Inf", id="no-inf"),
])
def test_inconsistent_series_are_backend_errors(series, message):
    reply = matrix((labels("canary_requests_total"), [(0, 0), (10, 5)]), *series)
    source, _, _ = make_source([reply])
    with pytest.raises(BackendError, match=message) as info:
        source.version_stats("v2", start_s=5, end_s=10)
    assert not isinstance(info.value, NoDataError)


def test_vector_result_is_a_backend_error():
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}})
    source, _, _ = make_source([(200, body)])
    with pytest.raises(BackendError, match="expected a matrix"):
        source.version_stats("v2", start_s=0, end_s=10)


# --- errors, retries, auth ---------------------------------------------------------------------------------

OK = matrix((labels("canary_requests_total"), [(0, 0), (10, 5)]))
UNAVAILABLE = (503, "Service Unavailable: query timed out in expression evaluation")


@pytest.mark.parametrize(("replies", "sleeps"), [
    pytest.param([UNAVAILABLE, OK], [0.5], id="5xx-then-ok"),
    pytest.param([requests.ConnectionError("refused"), requests.Timeout("read"), (429, "slow down"), OK],
                 [0.5, 1.0, 2.0], id="connection-timeout-429-then-ok"),
])
def test_transient_failures_are_retried_with_backoff(replies, sleeps):
    source, transport, slept = make_source(replies)
    assert source.version_stats("v2", start_s=5, end_s=10).requests == 5
    assert slept == sleeps and len(transport.requests) == len(replies)




@pytest.mark.parametrize(("replies", "options", "status", "in_message", "tries"), [
    pytest.param([UNAVAILABLE] * 4, {}, 503, ["HTTP 503", "query timed out", "after 4 tries"], 4,
                 id="5xx-exhausted"),
    pytest.param([requests.ConnectionError("Connection refused")] * 2, {"retries": 1}, None,
                 ["ConnectionError", "Connection refused", "after 2 tries"], 2, id="connection-refused"),
    pytest.param([(400, json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}))],
                 {}, 400, ["HTTP 400", "bad_data: parse error at char 3"], 1, id="4xx-not-retried"),
    pytest.param([(422, json.dumps({"status": "error", "errorType": "execution",
                                    "error": "query processing would load too many samples"}))],
                 {}, 422, ["too many samples"], 1, id="execution-error"),
    pytest.param([(200, "<html>proxy login</html>")], {}, 200, ["not JSON", "proxy login"], 1, id="not-json"),
    pytest.param([(200, json.dumps({"status": "success"}))], {}, 200, ["without data"], 1, id="no-data-field"),
])
def test_failures_surface_query_url_and_response(replies, options, status, in_message, tries):
    source, transport, slept = make_source(replies, **options)
    with pytest.raises(BackendError) as info:
        source.version_stats("v2", start_s=5, end_s=10)
    err = info.value
    assert not isinstance(err, NoDataError)
    assert err.backend == "prometheus" and err.status == status
    message = str(err)
    assert "http://prom.example:9090/api/v1/query" in message and "canary_requests_total" in message
    for part in in_message:
        assert part in message
    assert len(transport.requests) == tries and len(slept) == tries - 1


def test_long_error_bodies_are_cut():
    source, _, _ = make_source([(500, "x" * 5000)], retries=0)
    with pytest.raises(BackendError) as info:
        source.version_stats("v2", start_s=5, end_s=10)
    assert len(str(info.value)) < 1500


def header(transport: FakeTransport, name: str) -> str | None:
    return transport.requests[-1].headers.get(name)


SECRET = "s3cr3t-pa55"


@pytest.mark.parametrize(("conn", "check"), [
    pytest.param(ConnInfo(conn_id="p", host="prom.example", port=9090, login="reader", password=SECRET),
                 lambda t: header(t, "Authorization") == "Basic " + base64.b64encode(
                     f"reader:{SECRET}".encode()).decode(), id="basic"),
    pytest.param(ConnInfo(conn_id="p", host="prom.example", port=9090, extra={"token": SECRET}),
                 lambda t: header(t, "Authorization") == f"Bearer {SECRET}", id="bearer"),
    pytest.param(ConnInfo(conn_id="p", host="https://mimir.example", extra={"path_prefix": "/prometheus/",
                                                                          "headers": {"X-Scope-OrgID": "team"}}),
                 lambda t: t.requests[-1].url.startswith("https://mimir.example/prometheus/api/v1/query?")
                 and header(t, "X-Scope-OrgID") == "team" and header(t, "Authorization") is None,
                 id="prefix-and-headers"),
])
def test_connection_auth_and_url(conn: ConnInfo, check: Callable[[FakeTransport], bool]):
    source, transport, _ = make_source([OK], conn=conn)
    source.version_stats("v2", start_s=5, end_s=10)
    assert check(transport)
    assert SECRET not in repr(source)


@pytest.mark.parametrize("conn", [
    ConnInfo(conn_id="p", host="prom.example", port=9090, login="reader", password=SECRET),
    ConnInfo(conn_id="p", host="prom.example", port=9090, extra={"token": SECRET}),
])
def test_credentials_never_in_errors(conn: ConnInfo):
    source, _, _ = make_source([(401, "Unauthorized")], conn=conn)
    with pytest.raises(BackendError) as info:
        source.version_stats("v2", start_s=5, end_s=10)
    assert info.value.status == 401 and SECRET not in str(info.value)


def test_basic_auth_and_token_together_is_a_configuration_error():
    conn = ConnInfo(conn_id="p", host="prom.example", login="reader", password=SECRET, extra={"token": "t"})
    with pytest.raises(ConfigError, match="either"):
        make_source([], conn=conn)


def test_redact_url():
    assert redact_url("http://user:pw@prom:9090/api") == "http://prom:9090/api"
    assert redact_url("http://prom:9090/api") == "http://prom:9090/api"


def test_shadow_summary_needs_a_per_request_store():
    source, transport, _ = make_source([])
    with pytest.raises(BackendError, match="per-request store") as info:
        source.shadow_summary(stable="v1", candidate="v2", start_s=0, end_s=10)
    assert not isinstance(info.value, NoDataError) and transport.requests == []


def test_stats_from_matrix_default_names():
    names = MetricNames.from_prefix("canary")
    result = [{"metric": labels("canary_requests_total"), "values": [[0, "1"], [10, "4"]]},
              {"metric": labels("canary_kpi_events_total"), "values": [[0, "0"], [10, "2"]]}]
    stats = stats_from_matrix("v2", result, names, start_s=5, end_s=10)
    assert (stats.requests, stats.kpi_events, stats.latency_observations) == (3, 2, 0)


def test_restart_seen_on_requests_resets_sibling_counters_of_the_same_target():
    # After the restart at t=20 the KPI counter is already back at 2 by the first scrape: no drop of its own.
    reply = matrix(
        (labels("canary_requests_total"), [(0, 0), (10, 100), (20, 30), (30, 60)]),
        (labels("canary_kpi_events_total"), [(0, 0), (10, 2), (20, 2), (30, 3)]),
        (labels("canary_kpi_events_total", pod="other"), [(0, 0), (10, 2), (20, 2), (30, 3)]),
        (labels("canary_requests_total", pod="other"), [(0, 0), (10, 1), (20, 1), (30, 2)]),
    )
    source, _, _ = make_source([reply])
    stats = source.version_stats("v2", start_s=5, end_s=30)
    assert stats.requests == 100 + 30 + 30 + 2
    assert stats.kpi_events == (2 + 2 + 1) + (2 + 0 + 1)  # only the restarted pod's KPI counter resets


def test_window_increase_with_known_restarts():
    assert window_increase([(0, 0), (10, 2), (20, 2), (30, 3)], 5, 30, restarts=[(10.0, 20.0)]) == 5
    # A pair of samples that does not span the restart is an ordinary difference.
    assert window_increase([(0, 0), (10, 2), (15, 1), (20, 3)], 5, 30, restarts=[(10.0, 15.0)]) == 2 + 1 + 2


@pytest.mark.parametrize(("drops", "windows"), [
    ([], []),
    ([(10, 20)], [(10, 20)]),
    ([(5, 7), (5, 6)], [(5, 6)]),
    ([(5, 7), (6, 7), (5, 6)], [(5, 6), (6, 7)]),  # (6, 7] misses (5, 6]: another restart
    ([(10, 20), (30, 40)], [(10, 20), (30, 40)]),
])
def test_restart_windows_merge_the_drops_of_one_restart(drops, windows):
    assert restart_windows(drops) == windows


def test_a_segment_series_that_skips_the_first_scrape_after_a_restart_is_not_counted_twice():
    """Series split by attribute labels: a small one has no sample at the restart's first scrape (t=6).

    It drops at t=7 (from 5 to 1); the others dropped at t=6. The big series' pair (6, 7) is an ordinary
    difference, not a second restart (that read 9 - 0 instead of 9 - 3: the live scrape test saw it).
    """
    target = {"instance": "127.0.0.1:9000", "job": "serving"}
    reply = matrix(
        (labels("canary_requests_total", device="android", **target), [(1, 4), (2, 9), (5, 9), (6, 3), (7, 9)]),
        (labels("canary_requests_total", device="web", **target), [(2, 1), (3, 5), (5, 5), (7, 1)]),
    )
    source, _, _ = make_source([reply])
    assert source.version_stats("v2", start_s=0, end_s=10).requests == 9 + (3 + 6) + 5 + 1
