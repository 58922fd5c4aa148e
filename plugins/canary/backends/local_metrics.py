"""Metrics source over the embedded serving layer's SQLite store (schema in :mod:`canary.serving.store`).

Connection: the store file is ``extra["path"]``, else ``host`` when it is a path.

Only served (non-mirrored) requests count as a version's traffic. :class:`NoDataError` means the version
has never served a request on the endpoint (no series, as in Prometheus); a version that has served before
but not within the window gets zero counts, which the gate reads as "not enough data yet". Mirrored answers
never make a series: a version that was only shadowed has no served traffic to judge.

Each call runs one aggregate query over the ``(endpoint, version, ts)`` index (plus, for an empty window, a
one-row existence check), so polls stay cheap on stores with millions of rows. :meth:`shadow_outputs` (once
per shadow test) reads the candidate's mirrored rows of the window over the same index.

:meth:`LocalMetricsSource.within` restricts every count to a targeted population (``targeting``): requests whose
attributes (or derived user segment) match, as the serving layer routed them.
"""

from __future__ import annotations

import copy
import math
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from canary.backends.base import ConnInfo, ShadowSummary
from canary.errors import BackendError, ConfigError, NoDataError
from canary.policy.evidence import DEFAULT_LATENCY_BUCKETS_MS, DEFAULT_PREDICTION_BINS, VersionStats
from canary.serving.feedback import FEEDBACK_TABLE
from canary.serving.store import TABLE, open_readonly
from canary.spec import defaults

BACKEND = "local-metrics"
_FINITE_BUCKETS_MS = [b for b in DEFAULT_LATENCY_BUCKETS_MS if b != float("inf")]
_BUCKET_PARAMS = {f"b{i}": b for i, b in enumerate(_FINITE_BUCKETS_MS)}


def _score_bin(alias: str) -> str:
    """SQL of a score's equal-width bin, exactly :func:`canary.policy.evidence.bin_index`."""
    return f"MIN(MAX(CAST({alias}.score * {DEFAULT_PREDICTION_BINS} AS INTEGER), 0), {DEFAULT_PREDICTION_BINS - 1})"


def _score_bin_sums(alias: str) -> str:
    """SQL counting, per score bin, the pairs both answered."""
    return ", ".join(f"SUM(s.error = 0 AND c.error = 0 AND {_score_bin(alias)} = {i})"
                     for i in range(DEFAULT_PREDICTION_BINS))


def _bucket_sums(alias: str) -> str:
    """SQL summing, per finite bucket bound, the rows of ``alias`` at or below it (+Inf is COUNT(*))."""
    return ", ".join(f"SUM({alias}.latency_ms <= :b{i})" for i in range(len(_FINITE_BUCKETS_MS)))


_STATS_COLUMNS = f"""COUNT(*), SUM(r.error), TOTAL(r.latency_ms), TOTAL(r.log_latency_ms),
       TOTAL(r.log_latency_ms * r.log_latency_ms), SUM(r.kpi_event), {_bucket_sums("r")}"""
_BIN = f"CASE WHEN r.score IS NULL THEN NULL ELSE {_score_bin('r')} END"
_SERVED_IN_WINDOW = "r.endpoint = :endpoint AND r.version = :version AND r.mirrored = 0 AND r.ts >= :start AND r.ts < :end"
# ``{population}``: the targeted population's clauses (:func:`_population_sql`), empty for every request.
_VERSION_STATS_SQL = f"""
SELECT {_BIN} AS bin, {_STATS_COLUMNS}
FROM {TABLE} AS r
WHERE {_SERVED_IN_WINDOW}{{population}}
GROUP BY bin
"""
_SEGMENT_STATS_SQL = f"""
SELECT {{segment}} AS seg, {_BIN} AS bin, {_STATS_COLUMNS}
FROM {TABLE} AS r
WHERE {_SERVED_IN_WINDOW} AND seg IS NOT NULL{{population}}
GROUP BY seg, bin
"""


def _segment_of(by: str) -> str:
    """SQL of request ``r``'s value of attribute ``by``: the column the serving layer derives from X-User-Id,
    or one of its JSON attributes (the JSON path is the bound parameter ``:path``; ``by`` never enters the SQL)."""
    return _attribute_of(by, "path")


