"""The CloudWatch metrics source against a real moto server (``ThreadedMotoServer`` on 127.0.0.1).

SageMaker's own per-variant metrics are simulated with ``PutMetricData`` into ``AWS/SageMaker`` (real
AWS reserves ``AWS/`` namespaces for its services; moto accepts them). ``ModelLatency`` is written as
statistic sets in microseconds, as SageMaker publishes it.

What moto cannot exercise: percentile statistics (``p99`` makes moto answer HTTP 500; this source does
not request them), ``PartialData`` pagination of very long windows, and CloudWatch's ingestion delay
(moto serves a datapoint at once, so ``settle_s`` is 0 here).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from canary.backends.aws import aws_client
from canary.backends.base import ConnInfo, MetricsSource
from canary.backends.cloudwatch import CloudWatchMetricsSource
from canary.errors import ConfigError, NoDataError

pytestmark = pytest.mark.integration

PERIOD_S = 60
# A fixed, period-aligned origin well inside CloudWatch's retention (moto keeps everything anyway).
T0 = (int(datetime.now(UTC).timestamp()) // 3600 - 2) * 3600


def put(client: Any, variant: str, minute: int, *, requests: int, errors_4xx: int = 0, errors_5xx: int = 0,
        latency_us: tuple[float, ...] = (), slow: dict[str, int] | None = None, endpoint: str = "churn") -> None:
    """Publish one minute of a variant's metrics at ``T0 + minute * 60 + 30`` seconds."""
    ts = datetime.fromtimestamp(T0 + minute * PERIOD_S + 30, UTC)
    dims = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
    data: list[dict[str, Any]] = [
        {"MetricName": "Invocations", "Dimensions": dims, "Timestamp": ts, "Value": requests, "Unit": "None"},
        {"MetricName": "Invocation4XXErrors", "Dimensions": dims, "Timestamp": ts, "Value": errors_4xx},
        {"MetricName": "Invocation5XXErrors", "Dimensions": dims, "Timestamp": ts, "Value": errors_5xx},
    ]
    if latency_us:
        data.append({"MetricName": "ModelLatency", "Dimensions": dims, "Timestamp": ts, "Unit": "Microseconds",
                     "StatisticValues": {"SampleCount": len(latency_us), "Sum": sum(latency_us),
                                         "Minimum": min(latency_us), "Maximum": max(latency_us)}})
    client.put_metric_data(Namespace="AWS/SageMaker", MetricData=data)
    if slow:
        client.put_metric_data(Namespace="Canary/SageMaker", MetricData=[
            {"MetricName": name, "Dimensions": dims, "Timestamp": ts, "Value": count, "Unit": "Count"}
            for name, count in slow.items()])


def test_version_stats_sum_whole_periods(aws_conn: ConnInfo) -> None:
    cw = aws_client(aws_conn, "cloudwatch")
    for minute in range(5):
        put(cw, "v-v1", minute, requests=100, errors_4xx=1, errors_5xx=2, latency_us=(10_000.0, 30_000.0))
        put(cw, "v-v2", minute, requests=10, errors_5xx=1, latency_us=(50_000.0,))
    source = CloudWatchMetricsSource(aws_conn, endpoint="churn")
    assert isinstance(source, MetricsSource)

    stats = source.version_stats("v1", start_s=T0, end_s=T0 + 5 * PERIOD_S)
    assert (stats.requests, stats.errors, stats.latency_sum_ms) == (500, 15, 200.0)
    assert stats.latency_buckets_ms == (math.inf,) and stats.latency_cumulative == (10,)
    # Unaligned bounds shrink to whole periods: minutes 1, 2 and 3 only.
    inner = source.version_stats("v1", start_s=T0 + 10, end_s=T0 + 4 * PERIOD_S + 59)
    assert (inner.requests, inner.errors, inner.latency_observations) == (300, 9, 6)
    canary = source.version_stats("v2", start_s=T0, end_s=T0 + 5 * PERIOD_S)
    assert (canary.requests, canary.errors, canary.latency_sum_ms, canary.latency_observations) == (50, 5, 250.0, 5)


