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
- ``canary_feedback_labels_total``, ``canary_feedback_wrong_total``, ``canary_feedback_outcome_total`` and
  ``canary_feedback_outcome_value_sum``: late feedback per serving ``version`` with the *request's* labels of
  :data:`LABEL_ATTRIBUTES` (as the request counters), read from the metrics store (see
  :meth:`PrometheusCounters.feedback_series`). ``labels`` counts the labels on served requests that were
  answered (the labelled requests of a ``prediction_quality`` metric), ``wrong`` those whose label differs
  from the class the version predicted, as the local metrics source's ``label_stats`` derives them; the
  outcome families add ``outcome`` (the outcome's name, at most :data:`MAX_OUTCOME_NAMES` per endpoint).

The request counters live in memory and restart from zero with the process, as Prometheus counters do.
The per-request feedback families need the request's attributes and predicted class, which the feedback
route does not hold: they are totals of the store's ``feedback`` rows joined to their ``requests`` rows,
so they survive a restart, and a label given before its request's batch is committed (at most the store's
flush interval) is counted from the next scrape after the commit.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from canary.policy.evidence import DEFAULT_LATENCY_BUCKETS_MS, DEFAULT_PREDICTION_BINS, bin_index
from canary.serving.feedback import FEEDBACK_TABLE
from canary.serving.store import TABLE, open_readonly
from canary.spec import defaults

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Request attributes exported as labels, in label order.
LABEL_ATTRIBUTES = ("segment", "device", "region")
#: Distinct outcome names exposed per endpoint (the first ones given); the others are summed under
#: :data:`OTHER_OUTCOME`. Outcome names come from feedback clients, and each name multiplies the series of
#: every version, segment, device and region: unbounded, a client's typo loop would grow Prometheus' memory.
MAX_OUTCOME_NAMES = 20
#: The ``outcome`` label of the names past :data:`MAX_OUTCOME_NAMES`; no outcome has it (names start with a letter).
OTHER_OUTCOME = "_other"
_Key = tuple[str, str, bool, tuple[tuple[str, str], ...]]
#: ``(endpoint, version, attribute labels)`` of a feedback series.
_FeedbackKey = tuple[str, str, tuple[tuple[str, str], ...]]
# A feedback row joined to the served answer it is about, grouped by the request's label attributes:
# labels on answered requests, labels that differ from the predicted class (exactly the local metrics
# source's label_stats), and per outcome name its count and sum. CROSS JOIN + INDEXED BY as in label_stats.
_FEEDBACK_SERIES_SQL = f"""
SELECT f.endpoint, f.version, {{attributes}}, f.kind, f.name, MIN(f.id),
       TOTAL(f.kind = 'label' AND r.label IS NOT NULL),
       TOTAL(f.kind = 'label' AND r.label IS NOT NULL AND r.label != CAST(f.value AS INTEGER)),
       COUNT(*), TOTAL(f.value)
FROM {FEEDBACK_TABLE} AS f CROSS JOIN {TABLE} AS r INDEXED BY {TABLE}_request_id ON r.request_id = f.request_id
WHERE r.endpoint = f.endpoint AND r.version = f.version AND r.mirrored = 0
GROUP BY f.endpoint, f.version, {{attributes}}, f.kind, f.name
"""
_HAS_TABLES_SQL = f"SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('{TABLE}', '{FEEDBACK_TABLE}')"


