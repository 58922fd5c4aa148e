"""Metrics source over CloudWatch: per-variant SageMaker endpoint metrics as cumulative version statistics.

One ``GetMetricData`` call (paginated) per :meth:`CloudWatchMetricsSource.version_stats` reads, for the
variant ``<variant_prefix><version>`` of the endpoint (dimensions ``EndpointName``, ``VariantName``):

* ``Invocations`` (Sum) -> ``requests``;
* ``Invocation4XXErrors`` + ``Invocation5XXErrors`` (Sum; option ``error_metrics``) -> ``errors``;
* ``ModelLatency`` (Sum and SampleCount; microseconds in AWS) -> ``latency_sum_ms`` and the number of
  latency observations. Sum is read rather than Average x SampleCount: it is exact per period;
* optional custom exceedance counters, ``latency_exceedance_metrics: {threshold_ms: metric_name}`` (Sum of
  requests slower than ``threshold_ms``, published by the team under ``exceedance_namespace``, default
  ``namespace``) -> the latency histogram: bounds = the thresholds + ``+Inf``, ``latency_cumulative[i]`` =
  observations - exceedances(threshold i).

Without exceedance counters the histogram has only the ``+Inf`` bucket (= the observation count):
CloudWatch statistics cannot say how many requests exceeded a threshold, so latency tail tests HALT
("not a latency bucket bound") instead of reading invented buckets. Percentiles (ExtendedStatistics) are
not read: a percentile per period cannot be summed into cumulative counts.

Window alignment: CloudWatch aggregates per period, so ``[start_s, end_s)`` is shrunk to whole periods:
the start is rounded *up* and the end (minus ``settle_s``) rounded *down* to multiples of ``period_s``.
Requests before the start or in an unfinished period are never counted; a window shorter than one whole
period has no data yet. CloudWatch ingests SageMaker metrics a minute or two late: set ``settle_s`` (e.g.
120) so that a period is read only once it is complete.

No datapoint at all for the variant in the window raises :class:`NoDataError` (the gate waits, then
HALTs; never "healthy"). :meth:`shadow_summary` raises :class:`ConfigError`: CloudWatch has per-variant
aggregates, not the per-request pairs a shadow comparison needs.

Connection: as :func:`canary.backends.aws.aws_client` (Airflow AWS connection conventions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from canary.backends.aws import aws_client, client_error
from canary.backends.base import ConnInfo, ShadowSummary
from canary.backends.options import exceedance_thresholds_ms, valid_cloudwatch_period_s
from canary.errors import BackendError, ConfigError, NoDataError
from canary.policy.evidence import VersionStats
from canary.spec import defaults

BACKEND = "cloudwatch"
#: Query ids must start with a lower-case letter.
_REQUESTS, _LATENCY_SUM, _LATENCY_COUNT = "requests", "latencysum", "latencycount"


class CloudWatchMetricsSource:
    """Read cumulative per-version statistics of one SageMaker endpoint from CloudWatch."""

    def __init__(self, conn: ConnInfo, *, endpoint: str, namespace: str = "AWS/SageMaker", period_s: int = defaults.CLOUDWATCH_PERIOD_S,
                 variant_prefix: str = "v-", requests_metric: str = "Invocations",
                 error_metrics: Sequence[str] = ("Invocation4XXErrors", "Invocation5XXErrors"),
                 latency_metric: str = "ModelLatency", latency_unit_ms: float = 0.001,
                 latency_exceedance_metrics: Mapping[float | str, str] | None = None,
                 exceedance_namespace: str | None = None, settle_s: float = defaults.CLOUDWATCH_SETTLE_S,
                 cloudwatch_client: Any = None) -> None:
        if not valid_cloudwatch_period_s(period_s):
            raise ConfigError(f"cloudwatch endpoint {endpoint!r}: period_s must be 1, 5, 10, 30 or a multiple "
                              f"of 60, got {period_s}")
        if settle_s < 0:
            raise ConfigError(f"cloudwatch endpoint {endpoint!r}: settle_s must be >= 0, got {settle_s}")
        try:
            thresholds = exceedance_thresholds_ms(latency_exceedance_metrics or {})
        except ValueError as err:
            raise ConfigError(f"cloudwatch endpoint {endpoint!r}: latency_exceedance_metrics {err}") from err
        self.endpoint = endpoint
        self.namespace = namespace
        self.period_s = int(period_s)
        self.variant_prefix = variant_prefix
        self.requests_metric = requests_metric
        self.error_metrics = tuple(error_metrics)
        self.latency_metric = latency_metric
        self.latency_unit_ms = latency_unit_ms
        self.exceedance_metrics = dict(sorted(thresholds.items()))
        self.exceedance_namespace = exceedance_namespace or namespace
        self.settle_s = settle_s
        self._client = cloudwatch_client if cloudwatch_client is not None else aws_client(conn, "cloudwatch")

    def window(self, start_s: float, end_s: float) -> tuple[int, int]:
        """Return the whole-period window ``[start, end)`` read for ``[start_s, end_s)`` (epoch seconds)."""
        start = math.ceil(start_s / self.period_s) * self.period_s
        end = math.floor((end_s - self.settle_s) / self.period_s) * self.period_s
        return start, end

    def queries(self, version: str) -> list[dict[str, Any]]:
        """Return the ``MetricDataQueries`` for ``version``'s variant."""
        dimensions = [{"Name": "EndpointName", "Value": self.endpoint},
                      {"Name": "VariantName", "Value": f"{self.variant_prefix}{version}"}]

        def query(query_id: str, metric: str, stat: str, namespace: str | None = None) -> dict[str, Any]:
            return {"Id": query_id, "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": namespace or self.namespace, "MetricName": metric,
                           "Dimensions": dimensions},
                "Period": self.period_s, "Stat": stat}}

        return [query(_REQUESTS, self.requests_metric, "Sum"),
                *(query(f"errors{i}", m, "Sum") for i, m in enumerate(self.error_metrics)),
                query(_LATENCY_SUM, self.latency_metric, "Sum"),
                query(_LATENCY_COUNT, self.latency_metric, "SampleCount"),
                *(query(f"exceed{i}", m, "Sum", self.exceedance_namespace)
                  for i, m in enumerate(self.exceedance_metrics.values()))]

    def version_stats(self, version: str, *, start_s: float, end_s: float) -> VersionStats:
        """Return ``version``'s statistics over the whole periods inside ``[start_s, end_s)``.

        :raises NoDataError: no datapoint for the variant in the (aligned) window.
        :raises BackendError: the call failed, or the metrics contradict each other.
        """
        variant = f"{self.variant_prefix}{version}"
        start, end = self.window(start_s, end_s)
        where = f"endpoint {self.endpoint!r} variant {variant!r} in [{_iso(start)}, {_iso(end)})"
        if end <= start:
            raise NoDataError(BACKEND, f"{where}: no whole {self.period_s}s period in the window yet")
        sums, seen = self._fetch(self.queries(version), start, end, where)
        if not seen:
            raise NoDataError(BACKEND, f"{where}: no datapoints in namespace {self.namespace!r}")
        requests = round(sums[_REQUESTS])
        errors = round(sum(sums[f"errors{i}"] for i in range(len(self.error_metrics))))
        observations = round(sums[_LATENCY_COUNT])
        if errors > requests:
            raise BackendError(BACKEND, f"{where}: {errors} errors ({'+'.join(self.error_metrics)}) exceed "
                                        f"{requests} requests ({self.requests_metric})")
        exceedances = [round(sums[f"exceed{i}"]) for i in range(len(self.exceedance_metrics))]
        increasing = any(b > a for a, b in zip(exceedances, exceedances[1:], strict=False))
        if increasing or any(x > observations for x in exceedances):
            counts = dict(zip(self.exceedance_metrics.values(), exceedances, strict=True))
            raise BackendError(BACKEND, f"{where}: exceedance counters {counts} must not increase with the "
                                        f"threshold nor exceed the {observations} latency observations")
        return VersionStats(version=version, requests=requests, errors=errors,
                            latency_buckets_ms=(*self.exceedance_metrics, math.inf),
                            latency_cumulative=(*(observations - x for x in exceedances), observations),
                            latency_sum_ms=sums[_LATENCY_SUM] * self.latency_unit_ms)

    def shadow_summary(self, *, stable: str, candidate: str, start_s: float, end_s: float,
                       slow_threshold_ms: float | None = None, score_shift: float | None = None) -> ShadowSummary:
        """Not available: CloudWatch cannot pair a mirrored request with its served answer."""
        raise ConfigError(f"metrics backend {BACKEND!r} (endpoint {self.endpoint!r}) cannot compare shadow "
                          f"answers of {candidate!r} with {stable!r}: CloudWatch holds per-variant aggregates, "
                          "not request pairs. Disable the shadow test in the spec (shadow.enabled: false).")

    def _fetch(self, queries: list[dict[str, Any]], start: int, end: int,
               where: str) -> tuple[dict[str, float], bool]:
        """Sum every query's values over the window, following NextToken; also say whether any datapoint came."""
        from botocore.exceptions import BotoCoreError, ClientError

        sums = {q["Id"]: 0.0 for q in queries}
        seen = False
        kwargs: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": datetime.fromtimestamp(start, UTC),
                                  "EndTime": datetime.fromtimestamp(end, UTC)}
        while True:
            try:
                page = self._client.get_metric_data(**kwargs)
            except (ClientError, BotoCoreError) as err:
                raise client_error(BACKEND, "GetMetricData", where, err) from err
            for result in page.get("MetricDataResults", []):
                if result.get("StatusCode") in ("InternalError", "Forbidden"):
                    raise BackendError(BACKEND, f"GetMetricData on {where}: query {result.get('Id')!r} "
                                                f"{result['StatusCode']}: {result.get('Messages', [])}")
                query_id, values = result.get("Id"), result.get("Values", [])
                if not isinstance(query_id, str) or query_id not in sums:
                    raise BackendError(BACKEND, f"GetMetricData on {where}: a result for query {query_id!r}, which "
                                                f"was not asked for (asked: {', '.join(sums)})")
                if not isinstance(values, list) or not all(_is_count(v) for v in values):
                    # A negative, NaN or infinite sum must never become a count (nor crash round()).
                    raise BackendError(BACKEND, f"GetMetricData on {where}: query {query_id!r} returned values that "
                                                f"are not finite numbers >= 0: {repr(values)[:200]}")
                seen = seen or bool(values)
                try:
                    sums[query_id] += math.fsum(values)
                except OverflowError:
                    sums[query_id] = math.inf
                if not math.isfinite(sums[query_id]):
                    raise BackendError(BACKEND, f"GetMetricData on {where}: query {query_id!r} sums past any count")
            token = page.get("NextToken")
            if not token:
                return sums, seen
            kwargs["NextToken"] = token


def _is_count(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:  # an int beyond any float (found by the fuzz tests): not a count CloudWatch sends
        return False


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
