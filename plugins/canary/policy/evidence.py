"""Cumulative per-version statistics: the only thing metrics backends return.

Every backend reduces its raw data to :class:`VersionStats` over a time window, so decisions
depend on cumulative counts only: any poll cadence, missed polls, retries and restarts give the
same answer for the same window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: Latency histogram upper bounds in milliseconds (Prometheus ``le`` style; the last is +Inf).
DEFAULT_LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, math.inf,
)
#: Number of equal-width prediction-score bins on [0, 1].
DEFAULT_PREDICTION_BINS = 10


@dataclass(frozen=True, kw_only=True)
class VersionStats:
    """Cumulative statistics of one model version over a window.

    :param latency_buckets_ms: ascending upper bounds; ``latency_cumulative[i]`` counts requests with
        latency <= ``latency_buckets_ms[i]`` (Prometheus histogram convention, last bound +Inf).
    :param prediction_bins: counts of successful predictions per equal-width score bin on [0, 1].
    :param log_latency_sum: sum of ln(latency_ms) over requests, where raw samples exist (else None).
    """

    version: str
    requests: int = 0
    errors: int = 0
    latency_buckets_ms: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS_MS
    latency_cumulative: tuple[int, ...] = field(default=(0,) * len(DEFAULT_LATENCY_BUCKETS_MS))
    latency_sum_ms: float = 0.0
    log_latency_sum: float | None = None
    log_latency_sumsq: float | None = None
    prediction_bins: tuple[int, ...] = (0,) * DEFAULT_PREDICTION_BINS
    kpi_events: int = 0
    #: Requests whose ground-truth label has arrived (old enough for the metric's ``label_delay``), and of
    #: those the ones the version predicted wrongly (metric kind ``prediction_quality``).
    labelled: int = 0
    wrong: int = 0
    #: Served requests old enough for their feedback to have arrived (``label_delay``), and per business
    #: outcome name, how many of them had that outcome (value > 0): the exposure and events of a ``kpi`` metric
    #: with an ``outcome``. Sorted by name.
    aged: int = 0
    outcomes: tuple[tuple[str, int], ...] = ()

    def outcome_events(self, name: str) -> int:
        """Return how many aged requests had the outcome ``name`` (0 when none did)."""
        return dict(self.outcomes).get(name, 0)

    def __post_init__(self) -> None:
        if self.requests < 0 or self.errors < 0 or self.kpi_events < 0:
            raise ValueError(f"{self.version}: counts must be >= 0 (requests={self.requests}, errors={self.errors})")
        if self.wrong < 0 or self.wrong > self.labelled or self.labelled < 0:
            raise ValueError(f"{self.version}: wrong ({self.wrong}) must be within 0..labelled ({self.labelled})")
        for name, events in self.outcomes:
            if not 0 <= events <= self.aged:
                raise ValueError(f"{self.version}: outcome {name!r} events ({events}) must be within 0..aged "
                                 f"({self.aged})")
        if self.errors > self.requests:
            raise ValueError(f"{self.version}: errors ({self.errors}) exceed requests ({self.requests})")
        if len(self.latency_buckets_ms) != len(self.latency_cumulative):
            raise ValueError(f"{self.version}: {len(self.latency_buckets_ms)} latency buckets but "
                             f"{len(self.latency_cumulative)} counts")
        if any(b > a for a, b in zip(self.latency_cumulative[1:], self.latency_cumulative[:-1], strict=False)):
            raise ValueError(f"{self.version}: latency_cumulative must be non-decreasing")

    @property
    def error_rate(self) -> float | None:
        """Errors per request, or None without requests."""
        return self.errors / self.requests if self.requests else None

    @property
    def latency_observations(self) -> int:
        """Number of requests with a recorded latency (the +Inf bucket)."""
        return self.latency_cumulative[-1] if self.latency_cumulative else 0

    def latency_exceedances(self, threshold_ms: float) -> int:
        """Count requests slower than ``threshold_ms``, which must be one of the bucket bounds."""
        try:
            idx = self.latency_buckets_ms.index(threshold_ms)
        except ValueError as err:
            raise ValueError(f"{threshold_ms} ms is not a latency bucket bound {self.latency_buckets_ms}") from err
        return self.latency_observations - self.latency_cumulative[idx]

    def latency_quantile_ms(self, q: float) -> float | None:
        """Estimate the ``q`` quantile by linear interpolation within buckets (as PromQL ``histogram_quantile``)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        total = self.latency_observations
        if total == 0:
            return None
        rank = q * total
        prev_bound, prev_count = 0.0, 0
        for bound, count in zip(self.latency_buckets_ms, self.latency_cumulative, strict=True):
            if count >= rank:
                if math.isinf(bound):
                    return prev_bound
                if count == prev_count:
                    return bound
                return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
            prev_bound, prev_count = bound, count
        return prev_bound

    def prediction_distribution(self) -> tuple[float, ...] | None:
        """Share of predictions per bin, or None without predictions."""
        n = sum(self.prediction_bins)
        return tuple(c / n for c in self.prediction_bins) if n else None

    def minus(self, earlier: VersionStats) -> VersionStats:
        """Return the statistics accumulated after ``earlier`` (both cumulative from the same origin)."""
        if earlier.latency_buckets_ms != self.latency_buckets_ms:
            raise ValueError("cannot subtract stats with different latency buckets")

        def opt(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a - b

        return VersionStats(
            version=self.version,
            requests=self.requests - earlier.requests,
            errors=self.errors - earlier.errors,
            latency_buckets_ms=self.latency_buckets_ms,
            latency_cumulative=tuple(a - b for a, b in zip(self.latency_cumulative, earlier.latency_cumulative,
                                                            strict=True)),
            latency_sum_ms=self.latency_sum_ms - earlier.latency_sum_ms,
            log_latency_sum=opt(self.log_latency_sum, earlier.log_latency_sum),
            log_latency_sumsq=opt(self.log_latency_sumsq, earlier.log_latency_sumsq),
            prediction_bins=tuple(a - b for a, b in zip(self.prediction_bins, earlier.prediction_bins, strict=True)),
            kpi_events=self.kpi_events - earlier.kpi_events,
            labelled=self.labelled - earlier.labelled,
            wrong=self.wrong - earlier.wrong,
            aged=self.aged - earlier.aged,
            outcomes=tuple((name, events - earlier.outcome_events(name)) for name, events in self.outcomes),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (+Inf bucket written as the string ``"+Inf"``)."""
        d = asdict(self)
        d["latency_buckets_ms"] = ["+Inf" if math.isinf(b) else b for b in self.latency_buckets_ms]
        d["latency_cumulative"] = list(self.latency_cumulative)
        d["prediction_bins"] = list(self.prediction_bins)
        d["outcomes"] = [list(o) for o in self.outcomes]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionStats:
        """Inverse of :meth:`to_dict`."""
        d = dict(data)
        d["latency_buckets_ms"] = tuple(math.inf if b in ("+Inf", "inf") else float(b) for b in d["latency_buckets_ms"])
        d["latency_cumulative"] = tuple(int(c) for c in d["latency_cumulative"])
        d["prediction_bins"] = tuple(int(c) for c in d["prediction_bins"])
        d["outcomes"] = tuple((str(name), int(events)) for name, events in d.get("outcomes") or ())
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """Stable and canary statistics over the same window ``[start_s, end_s]`` (epoch seconds).

    ``segments`` holds the same window per segment value (``analysis.segments``), empty without segments.
    """

    stable: VersionStats
    canary: VersionStats
    start_s: float
    end_s: float
    segments: Mapping[str, Snapshot] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"stable": self.stable.to_dict(), "canary": self.canary.to_dict(),
                             "start_s": self.start_s, "end_s": self.end_s}
        if self.segments:
            d["segments"] = {value: seg.to_dict() for value, seg in self.segments.items()}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        return cls(stable=VersionStats.from_dict(data["stable"]), canary=VersionStats.from_dict(data["canary"]),
                   start_s=float(data["start_s"]), end_s=float(data["end_s"]),
                   segments={str(v): cls.from_dict(seg) for v, seg in (data.get("segments") or {}).items()})


def bin_index(score: float, bins: int = DEFAULT_PREDICTION_BINS) -> int:
    """Return the equal-width bin of a score in [0, 1] (1.0 falls in the last bin)."""
    return min(max(int(score * bins), 0), bins - 1)
