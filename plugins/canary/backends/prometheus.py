"""Metrics source over the Prometheus HTTP API.

Reads the per-version counters the embedded serving layer exports on ``GET /metrics`` (see
:mod:`canary.serving.exposition`), or the same shapes under other names:

- ``<prefix>_requests_total`` and ``<prefix>_request_errors_total``: answered requests and errors;
- ``<prefix>_request_latency_ms_bucket{le=...}`` / ``_sum``: latency histogram (milliseconds; set
  ``latency_unit="s"`` for a histogram in seconds);
- ``<prefix>_kpi_events_total`` and ``<prefix>_prediction_score_bin_total{bin="i"}``: optional; absent
  series read as zeros.

Every series must carry the version label (``version``) and, unless ``endpoint_label`` is empty, the
endpoint label (``endpoint``). Series with ``mirrored="true"`` are shadow answers and are excluded (the
matcher is ``mirrored!="true"``, so series without the label count as served); ``mirrored_label=""``
turns that off. ``extra_matchers`` adds label matchers, as a dict (``{"job": "serving"}``, equality) or
as PromQL text (``'namespace=~"prod-.*"'``). Metric names can be set one by one with ``requests_metric``,
``errors_metric``, ``latency_metric`` (the histogram's base name), ``kpi_metric`` and
``prediction_bins_metric`` (``""`` disables an optional one), the bin label with ``bin_label``.

**Window counts are exact differences of the raw counter samples, not** ``increase()``. One instant
query of a range vector (``{__name__=~"...", ...}[window + lookback]`` at ``time=end``) returns every
raw sample of every matching series. Per series, the count is the sum of the increments between
consecutive samples whose timestamps fall in ``(start, end]``, starting from the last sample at or
before ``start``. When a counter drops (a process restart), the new value is counted from zero, as
``increase()`` does, but nothing is extrapolated to the window's edges. A restart resets every counter
of the process, yet a small one (KPI events, a low bucket, a small segment's requests) may be back at its
old value by the next scrape; so a drop of any requests counter marks a restart for every series of the
same process: the same scrape target (``job``, ``instance``), or for series without an ``instance``
label the same labels but ``le``/``bin``. A series that appears within the window (a new pod)
counts from zero; one that disappears (a pod gone) keeps the increments it made. Counts are summed over
all series of a version (several pods or instances). Requests are counted at the first scrape after
they happen, so windows are exact to one scrape interval. Limit, shared with ``increase()``: a restart
is invisible when the new process's requests counter is already at or above the old one's last value
by its first scrape; a scrape interval well below the time a process needs to serve that many requests
avoids it. A process that started before Prometheus first scraped it counts its whole history from the
first sample in the window.

The response holds ``(window + lookback) / scrape_interval`` samples per series (a one-hour window at a
15 s scrape interval: ~260 per series); Prometheus' ``--query.max-samples`` bounds it.

Latency buckets: the exported ``le`` bounds are parsed to floats (``"+Inf"`` is infinity) and, when they
are :data:`~canary.policy.evidence.DEFAULT_LATENCY_BUCKETS_MS`, returned as those; otherwise the exported bounds
are returned (bounds that only some series export are dropped, so every bound has complete counts), and a
spec's latency ``threshold_ms`` must then be one of them. A version with no latency histogram has all-zero
latency counts (no observations), never invented ones.

No series for the version at all, over the window and the lookback before it, raises
:class:`~canary.errors.NoDataError` (the gate halts or waits; it is never read as healthy).

Connection: ``host``/``port``/``schema`` give the base URL (``extra.path_prefix`` appends a route prefix
such as ``/prometheus``); ``login``/``password`` for basic auth, or ``extra.token`` for a bearer token;
``extra.headers`` adds headers (e.g. ``X-Scope-OrgID`` for Mimir/Cortex); ``extra.verify`` is passed to
``requests`` (CA bundle path or false). Credentials are never logged or put into error messages.

Segments (``analysis.segments``): :meth:`PrometheusMetricsSource.segment_stats` reads the same series with
one more matcher, ``<segment_label>=~"value1|value2|..."``, and splits them by that label's value (one
query per version); ``segment_label`` defaults to the attribute's name (``by``). A listed value without
series has zero counts; series without the label count overall only.

Targeting (``targeting``): during a targeted stage :meth:`PrometheusMetricsSource.within` adds one matcher per
targeted attribute, ``<attribute>=~"value1|..."``, so canary and stable are compared on the targeted requests.

Shadow tests are not supported: Prometheus holds aggregate counters, so it cannot pair a candidate's
mirrored answer with stable's answer to the same request, and prediction agreement, which the shadow
verdict needs, cannot be computed. :meth:`PrometheusMetricsSource.shadow_summary` raises
:class:`~canary.errors.BackendError`; disable ``shadow`` in the spec or use a per-request store (``local``).
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from canary.backends.base import ConnInfo, ShadowSummary
from canary.errors import BackendError, ConfigError, NoDataError
from canary.policy.evidence import DEFAULT_LATENCY_BUCKETS_MS, DEFAULT_PREDICTION_BINS, VersionStats

BACKEND = "prometheus"
log = logging.getLogger(__name__)

#: Prometheus' default ``--query.lookback-delta``: how far before ``start`` the baseline sample may be.
DEFAULT_LOOKBACK_S = 300.0
_BODY_EXCERPT_CHARS = 500
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LATENCY_SCALE_TO_MS = {"ms": 1.0, "s": 1000.0}
_NAME_OPTIONS = ("requests_metric", "errors_metric", "latency_metric", "kpi_metric", "prediction_bins_metric",
                 "bin_label")


@dataclass(frozen=True, kw_only=True)
class MetricNames:
    """Names of the series one version's statistics are read from (``""``: optional series not read)."""

    requests: str
    errors: str
    latency: str  # histogram base name: ``_bucket`` and ``_sum`` are appended
    kpi: str = ""
    prediction_bins: str = ""
    bin_label: str = "bin"

    @classmethod
    def from_prefix(cls, prefix: str, **overrides: str) -> MetricNames:
        """Return the embedded serving layer's names under ``prefix``, with per-name overrides."""
        unknown = sorted(set(overrides) - set(_NAME_OPTIONS))
        if unknown:
            raise ConfigError(f"prometheus backend: unknown option(s) {', '.join(unknown)}; known name options: "
                              f"{', '.join(_NAME_OPTIONS)}")
        names = {"requests": f"{prefix}_requests_total", "errors": f"{prefix}_request_errors_total",
                 "latency": f"{prefix}_request_latency_ms", "kpi": f"{prefix}_kpi_events_total",
                 "prediction_bins": f"{prefix}_prediction_score_bin_total", "bin_label": "bin"}
        for key, value in overrides.items():
            names[key.removesuffix("_metric")] = "" if value is None else str(value)
        result = cls(**names)
        for field_name in ("requests", "errors", "latency"):
            if not getattr(result, field_name):
                raise ConfigError(f"prometheus backend: {field_name}_metric must not be empty")
        for field_name in ("requests", "errors", "latency", "kpi", "prediction_bins"):
            value = getattr(result, field_name)
            if value and not _METRIC_NAME.match(value):
                raise ConfigError(f"prometheus backend: {field_name}_metric {value!r} is not a metric name")
        if not _LABEL_NAME.match(result.bin_label):
            raise ConfigError(f"prometheus backend: bin_label {result.bin_label!r} is not a label name")
        return result

    @property
    def latency_bucket(self) -> str:
        return f"{self.latency}_bucket"

    @property
    def latency_sum(self) -> str:
        return f"{self.latency}_sum"

    def all(self) -> list[str]:
        """Return every series name to read, required ones first."""
        names = [self.requests, self.errors, self.latency_bucket, self.latency_sum, self.kpi, self.prediction_bins]
        return [n for n in names if n]