def _attribute_of(name: str, path_param: str) -> str:
    """SQL of request ``r``'s value of attribute ``name``, its JSON path bound as ``:<path_param>``."""
    return "r.segment" if name == defaults.USER_SEGMENT_ATTRIBUTE else f"json_extract(r.attributes, :{path_param})"


def _population_sql(match: Mapping[str, Sequence[str]] | None) -> tuple[str, dict[str, str]]:
    """Return the SQL clauses (``" AND ..."``) keeping the requests ``match`` targets, and their parameters.

    Every attribute must hold one of its values; names and values are bound parameters, never SQL text.
    """
    if not match:
        return "", {}
    clauses, params = [], {}
    for i, (name, values) in enumerate(sorted(match.items())):
        params[f"pop{i}"] = f"$.{name}"
        placeholders = []
        for j, value in enumerate(values):
            params[f"pop{i}_{j}"] = value
            placeholders.append(f":pop{i}_{j}")
        clauses.append(f"{_attribute_of(name, f'pop{i}')} IN ({', '.join(placeholders)})")
    return "".join(f" AND {c}" for c in clauses), params
# Labelled requests: a served, answered request of the window joined to its ground-truth label (the
# feedback table, indexed by endpoint, version and request time); wrong = predicted class != label.
_LABEL_STATS_SQL = f"""
SELECT {{segment}} AS seg, COUNT(*), TOTAL(r.label != CAST(f.value AS INTEGER))
FROM {FEEDBACK_TABLE} AS f CROSS JOIN {TABLE} AS r INDEXED BY {TABLE}_request_id ON r.request_id = f.request_id
WHERE f.endpoint = :endpoint AND f.version = :version AND f.kind = 'label' AND f.request_ts >= :start
  AND f.request_ts < :end AND r.endpoint = :endpoint AND r.version = :version AND r.mirrored = 0
  AND r.label IS NOT NULL{{population}}
GROUP BY seg
"""
# Business outcomes: the served requests of the window (the exposure), and those with each outcome (value > 0).
_SERVED_SQL = f"""
SELECT {{segment}} AS seg, COUNT(*)
FROM {TABLE} AS r
WHERE {_SERVED_IN_WINDOW}{{population}}
GROUP BY seg
"""
_OUTCOME_STATS_SQL = f"""
SELECT {{segment}} AS seg, f.name, COUNT(*)
FROM {FEEDBACK_TABLE} AS f CROSS JOIN {TABLE} AS r INDEXED BY {TABLE}_request_id ON r.request_id = f.request_id
WHERE f.endpoint = :endpoint AND f.version = :version AND f.kind = 'outcome' AND f.value > 0
  AND f.request_ts >= :start AND f.request_ts < :end AND r.endpoint = :endpoint AND r.version = :version
  AND r.mirrored = 0{{population}}
GROUP BY seg, f.name
"""
_HAS_FEEDBACK_SQL = f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{FEEDBACK_TABLE}'"
_HAS_SERVED_SQL = f"SELECT 1 FROM {TABLE} WHERE endpoint = ? AND version = ? AND mirrored = 0 LIMIT 1"
# The candidate's score minus stable's, clipped to [-1, 1] (the mean-difference test's domain; a score outside
# [0, 1] is the output expectations' business). An answered request always has a score (NULL only on error).
_CLIPPED_DIFF = "MIN(MAX(c.score - s.score, -1.0), 1.0)"
# The candidate's mirrored rows drive the join (range scan on the index), each looking up the served
# answer of the same request by request_id. Left alone, SQLite's planner prefers the (endpoint, version)
# index for that lookup, a scan per row; CROSS JOIN pins the order and INDEXED BY the lookup index.
_SHADOW_SQL = f"""
SELECT COUNT(*), SUM(s.error), SUM(c.error),
       SUM(s.error = 0 AND c.error = 0),
       SUM(CASE WHEN s.error = 0 AND c.error = 0 THEN s.label = c.label END),
       AVG(CASE WHEN s.error = 0 AND c.error = 0 THEN ABS(s.score - c.score) END),
       SUM(c.error = 1 AND s.error = 0), SUM(s.error = 1 AND c.error = 0),
       SUM(c.latency_ms > :slow_ms AND s.latency_ms <= :slow_ms), SUM(s.latency_ms > :slow_ms AND c.latency_ms <= :slow_ms),
       SUM(s.error = 0 AND c.error = 0 AND c.score - s.score > :shift),
       SUM(s.error = 0 AND c.error = 0 AND s.score - c.score > :shift),
       TOTAL(CASE WHEN s.error = 0 AND c.error = 0 THEN {_CLIPPED_DIFF} END),
       TOTAL(CASE WHEN s.error = 0 AND c.error = 0 THEN {_CLIPPED_DIFF} * {_CLIPPED_DIFF} END),
       {_score_bin_sums("s")}, {_score_bin_sums("c")},
       {_bucket_sums("s")}, {_bucket_sums("c")}
FROM {TABLE} AS c CROSS JOIN {TABLE} AS s INDEXED BY {TABLE}_request_id ON s.request_id = c.request_id
WHERE c.endpoint = :endpoint AND c.version = :candidate AND c.mirrored = 1 AND c.ts >= :start AND c.ts < :end
  AND s.endpoint = :endpoint AND s.version = :stable AND s.mirrored = 0
"""

