"""Fakes at the backend interfaces (never deeper), registered under the backend name ``fake``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from canary.backends import KNOWN_BACKENDS
from canary.backends.base import ConnInfo, ShadowSummary
from canary.errors import NoDataError, UnknownVersionError
from canary.metrics import VersionStats, cumulative_from_latencies

StatsFn = Callable[[str, float, float], VersionStats]


class FakeMetrics:
    """Metrics source whose per-version stats come from a function of (version, start_s, end_s)."""

    stats_fn: StatsFn | None = None
    calls: list[tuple[str, float, float]] = []

    def __init__(self, conn: ConnInfo, **options: Any) -> None:
        self.conn, self.options = conn, options

    def version_stats(self, version: str, *, start_s: float, end_s: float) -> VersionStats:
        FakeMetrics.calls.append((version, start_s, end_s))
        if FakeMetrics.stats_fn is None:
            raise NoDataError("fake", f"no series for {version}")
        return FakeMetrics.stats_fn(version, start_s, end_s)

    def shadow_summary(self, *, stable: str, candidate: str, start_s: float, end_s: float) -> ShadowSummary:
        return ShadowSummary(pairs=0, stable_errors=0, candidate_errors=0, prediction_agreement=None,
                             mean_abs_score_diff=None, stable_latency_p95_ms=None, candidate_latency_p95_ms=None)


class FakeRegistry:
    versions: dict[str, list[str]] = {}
    aliases: dict[str, dict[str, str]] = {}

    def __init__(self, conn: ConnInfo, **options: Any) -> None:
        pass

    def resolve(self, model: str, ref: str) -> str:
        if ref in self.aliases.get(model, {}):
            return self.aliases[model][ref]
        if ref in self.versions.get(model, []):
            return ref
        raise UnknownVersionError(model, ref, self.versions.get(model, []))

    def champion(self, model: str) -> str | None:
        return self.aliases.get(model, {}).get("champion")

    def list_versions(self, model: str) -> list[str]:
        return list(self.versions.get(model, []))

    def promote(self, model: str, version: str, *, run_id: str, summary: Mapping[str, Any]) -> None:
        self.aliases.setdefault(model, {})["champion"] = version

    def record_rollback(self, model: str, version: str, *, run_id: str, reason: str,
                        summary: Mapping[str, Any]) -> None:
        pass


def constant_rate_stats(rates: Mapping[str, tuple[float, float]]) -> StatsFn:
    """Stats growing linearly in window length: ``rates[version] = (requests_per_s, error_rate)``."""

    def fn(version: str, start_s: float, end_s: float) -> VersionStats:
        rps, err = rates[version]
        n = int(rps * max(0.0, end_s - start_s))
        return VersionStats(version=version, requests=n, errors=int(n * err),
                            latency_cumulative=cumulative_from_latencies([20.0] * n))

    return fn


def install() -> None:
    KNOWN_BACKENDS["metrics"]["fake"] = "fakes:FakeMetrics"
    KNOWN_BACKENDS["registry"]["fake"] = "fakes:FakeRegistry"