# ---------------------------------------------------------------------------------------------------------
# Pure parts: query building, counter arithmetic, bucket mapping. No I/O.
# ---------------------------------------------------------------------------------------------------------

def quote_label_value(value: str) -> str:
    """Return ``value`` as a PromQL double-quoted string."""
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def label_matcher(name: str, value: str, op: str = "=") -> str:
    """Return one PromQL label matcher, e.g. ``version="v2"``."""
    if not _LABEL_NAME.match(name):
        raise ConfigError(f"prometheus backend: {name!r} is not a label name")
    if op not in ("=", "!=", "=~", "!~"):
        raise ConfigError(f"prometheus backend: unknown matcher operator {op!r}")
    return f"{name}{op}{quote_label_value(value)}"


def extra_matcher_list(extra: Mapping[str, str] | str | None) -> list[str]:
    """Turn the ``extra_matchers`` option (a label -> value dict, or PromQL matcher text) into matchers."""
    if not extra:
        return []
    if isinstance(extra, str):
        text = extra.strip().strip(",")
        if "{" in text or "}" in text:
            raise ConfigError(f"prometheus backend: extra_matchers {extra!r} must be matchers without braces, "
                              'e.g. \'job="serving",namespace=~"prod-.*"\'')
        return [text] if text else []
    if isinstance(extra, Mapping):
        return [label_matcher(str(k), str(v)) for k, v in extra.items()]
    raise ConfigError(f"prometheus backend: extra_matchers must be a mapping or a string, not {type(extra).__name__}")