def test_exceedance_counters_become_the_latency_histogram(aws_conn: ConnInfo) -> None:
    cw = aws_client(aws_conn, "cloudwatch")
    for minute in range(3):
        put(cw, "v-v1", minute, requests=4, latency_us=(20_000.0, 60_000.0, 120_000.0, 400_000.0),
            slow={"LatencyOver100ms": 2, "LatencyOver250ms": 1})
    source = CloudWatchMetricsSource(aws_conn, endpoint="churn", exceedance_namespace="Canary/SageMaker",
                                     latency_exceedance_metrics={"250": "LatencyOver250ms", 100: "LatencyOver100ms"})
    stats = source.version_stats("v1", start_s=T0, end_s=T0 + 3 * PERIOD_S)
    assert stats.latency_buckets_ms == (100.0, 250.0, math.inf)
    assert stats.latency_cumulative == (6, 9, 12)
    assert stats.latency_exceedances(100.0) == 6 and stats.latency_exceedances(250.0) == 3
    assert stats.latency_sum_ms == pytest.approx(3 * 600.0)


def test_unknown_variant_and_short_window_have_no_data(aws_conn: ConnInfo) -> None:
    put(aws_client(aws_conn, "cloudwatch"), "v-v1", 0, requests=5)
    source = CloudWatchMetricsSource(aws_conn, endpoint="churn")
    with pytest.raises(NoDataError, match="variant 'v-v9'.*no datapoints"):
        source.version_stats("v9", start_s=T0, end_s=T0 + 10 * PERIOD_S)
    with pytest.raises(NoDataError, match="no whole 60s period"):
        source.version_stats("v1", start_s=T0 + 5, end_s=T0 + 50)
    with pytest.raises(NoDataError):  # data exist, but not for this endpoint
        CloudWatchMetricsSource(aws_conn, endpoint="other").version_stats("v1", start_s=T0, end_s=T0 + PERIOD_S)


def test_shadow_comparison_is_a_configuration_error(aws_conn: ConnInfo) -> None:
    with pytest.raises(ConfigError, match="shadow.enabled: false"):
        CloudWatchMetricsSource(aws_conn, endpoint="churn").shadow_summary(stable="v1", candidate="v2", start_s=T0,
                                                                       end_s=T0 + PERIOD_S)


def test_pages_are_followed_and_contradictions_are_errors() -> None:
    """NextToken pagination and inconsistent counters, which moto never produces (a Stubber at the API edge)."""
    import boto3
    from botocore.stub import ANY, Stubber

    from canary.errors import BackendError

    client = boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    source = CloudWatchMetricsSource(ConnInfo(), endpoint="churn", cloudwatch_client=client)
    ts = datetime.fromtimestamp(T0, UTC)

    def page(values: dict[str, float], token: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"MetricDataResults": [
            {"Id": qid, "Timestamps": [ts], "Values": [v], "StatusCode": "Complete"} for qid, v in values.items()]}
        if token:
            body["NextToken"] = token
        return body

    params = {"MetricDataQueries": source.queries("v1"), "StartTime": ts,
              "EndTime": datetime.fromtimestamp(T0 + 2 * PERIOD_S, UTC)}
    with Stubber(client) as stub:
        stub.add_response("get_metric_data", page({"requests": 10, "errors1": 1}, "next"), params)
        stub.add_response("get_metric_data", page({"requests": 5, "latencycount": 3, "latencysum": 9000}),
                          {**params, "NextToken": "next"})
        stats = source.version_stats("v1", start_s=T0, end_s=T0 + 2 * PERIOD_S)
        assert (stats.requests, stats.errors, stats.latency_observations, stats.latency_sum_ms) == (15, 1, 3, 9.0)

        stub.add_response("get_metric_data", page({"requests": 1, "errors0": 2}),
                          {"MetricDataQueries": ANY, "StartTime": ANY, "EndTime": ANY})
        with pytest.raises(BackendError, match="2 errors .* exceed 1 requests"):
            source.version_stats("v1", start_s=T0, end_s=T0 + 2 * PERIOD_S)