_SHADOW_OUTPUTS_SQL = f"""
SELECT request_id, ts, score, label, latency_ms, error FROM {TABLE}
WHERE endpoint = :endpoint AND version = :candidate AND mirrored = 1 AND ts >= :start AND ts < :end
ORDER BY ts, id
"""


def _stats_of_rows(version: str, rows: Sequence[tuple[Any, ...]]) -> VersionStats:
    """Sum the per-bin rows of ``_STATS_COLUMNS`` (bin first) into one version's statistics."""
    requests = errors = kpi_events = 0
    latency_sum_ms = log_sum = log_sumsq = 0.0
    below = [0] * len(_FINITE_BUCKETS_MS)
    prediction_bins = [0] * DEFAULT_PREDICTION_BINS
    for bin_, count, n_errors, lat_sum, lsum, lsumsq, kpi, *bucket_counts in rows:
        requests += count
        errors += n_errors
        kpi_events += kpi
        latency_sum_ms += lat_sum
        log_sum += lsum
        log_sumsq += lsumsq
        below = [a + b for a, b in zip(below, bucket_counts, strict=True)]
        if bin_ is not None:
            prediction_bins[bin_] += count
    return VersionStats(version=version, requests=requests, errors=errors,
                        latency_buckets_ms=DEFAULT_LATENCY_BUCKETS_MS, latency_cumulative=(*below, requests),
                        latency_sum_ms=latency_sum_ms, log_latency_sum=log_sum, log_latency_sumsq=log_sumsq,
                        prediction_bins=tuple(prediction_bins), kpi_events=kpi_events)


def _store_path(conn: ConnInfo) -> Path:
    host = conn.host or ""
    path = conn.extra.get("path") or (host if "/" in host or host.endswith((".db", ".sqlite", ".sqlite3")) else "")
    if not path:
        raise ConfigError(f"connection {conn.conn_id!r}: set extra.path (or host) to the metrics store's SQLite file")
    return Path(path).expanduser()