def range_selector(names: Sequence[str], matchers: Sequence[str], range_s: float) -> str:
    """Return ``{__name__=~"a|b",m1,m2}[Nms]``: raw samples of several series families in one query."""
    name_re = "|".join(re.escape(n) for n in names)
    range_ms = max(1, math.ceil(range_s * 1000))
    return "{" + ",".join([f'__name__=~"{name_re}"', *matchers]) + f"}}[{range_ms}ms]"


def window_increase(samples: Iterable[tuple[float, float]], start_s: float, end_s: float,
                    restarts: Collection[tuple[float, float]] = ()) -> float:
    """Return how much a counter grew in ``(start_s, end_s]`` from its raw samples, handling resets.

    The baseline is the last sample at or before ``start_s`` (a series without one started within the
    window and counts from zero). Each later sample up to ``end_s`` adds its difference to the previous
    one; a drop is a reset (the process restarted), after which the new value itself is the increment.
    ``restarts`` are windows ``(after_s, by_s]`` in which the process is known to have restarted (a sibling
    counter dropped; :func:`restart_windows`): a pair of consecutive samples spanning one counts from
    zero even without a drop. Nothing is extrapolated: unlike PromQL ``increase()``, the result is a sum
    of observed differences.

    >>> window_increase([(0, 10), (1, 15), (2, 3), (3, 8)], 0.5, 3)   # 5 + 3 (reset) + 5
    13.0
    """
    prev_t, prev = -math.inf, 0.0
    total = 0.0
    for t, v in sorted(samples):
        if t <= start_s:
            prev_t, prev = t, v
            continue
        if t > end_s:
            break
        spans_restart = any(prev_t <= after_s and by_s <= t for after_s, by_s in restarts)
        total += v if v < prev or spans_restart else v - prev
        prev_t, prev = t, v
    return total


