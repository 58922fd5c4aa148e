"""Prometheus text exposition (format 0.0.4) of the serving layer's counters.

Every series carries ``endpoint``, ``version`` and ``mirrored`` (``"true"`` for shadow answers that were
never returned to a client; served traffic is ``mirrored="false"``), then one label per request attribute
of :data:`LABEL_ATTRIBUTES` the request has (``segment``, derived from ``X-User-Id``, and the client's
``device`` and ``region``), so that a segment's statistics can be read from Prometheus
(``analysis.segments``). Other attributes are not labels: a label's every value is a series.

- ``canary_requests_total``: answered requests.
- ``canary_request_errors_total``: answers with HTTP 500.
- ``canary_request_latency_ms``: histogram (``_bucket{le=...}``, ``_sum``, ``_count``) of server-side
  latency over :data:`canary.policy.evidence.DEFAULT_LATENCY_BUCKETS_MS`.
- ``canary_kpi_events_total``: synthetic KPI (conversion) events.
- ``canary_prediction_score_bin_total``: successful predictions per score bin; label ``bin="i"`` counts
  scores in ``[i/10, (i+1)/10)`` (1.0 in the last bin), exactly :func:`canary.policy.evidence.bin_index`, so the
  counts are ``VersionStats.prediction_bins`` without differencing a cumulative histogram.
- ``canary_feedback_total`` and ``canary_feedback_value_sum``: late feedback (:mod:`canary.serving.feedback`)
  per serving ``version`` and user ``segment``, with ``kind`` (``label``/``outcome``) and ``name`` (``label``
  or the outcome's name); the sum of labels is the count of positive labels. No ``mirrored`` label:
  feedback is always about a served answer.

Counters live in memory and restart from zero with the process, as Prometheus counters do.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from canary.policy.evidence import DEFAULT_LATENCY_BUCKETS_MS, DEFAULT_PREDICTION_BINS, bin_index

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Request attributes exported as labels, in label order.
LABEL_ATTRIBUTES = ("segment", "device", "region")
_Key = tuple[str, str, bool, tuple[tuple[str, str], ...]]


@dataclass
class _Series:
    requests: int = 0
    errors: int = 0
    kpi_events: int = 0
    latency_sum_ms: float = 0.0
    latency_counts: list[int] = field(default_factory=lambda: [0] * len(DEFAULT_LATENCY_BUCKETS_MS))
    score_bins: list[int] = field(default_factory=lambda: [0] * DEFAULT_PREDICTION_BINS)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_bound(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class PrometheusCounters:
    """Per ``(endpoint, version, mirrored, attribute labels)`` counters, rendered as Prometheus text."""

    def __init__(self, label_attributes: tuple[str, ...] = LABEL_ATTRIBUTES) -> None:
        self.label_attributes = label_attributes
        self._series: dict[_Key, _Series] = {}
        #: (endpoint, version, segment, kind, name) -> [count, sum of values]
        self._feedback: dict[tuple[str, str, str, str, str], list[float]] = {}

    def observe_feedback(self, *, endpoint: str, version: str, segment: str, kind: str, name: str,
                         value: float) -> None:
        """Count one stored piece of feedback."""
        counts = self._feedback.setdefault((endpoint, version, segment, kind, name), [0, 0.0])
        counts[0] += 1
        counts[1] += value

    def observe(self, *, endpoint: str, version: str, mirrored: bool, latency_ms: float, error: bool,
                score: float | None, kpi_event: bool, attributes: Mapping[str, str] | None = None) -> None:
        """Count one answer of a request with ``attributes`` (those of :attr:`label_attributes` become labels)."""
        attrs = attributes or {}
        labels = tuple((name, attrs[name]) for name in self.label_attributes if attrs.get(name))
        s = self._series.setdefault((endpoint, version, mirrored, labels), _Series())
        s.requests += 1
        s.errors += int(error)
        s.kpi_events += int(kpi_event)
        s.latency_sum_ms += latency_ms
        s.latency_counts[bisect.bisect_left(DEFAULT_LATENCY_BUCKETS_MS, latency_ms)] += 1
        if score is not None:
            s.score_bins[bin_index(score)] += 1

    def render(self) -> str:
        """Return the exposition text of every series."""
        series = sorted(self._series.items())

        def labels(key: _Key, extra: str = "") -> str:
            endpoint, version, mirrored, attrs = key
            attr_labels = "".join(f',{name}="{_escape(value)}"' for name, value in attrs)
            return (f'{{endpoint="{_escape(endpoint)}",version="{_escape(version)}",'
                    f'mirrored="{str(mirrored).lower()}"{attr_labels}{extra}}}')

        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])

        family("canary_requests_total", "counter", "Prediction requests answered.")
        lines.extend(f"canary_requests_total{labels(k)} {s.requests}" for k, s in series)
        family("canary_request_errors_total", "counter", "Prediction requests answered with HTTP 500.")
        lines.extend(f"canary_request_errors_total{labels(k)} {s.errors}" for k, s in series)
        family("canary_request_latency_ms", "histogram", "Server-side request latency in milliseconds.")
        for k, s in series:
            cumulative = 0
            for bound, count in zip(DEFAULT_LATENCY_BUCKETS_MS, s.latency_counts, strict=True):
                cumulative += count
                le = f',le="{_format_bound(bound)}"'
                lines.append(f"canary_request_latency_ms_bucket{labels(k, le)} {cumulative}")
            lines.append(f"canary_request_latency_ms_sum{labels(k)} {s.latency_sum_ms!r}")
            lines.append(f"canary_request_latency_ms_count{labels(k)} {s.requests}")
        family("canary_kpi_events_total", "counter", "Synthetic KPI (conversion) events.")
        lines.extend(f"canary_kpi_events_total{labels(k)} {s.kpi_events}" for k, s in series)
        family("canary_prediction_score_bin_total", "counter",
               "Successful predictions per score bin; bin i holds scores in [i/10, (i+1)/10).")
        for k, s in series:
            for i, count in enumerate(s.score_bins):
                bin_label = f',bin="{i}"'
                lines.append(f"canary_prediction_score_bin_total{labels(k, bin_label)} {count}")
        feedback = sorted(self._feedback.items())

        def feedback_labels(key: tuple[str, str, str, str, str]) -> str:
            names = ("endpoint", "version", "segment", "kind", "name")
            return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, key, strict=True)) + "}"

        family("canary_feedback_total", "counter", "Late feedback (labels, outcomes) on served requests.")
        lines.extend(f"canary_feedback_total{feedback_labels(k)} {int(c[0])}" for k, c in feedback)
        family("canary_feedback_value_sum", "counter", "Sum of the values of late feedback (positive labels).")
        lines.extend(f"canary_feedback_value_sum{feedback_labels(k)} {c[1]!r}" for k, c in feedback)
        return "\n".join(lines) + "\n"