class LocalMetricsSource:
    """Read cumulative per-version statistics of one endpoint from the local metrics store."""

    def __init__(self, conn: ConnInfo, *, endpoint: str) -> None:
        self.endpoint = endpoint
        self.path = _store_path(conn)
        #: The targeted population whose requests count (None: every request); see :meth:`within`.
        self.population: dict[str, tuple[str, ...]] | None = None
        self._population, self._population_params = _population_sql(None)

    def within(self, match: Mapping[str, Sequence[str]]) -> LocalMetricsSource:
        """Return this source counting only requests whose attributes match ``match`` (a targeted stage)."""
        source = copy.copy(self)
        source.population = {k: tuple(v) for k, v in match.items()}
        source._population, source._population_params = _population_sql(source.population)
        return source

    def version_stats(self, version: str, *, start_s: float, end_s: float) -> VersionStats:
        """Return the statistics of ``version``'s served requests in ``[start_s, end_s)`` (epoch seconds).

        :raises NoDataError: the version has never served a request on this endpoint.
        """
        params = {"endpoint": self.endpoint, "version": version, "start": start_s, "end": end_s,
                  **_BUCKET_PARAMS, **self._population_params}
        rows = self._query(_VERSION_STATS_SQL.format(population=self._population), params)
        if not rows and not self._query(_HAS_SERVED_SQL, (self.endpoint, version)):
            raise NoDataError(BACKEND, f"store {self.path}: version {version!r} has never served a request "
                                       f"on endpoint {self.endpoint!r}")
        return _stats_of_rows(version, rows)

    def segment_stats(self, version: str, *, by: str, values: Sequence[str], start_s: float,
                      end_s: float) -> dict[str, VersionStats]:
        """Return ``version``'s statistics per value of request attribute ``by`` (one query).

        ``by: segment`` reads the segment the serving layer derives from ``X-User-Id``; any other name the
        request's ``attributes``. A value without requests in the window gets zero counts.
        """
        params = {"endpoint": self.endpoint, "version": version, "start": start_s, "end": end_s,
                  "path": f"$.{by}", **_BUCKET_PARAMS, **self._population_params}
        sql = _SEGMENT_STATS_SQL.format(segment=_segment_of(by), population=self._population)
        rows: dict[str, list[tuple[Any, ...]]] = {value: [] for value in values}
        for seg, *row in self._query(sql, params):
            if seg in rows:
                rows[seg].append(tuple(row))
        return {value: _stats_of_rows(version, found) for value, found in rows.items()}

    def label_stats(self, version: str, *, start_s: float, end_s: float, by: str | None = None,
                    values: Sequence[str] = ()) -> dict[str | None, tuple[int, int]]:
        """Return ``(labelled, wrong)`` of ``version``'s answered requests in ``[start_s, end_s)`` with a label.

        Under ``None`` for all of them and, with ``by``, under each of ``values`` for its segment (zeros
        without labels). Only served answers count: a label is about the answer the user got.
        """
        out: dict[str | None, tuple[int, int]] = {None: (0, 0), **{v: (0, 0) for v in values}}
        if not self._query(_HAS_FEEDBACK_SQL, ()):
            return out  # no feedback was ever given on this store
        segment = "NULL" if by is None else _segment_of(by)
        params = {"endpoint": self.endpoint, "version": version, "start": start_s, "end": end_s,
                  "path": f"$.{by}", **self._population_params}
        labelled = wrong = 0
        sql = _LABEL_STATS_SQL.format(segment=segment, population=self._population)
        for seg, count, n_wrong in self._query(sql, params):
            labelled, wrong = labelled + count, wrong + int(n_wrong)
            if seg in out and seg is not None:
                out[seg] = (count, int(n_wrong))
        out[None] = (labelled, wrong)
        return out

    def outcome_stats(self, version: str, *, names: Sequence[str], start_s: float, end_s: float,
                      by: str | None = None, values: Sequence[str] = ()) -> dict[str | None, tuple[int, dict[str, int]]]:
        """Return ``(served, {name: requests with that outcome})`` of ``version``'s requests in ``[start_s, end_s)``.

        Under ``None`` for all of them and, with ``by``, under each of ``values`` for its segment. The requests
        are those served in the window (by arrival time); an outcome counts when its value is above 0, once per
        request and name (the serving layer refuses a second one).
        """
        segment = "NULL" if by is None else _segment_of(by)
        params = {"endpoint": self.endpoint, "version": version, "start": start_s, "end": end_s,
                  "path": f"$.{by}", **self._population_params}
        keys: list[str | None] = [None, *values]
        served = dict.fromkeys(keys, 0)
        events: dict[str | None, dict[str, int]] = {k: dict.fromkeys(names, 0) for k in keys}
        for seg, count in self._query(_SERVED_SQL.format(segment=segment, population=self._population), params):
            served[None] += count
            if seg is not None and seg in served:
                served[seg] = count
        if names and self._query(_HAS_FEEDBACK_SQL, ()):
            sql = _OUTCOME_STATS_SQL.format(segment=segment, population=self._population)
            for seg, name, count in self._query(sql, params):
                if name not in events[None]:
                    continue
                events[None][name] += count
                if seg is not None and seg in events:
                    events[seg][name] = count
        return {k: (served[k], events[k]) for k in keys}

    def shadow_summary(self, *, stable: str, candidate: str, start_s: float, end_s: float,
                       slow_threshold_ms: float | None = None, score_shift: float | None = None) -> ShadowSummary:
        """Compare ``candidate``'s mirrored answers with ``stable``'s served answers to the same requests.

        Requests are in the window by arrival time. Agreement and score difference are over pairs both
        versions answered successfully; p95 latencies are estimated from the latency histogram, as
        ``histogram_quantile`` would (an empty window gives ``pairs=0`` and None). Slow pairs count
        every pair, answered or failed (a failure that took long is slow too); shifted pairs and the sums
        of score differences only those both answered.
        """
        params = {"endpoint": self.endpoint, "stable": stable, "candidate": candidate, "start": start_s,
                  "end": end_s, "slow_ms": math.inf if slow_threshold_ms is None else slow_threshold_ms,
                  "shift": math.inf if score_shift is None else score_shift,
                  **_BUCKET_PARAMS}
        (pairs, s_errors, c_errors, both_ok, agree, mean_abs_diff, c_only_err, s_only_err, c_only_slow, s_only_slow,
         higher, lower, diff_sum, diff_sum_sq, *rest) = self._query(_SHADOW_SQL, params)[0]
        k = DEFAULT_PREDICTION_BINS
        stable_bins, candidate_bins, buckets = rest[:k], rest[k:2 * k], rest[2 * k:]
        if not pairs:
            return ShadowSummary(pairs=0, stable_errors=0, candidate_errors=0, prediction_agreement=None,
                                 mean_abs_score_diff=None, stable_latency_p95_ms=None, candidate_latency_p95_ms=None,
                                 score_diff_sum=0.0, score_diff_sum_sq=0.0)
        n_buckets = len(_FINITE_BUCKETS_MS)

        def p95(version: str, below: list[int]) -> float | None:
            stats = VersionStats(version=version, requests=pairs, latency_cumulative=(*below, pairs))
            return stats.latency_quantile_ms(0.95)

        return ShadowSummary(
            pairs=pairs, stable_errors=s_errors, candidate_errors=c_errors,
            prediction_agreement=agree / both_ok if both_ok else None, mean_abs_score_diff=mean_abs_diff,
            stable_latency_p95_ms=p95(stable, buckets[:n_buckets]),
            candidate_latency_p95_ms=p95(candidate, buckets[n_buckets:]),
            candidate_only_errors=c_only_err, stable_only_errors=s_only_err, answered_pairs=both_ok,
            disagreements=both_ok - (agree or 0), slow_threshold_ms=slow_threshold_ms,
            candidate_only_slow=c_only_slow if slow_threshold_ms is not None else 0,
            stable_only_slow=s_only_slow if slow_threshold_ms is not None else 0, score_shift=score_shift,
            scores_higher=(higher or 0) if score_shift is not None else 0,
            scores_lower=(lower or 0) if score_shift is not None else 0,
            stable_score_bins=tuple(int(b or 0) for b in stable_bins),
            candidate_score_bins=tuple(int(b or 0) for b in candidate_bins),
            score_diff_sum=float(diff_sum), score_diff_sum_sq=float(diff_sum_sq))

    def shadow_outputs(self, candidate: str, *, start_s: float, end_s: float) -> list[dict[str, Any]]:
        """Return ``candidate``'s mirrored answers to requests that arrived in ``[start_s, end_s)``, oldest first.

        Every mirrored answer counts, paired with a served one or not: the outputs are validated on their own.
        """
        params = {"endpoint": self.endpoint, "candidate": candidate, "start": start_s, "end": end_s}
        return [{"request_id": request_id, "ts": ts, "score": score, "label": label, "latency_ms": latency_ms,
                 "error": int(error)}
                for request_id, ts, score, label, latency_ms, error in self._query(_SHADOW_OUTPUTS_SQL, params)]

    def _query(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        try:
            with closing(open_readonly(self.path)) as db:
                return db.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise BackendError(BACKEND, f"store {self.path} (endpoint {self.endpoint!r}): {err}") from err