def restart_windows(drops: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the windows ``(after_s, by_s]`` in which a process restarted, from its counters' drops.

    Each drop ``(t_prev, t)`` says a restart happened in ``(t_prev, t]``; a counter that had no sample at
    the restart's first scrape drops later, over a wider pair, so overlapping drops are one restart, in
    their intersection (the tightest pair of scrapes around it).

    >>> restart_windows([(5, 7), (5, 6), (20, 21)])
    [(5, 6), (20, 21)]
    """
    windows: list[tuple[float, float]] = []
    for after_s, by_s in sorted(drops, key=lambda d: (d[1], d[0])):
        if windows and after_s < windows[-1][1]:
            lo, hi = windows[-1]
            windows[-1] = (max(lo, after_s), min(hi, by_s))
        else:
            windows.append((after_s, by_s))
    return windows


def parse_bound(le: str) -> float:
    """Parse a histogram ``le`` label (``"0.5"``, ``"+Inf"``)."""
    try:
        value = float(le)
    except ValueError as err:
        raise ValueError(f"le={le!r} is not a number") from err
    if math.isnan(value):
        raise ValueError(f"le={le!r} is not a bucket bound")
    return value


def map_bounds_ms(les: Iterable[str], scale_to_ms: float = 1.0) -> dict[str, float]:
    """Map exported ``le`` strings to bounds in ms, snapped to the default bounds they equal."""
    out: dict[str, float] = {}
    for le in les:
        bound = parse_bound(le) * scale_to_ms
        for default in DEFAULT_LATENCY_BUCKETS_MS:
            if bound == default or (math.isfinite(bound) and math.isclose(bound, default, rel_tol=1e-9)):
                bound = default
                break
        out[le] = bound
    return out


def bucket_counts(increments: Mapping[str, float], les_per_series: Sequence[set[str]],
                  scale_to_ms: float = 1.0) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Return ``(bounds_ms, cumulative)`` of a histogram from per-``le`` window increments.

    Only bounds every series exports are kept (a bound missing from one pod has incomplete counts);
    +Inf must be among them. With no series at all, the default bounds with zero counts.
    """
    if not les_per_series:
        return DEFAULT_LATENCY_BUCKETS_MS, (0,) * len(DEFAULT_LATENCY_BUCKETS_MS)
    common = set.intersection(*map(set, les_per_series))
    bounds = map_bounds_ms(common, scale_to_ms)
    if math.inf not in bounds.values():
        raise ValueError(f"the latency histogram has no +Inf bucket common to all series (le: {sorted(common)})")
    ordered = sorted(bounds, key=bounds.__getitem__)
    buckets = tuple(bounds[le] for le in ordered)
    if len(set(buckets)) != len(buckets):
        raise ValueError(f"duplicate latency bucket bounds {sorted(common)}")
    if set(buckets) == set(DEFAULT_LATENCY_BUCKETS_MS):
        buckets = DEFAULT_LATENCY_BUCKETS_MS
    return buckets, tuple(round(increments.get(le, 0.0)) for le in ordered)


#: Most prediction score bins a version may export (a larger ``bin`` label is a malformed series).
MAX_PREDICTION_BINS = 1000


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def series_parts(series: Any) -> tuple[dict[str, str], list[tuple[float, float]]]:
    """Return one matrix series' labels and its samples sorted by time.

    :raises ValueError: not ``{"metric": {label: value}, "values": [[time, "value"], ...]}``, or a sample that is
        not a finite number >= 0 (a counter never is: garbage must not become a count).
    """
    if not isinstance(series, Mapping):
        raise ValueError(f"a series must be an object with metric and values, got {_shown(series)}")
    labels = series.get("metric", {})
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ValueError(f"series labels must be an object of strings, got {_shown(labels)}")
    values = series.get("values", [])
    if not isinstance(values, list):
        raise ValueError(f"{labels.get('__name__', 'a')} series: values must be a list, got {_shown(values)}")
    samples = []
    for pair in values:
        try:
            if not isinstance(pair, list | tuple) or len(pair) != 2 or any(isinstance(x, bool) for x in pair):
                raise ValueError("not a pair")
            t, v = float(pair[0]), float(pair[1])
        except (TypeError, ValueError, OverflowError) as err:
            raise ValueError(f"{labels.get('__name__', 'a')} series sample {_shown(pair)}: expected "
                             '[unix_seconds, "value"]') from err
        if not (math.isfinite(t) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{labels.get('__name__', 'a')} series sample {_shown(pair)}: a counter sample must be "
                             "a finite number >= 0")
        samples.append((t, v))
    return dict(labels), sorted(samples)


def stats_from_matrix(version: str, result: Sequence[Mapping[str, Any]], names: MetricNames, *, start_s: float,
                      end_s: float, scale_to_ms: float = 1.0) -> VersionStats:
    """Reduce a ``matrix`` result (raw samples of every series of one version) to window statistics.

    :raises NoDataError: no series of the requests counter.
    :raises ValueError: malformed series (a bucket without ``le``, a non-integer bin, inconsistent counts).
    """
    per_key: dict[tuple[str, str], float] = defaultdict(float)
    bucket_les: dict[tuple[tuple[str, str], ...], set[str]] = defaultdict(set)
    seen_requests = False
    parsed = []
    # A restart resets every counter of a process at once, but a small counter (KPI events, one bucket, a
    # small segment's requests) may be back at or above its old value by the next scrape. A drop of any
    # requests counter of a process therefore marks a restart for every series of that process: the
    # scrape target (job, instance) when the series carry one, else the series' own labels but le/bin.
    drops: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = defaultdict(list)
    if not isinstance(result, list | tuple):
        raise ValueError(f"a matrix result must be a list of series, got {_shown(result)}")
    for series in result:
        labels, samples = series_parts(series)
        name = labels.pop("__name__", "")
        if "instance" in labels:
            target = (("instance", labels["instance"]), ("job", labels.get("job", "")))
        else:
            target = tuple(sorted((k, v) for k, v in labels.items() if k not in ("le", names.bin_label)))
        parsed.append((name, labels, samples, target))
        if name == names.requests:
            drops[target] += [(ta, tb) for (ta, a), (tb, b) in zip(samples, samples[1:], strict=False) if b < a]
    restarts = {target: restart_windows(found) for target, found in drops.items()}
    for name, labels, samples, target in parsed:
        inc = window_increase(samples, start_s, end_s, restarts.get(target, ()))
        if name == names.requests:
            seen_requests = True
            per_key[(name, "")] += inc
        elif name == names.latency_bucket:
            if "le" not in labels:
                raise ValueError(f"{name} series without an le label: {labels}")
            le = labels.pop("le")
            bucket_les[tuple(sorted(labels.items()))].add(le)
            per_key[(name, le)] += inc
        elif names.prediction_bins and name == names.prediction_bins:
            bin_value = labels.get(names.bin_label, "")
            if not (bin_value.isascii() and bin_value.isdigit()) or int(bin_value) >= MAX_PREDICTION_BINS:
                raise ValueError(f"{name} series with {names.bin_label}={_shown(bin_value)}, not a bin index "
                                 f"(0 to {MAX_PREDICTION_BINS - 1})")
            per_key[(name, bin_value)] += inc
        else:
            per_key[(name, "")] += inc
    if not seen_requests:
        raise NoDataError(BACKEND, f"no {names.requests} series for version {version!r}")
    bucket_inc = {le: v for (n, le), v in per_key.items() if n == names.latency_bucket}
    buckets, cumulative = bucket_counts(bucket_inc, list(bucket_les.values()), scale_to_ms)
    n_bins = DEFAULT_PREDICTION_BINS
    bin_inc = {int(b): v for (n, b), v in per_key.items() if names.prediction_bins and n == names.prediction_bins}
    if bin_inc:
        n_bins = max(n_bins, max(bin_inc) + 1)
    return VersionStats(
        version=version,
        requests=round(per_key[(names.requests, "")]),
        errors=round(per_key.get((names.errors, ""), 0.0)),
        latency_buckets_ms=buckets,
        latency_cumulative=cumulative,
        latency_sum_ms=per_key.get((names.latency_sum, ""), 0.0) * scale_to_ms,
        prediction_bins=tuple(round(bin_inc.get(i, 0.0)) for i in range(n_bins)),
        kpi_events=round(per_key.get((names.kpi, ""), 0.0)) if names.kpi else 0,
    )


def redact_url(url: str) -> str:
    """Drop any ``user:password@`` from a URL (for messages)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT_CHARS else text[:_BODY_EXCERPT_CHARS] + "..."


# ---------------------------------------------------------------------------------------------------------
# The source: the HTTP boundary (requests.Session), retries, auth.
# ---------------------------------------------------------------------------------------------------------

class PrometheusMetricsSource:
    """Read cumulative per-version statistics of one endpoint from Prometheus.

    :param endpoint: the spec's endpoint, matched against ``endpoint_label`` (skipped when that is ``""``).
    :param metric_prefix: prefix of the default metric names (``canary``: what the serving layer exports).
    :param version_label: label holding the model version.
    :param endpoint_label: label holding the endpoint name, or ``""`` when the series carry none.
    :param mirrored_label: label marking shadow answers (``"true"``), excluded; ``""`` reads every series.
    :param extra_matchers: more label matchers: ``{"label": "value"}`` or PromQL text.
    :param latency_unit: unit of the histogram's ``le`` bounds and sum, ``ms`` or ``s``.
    :param lookback_s: how far before the window's start the baseline sample may lie.
    :param timeout_s: per-request HTTP timeout (also sent to Prometheus as the query timeout).
    :param retries: retries after the first try on timeouts, connection errors, 429 and 5xx.
    :param backoff_s: first retry delay; doubles on each further retry.
    :param segment_label: label holding a request's segment (``""``: the segment attribute's own name).
    :param session: HTTP session (tests inject one with a fake transport adapter).
    :param sleep: the sleep between retries.
    :param names: ``requests_metric``, ``errors_metric``, ``latency_metric``, ``kpi_metric``,
        ``prediction_bins_metric``, ``bin_label``.
    """

    def __init__(self, conn: ConnInfo, *, endpoint: str, metric_prefix: str = "canary",
                 version_label: str = "version", endpoint_label: str = "endpoint", mirrored_label: str = "mirrored",
                 extra_matchers: Mapping[str, str] | str | None = None, latency_unit: str = "ms",
                 lookback_s: float = DEFAULT_LOOKBACK_S, timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.5, segment_label: str = "", session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, **names: str) -> None:
        if not _METRIC_NAME.match(metric_prefix):
            raise ConfigError(f"prometheus backend: metric_prefix {metric_prefix!r} is not a metric name prefix")
        if latency_unit not in _LATENCY_SCALE_TO_MS:
            raise ConfigError(f"prometheus backend: latency_unit {latency_unit!r}; known: "
                              f"{', '.join(_LATENCY_SCALE_TO_MS)}")
        if retries < 0 or timeout_s <= 0 or lookback_s < 0 or backoff_s < 0:
            raise ConfigError("prometheus backend: retries, lookback_s and backoff_s must be >= 0, timeout_s > 0")
        self.endpoint = endpoint
        self.names = MetricNames.from_prefix(metric_prefix, **names)
        self.version_label = version_label
        label_matcher(version_label, "")  # validates the label name
        if segment_label:
            label_matcher(segment_label, "")
        self.segment_label = segment_label
        self._matchers: list[str] = []
        if endpoint_label:
            self._matchers.append(label_matcher(endpoint_label, endpoint))
        if mirrored_label:
            self._matchers.append(label_matcher(mirrored_label, "true", "!="))
        self._matchers.extend(extra_matcher_list(extra_matchers))
        self.scale_to_ms = _LATENCY_SCALE_TO_MS[latency_unit]
        self.lookback_s = float(lookback_s)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self._sleep = sleep
        self._session = session or requests.Session()
        self._base_url = conn.base_url().rstrip("/") + "/" + str(conn.extra.get("path_prefix", "")).strip("/")
        self._base_url = self._base_url.rstrip("/")
        self._headers = {str(k): str(v) for k, v in dict(conn.extra.get("headers") or {}).items()}
        self._auth: tuple[str, str] | None = None
        token = conn.extra.get("token")
        if token and (conn.login or conn.password):
            raise ConfigError(f"connection {conn.conn_id!r}: set either login/password or extra.token, not both")
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif conn.login or conn.password:
            self._auth = (conn.login or "", conn.password or "")
        self._verify: bool | str = conn.extra.get("verify", True)

    def __repr__(self) -> str:
        return f"PrometheusMetricsSource(url={redact_url(self._base_url)!r}, endpoint={self.endpoint!r})"

    def within(self, match: Mapping[str, Sequence[str]]) -> PrometheusMetricsSource:
        """Return this source reading only the series of a targeted population (a targeted stage).

        Each attribute is a label of the same name, matched against its values (``region=~"eu-west|..."``):
        series without the label are not in the population, so an exporter without it gives no data (the
        stage halts), never every request.
        """
        source = copy.copy(self)
        source._matchers = [*self._matchers, *(label_matcher(name, "|".join(re.escape(v) for v in values), "=~")
                                               for name, values in sorted(match.items()))]
        return source

    def query_for(self, version: str, *, start_s: float, end_s: float) -> str:
        """Return the PromQL query that reads ``version``'s raw samples for the window."""
        matchers = [label_matcher(self.version_label, version), *self._matchers]
        return range_selector(self.names.all(), matchers, max(0.0, end_s - start_s) + self.lookback_s)

    def version_stats(self, version: str, *, start_s: float, end_s: float) -> VersionStats:
        """Return the statistics of ``version``'s served requests in ``[start_s, end_s)`` (epoch seconds).

        :raises NoDataError: Prometheus has no requests series for the version (over the window and the
            lookback before it).
        :raises BackendError: the API failed after retries, or returned series that do not add up.
        """
        query = self.query_for(version, start_s=start_s, end_s=end_s)
        data = self._api("/api/v1/query", {"query": query, "time": f"{end_s:.3f}"})
        if data.get("resultType") != "matrix":
            raise BackendError(BACKEND, f"query {query!r} at {self._base_url}: expected a matrix, got "
                                        f"{data.get('resultType')!r}")
        try:
            return stats_from_matrix(version, data.get("result", []), self.names, start_s=start_s, end_s=end_s,
                                     scale_to_ms=self.scale_to_ms)
        except NoDataError as err:
            raise NoDataError(BACKEND, f"no data for version {version!r} on endpoint {self.endpoint!r} at "
                                       f"{self._base_url}: query {query!r} returned no {self.names.requests} "
                                       f"series") from err
        except (ValueError, TypeError, KeyError) as err:
            raise BackendError(BACKEND, f"query {query!r} at {self._base_url}: inconsistent series for "
                                        f"version {version!r}: {err}") from err

    def segment_stats(self, version: str, *, by: str, values: Sequence[str], start_s: float,
                      end_s: float) -> dict[str, VersionStats]:
        """Return ``version``'s statistics per segment: the series whose segment label is each of ``values``.

        :raises BackendError: the API failed after retries, or returned series that do not add up.
        """
        label = self.segment_label or by
        matchers = [label_matcher(self.version_label, version),
                    label_matcher(label, "|".join(re.escape(v) for v in values), "=~"), *self._matchers]
        query = range_selector(self.names.all(), matchers, max(0.0, end_s - start_s) + self.lookback_s)
        data = self._api("/api/v1/query", {"query": query, "time": f"{end_s:.3f}"})
        if data.get("resultType") != "matrix":
            raise BackendError(BACKEND, f"query {query!r} at {self._base_url}: expected a matrix, got "
                                        f"{data.get('resultType')!r}")
        groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        result = data.get("result", [])
        malformed = not isinstance(result, list) or not all(
            isinstance(series, Mapping) and isinstance(series.get("metric", {}), Mapping) for series in result)
        if malformed:
            raise BackendError(BACKEND, f"query {query!r} at {self._base_url}: a matrix result must be a list of "
                                        f"series objects, got {_shown(result)}")
        for series in result:
            groups[str(series.get("metric", {}).get(label, ""))].append(series)
        out: dict[str, VersionStats] = {}
        for value in values:
            try:
                out[value] = stats_from_matrix(version, groups.get(value, []), self.names, start_s=start_s,
                                               end_s=end_s, scale_to_ms=self.scale_to_ms)
            except NoDataError:
                out[value] = VersionStats(version=version)  # no series for the segment: nothing served in it
            except (ValueError, TypeError, KeyError) as err:
                raise BackendError(BACKEND, f"query {query!r} at {self._base_url}: inconsistent series for "
                                            f"version {version!r} in segment {label}={value!r}: {err}") from err
        return out

    def shadow_summary(self, *, stable: str, candidate: str, start_s: float, end_s: float,
                       slow_threshold_ms: float | None = None, score_shift: float | None = None) -> ShadowSummary:
        """Refuse: shadow tests pair each mirrored answer with stable's answer, which counters cannot do."""
        raise BackendError(BACKEND, f"shadow tests need a per-request store: Prometheus at {self._base_url} only "
                                    "holds aggregate counters, so it cannot pair the candidate's mirrored answers "
                                    "with stable's answers to the same requests (prediction agreement). Set "
                                    "shadow.enabled: false in the spec, or read metrics from a per-request store "
                                    "(backend 'local').")

    def _api(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        """GET an API path; retry timeouts, connection errors, 429 and 5xx with backoff; return ``data``."""
        url = self._base_url + path
        shown = redact_url(url)
        params = {**params, "timeout": f"{self.timeout_s:g}s"}
        last_problem, last_status, cause = "", None, None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self._session.get(url, params=params, headers=self._headers, auth=self._auth,
                                         timeout=self.timeout_s, verify=self._verify)
            except (requests.Timeout, requests.ConnectionError) as err:
                last_problem, last_status, cause = f"{type(err).__name__}: {err}", None, err
                log.warning("prometheus %s failed (try %d of %d): %s", shown, attempt + 1, self.retries + 1,
                            type(err).__name__)
                continue
            except requests.RequestException as err:
                raise BackendError(BACKEND, f"query {params['query']!r} at {shown}: {err}") from err
            if resp.status_code >= 500 or resp.status_code == 429:
                last_problem, last_status, cause = f"HTTP {resp.status_code}: {_excerpt(resp.text)}", \
                    resp.status_code, None
                log.warning("prometheus %s answered %d (try %d of %d)", shown, resp.status_code, attempt + 1,
                            self.retries + 1)
                continue
            return self._parse(resp, shown, params["query"])
        raise BackendError(BACKEND, f"query {params['query']!r} at {shown} failed after {self.retries + 1} tries: "
                                    f"{last_problem}", status=last_status) from cause

    @staticmethod
    def _parse(resp: requests.Response, url: str, query: str) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError as err:
            raise BackendError(BACKEND, f"query {query!r} at {url}: HTTP {resp.status_code}, not JSON: "
                                        f"{_excerpt(resp.text)}", status=resp.status_code) from err
        if resp.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            error_type = body.get("errorType") if isinstance(body, dict) else None
            detail = f"{error_type}: {error}" if error else _excerpt(resp.text)
            raise BackendError(BACKEND, f"query {query!r} at {url}: HTTP {resp.status_code}: {detail}",
                               status=resp.status_code)
        data = body.get("data")
        if not isinstance(data, dict):
            raise BackendError(BACKEND, f"query {query!r} at {url}: response without data: {_excerpt(resp.text)}",
                               status=resp.status_code)
        return data