@dataclass
class _FeedbackSeries:
    labels: int = 0
    wrong: int = 0
    #: outcome label -> [count, sum of values]
    outcomes: dict[str, list[float]] = field(default_factory=dict)


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

    def __init__(self, label_attributes: tuple[str, ...] = LABEL_ATTRIBUTES, *,
                 store_path: str | Path | None = None) -> None:
        """Count in memory; with ``store_path`` (the metrics store) also render the per-request feedback families."""
        self.label_attributes = label_attributes
        self.store_path = None if store_path is None else Path(store_path)
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

    def feedback_series(self) -> dict[_FeedbackKey, _FeedbackSeries]:
        """Return the store's feedback totals per ``(endpoint, version, attribute labels)`` ({} without a store).

        Outcome names past the first :data:`MAX_OUTCOME_NAMES` of an endpoint (by first arrival) are summed
        under :data:`OTHER_OUTCOME`.
        """
        if self.store_path is None or not self.store_path.exists():
            return {}
        columns = ", ".join("r.segment" if name == defaults.USER_SEGMENT_ATTRIBUTE else "json_extract(r.attributes, ?)"
                            for name in self.label_attributes)
        paths = [f"$.{name}" for name in self.label_attributes if name != defaults.USER_SEGMENT_ATTRIBUTE]
        with closing(open_readonly(self.store_path)) as conn:
            if conn.execute(_HAS_TABLES_SQL).fetchone()[0] < 2:
                return {}
            rows = conn.execute(_FEEDBACK_SERIES_SQL.format(attributes=columns), paths * 2).fetchall()
        first_seen: dict[tuple[str, str], int] = {}
        for endpoint, _version, *rest in rows:
            kind, name, first_id = rest[len(self.label_attributes):len(self.label_attributes) + 3]
            if kind == "outcome":
                first_seen[(endpoint, name)] = min(first_id, first_seen.get((endpoint, name), first_id))
        exposed: dict[str, set[str]] = {}
        for (endpoint, name), _first in sorted(first_seen.items(), key=lambda item: item[1]):
            names = exposed.setdefault(endpoint, set())
            if len(names) < MAX_OUTCOME_NAMES:
                names.add(name)
        out: dict[_FeedbackKey, _FeedbackSeries] = {}
        n = len(self.label_attributes)
        for endpoint, version, *rest in rows:
            values, (kind, name, _first, labels, wrong, count, total) = rest[:n], rest[n:]
            attrs = tuple((attr, str(value)) for attr, value in zip(self.label_attributes, values, strict=True)
                          if value not in (None, ""))
            series = out.setdefault((endpoint, version, attrs), _FeedbackSeries())
            series.labels += int(labels)
            series.wrong += int(wrong)
            if kind == "outcome":
                outcome = name if name in exposed.get(endpoint, ()) else OTHER_OUTCOME
                counts = series.outcomes.setdefault(outcome, [0, 0.0])
                counts[0] += count
                counts[1] += total
        return out

    def render(self, feedback_series: Mapping[_FeedbackKey, _FeedbackSeries] | None = None) -> str:
        """Return the exposition text of every series.

        :param feedback_series: :meth:`feedback_series`, read beforehand (the HTTP route reads the store in a
            worker thread, off the event loop); None reads it here.
        """
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
        if self.store_path is not None:
            self._render_feedback_series(family, lines,
                                         self.feedback_series() if feedback_series is None else feedback_series)
        return "\n".join(lines) + "\n"

    def _render_feedback_series(self, family, lines: list[str],
                                feedback_series: Mapping[_FeedbackKey, _FeedbackSeries]) -> None:
        per_request = sorted(feedback_series.items())

        def labels(key: _FeedbackKey, extra: str = "") -> str:
            endpoint, version, attrs = key
            attr_labels = "".join(f',{name}="{_escape(value)}"' for name, value in attrs)
            return f'{{endpoint="{_escape(endpoint)}",version="{_escape(version)}"{attr_labels}{extra}}}'

        family("canary_feedback_labels_total", "counter",
               "Labels received on answered served requests, by the request's labels (prediction_quality's labelled).")
        lines.extend(f"canary_feedback_labels_total{labels(k)} {s.labels}" for k, s in per_request)
        family("canary_feedback_wrong_total", "counter",
               "Labels that differ from the class the serving version predicted (prediction_quality's wrong).")
        lines.extend(f"canary_feedback_wrong_total{labels(k)} {s.wrong}" for k, s in per_request)
        outcomes = [(k, f',outcome="{_escape(name)}"', c) for k, s in per_request for name, c in sorted(s.outcomes.items())]
        family("canary_feedback_outcome_total", "counter", "Business outcomes given on served requests, per outcome name.")
        lines.extend(f"canary_feedback_outcome_total{labels(k, o)} {int(c[0])}" for k, o, c in outcomes)
        family("canary_feedback_outcome_value_sum", "counter", "Sum of the values of business outcomes, per outcome name.")
        lines.extend(f"canary_feedback_outcome_value_sum{labels(k, o)} {c[1]!r}" for k, o, c in outcomes)
