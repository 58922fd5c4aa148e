"""Fakes at the backend interfaces (never deeper), registered under the backend name ``fake``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from canary.backends import KNOWN_BACKENDS
from canary.backends.base import ConnInfo, PendingChange, ShadowSummary
from canary.backends.options import BACKEND_OPTIONS, NoOptions
from canary.errors import BackendError, ChangeFailedError, NoDataError, UnknownVersionError
from canary.policy.evidence import DEFAULT_LATENCY_BUCKETS_MS, VersionStats

StatsFn = Callable[[str, float, float], VersionStats]


def cumulative_from_latencies(latencies_ms: list[float],
                              buckets_ms: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS_MS) -> tuple[int, ...]:
    """Build Prometheus-style cumulative bucket counts from raw latencies."""
    return tuple(sum(1 for x in latencies_ms if x <= b) for b in buckets_ms)


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


class FakeRouter:
    """Traffic router that applies every change at once (like the embedded serving layer); records calls."""

    weights: dict[str, int] = {}
    calls: list[tuple[Any, ...]] = []

    def __init__(self, conn: ConnInfo, **options: Any) -> None:
        self.options = options

    @classmethod
    def reset(cls, weights: Mapping[str, int]) -> None:
        cls.weights = dict(weights)
        cls.calls = []
        FakeSettlingRouter.states = []

    def deploy(self, version: str) -> None:
        self.calls.append(("deploy", version))
        FakeRouter.weights.setdefault(version, 0)

    def set_weights(self, weights: Mapping[str, int]) -> None:
        self.calls.append(("set_weights", dict(weights)))
        FakeRouter.weights = {v: weights.get(v, 0) for v in {*FakeRouter.weights, *weights}}

    def get_weights(self) -> dict[str, int]:
        return dict(FakeRouter.weights)

    def remove(self, version: str) -> None:
        self.calls.append(("remove", version))
        FakeRouter.weights.pop(version, None)

    def set_mirror(self, version: str | None, percent: int = 100) -> None:
        self.calls.append(("set_mirror", version, percent))


class FakeSettlingRouter(FakeRouter):
    """A router whose changes take effect asynchronously: ``states`` scripts what each check sees.

    ``"InService"`` (also when the script is exhausted) is settled, ``"Failed"`` raises
    :class:`ChangeFailedError`, ``"Unreachable"`` a transient :class:`BackendError`, ``"Bug"`` an exception
    no backend should raise (a defect in it); anything else is pending.
    """

    states: list[str] = []

    def without_waiting(self) -> FakeSettlingRouter:
        self.calls.append(("without_waiting",))
        return self

    def pending_change(self, previous: PendingChange | None = None) -> PendingChange | None:
        self.calls.append(("pending_change", dict(previous.token) if previous else None))
        state = FakeSettlingRouter.states.pop(0) if FakeSettlingRouter.states else "InService"
        if state == "InService":
            return None
        if state == "Failed":
            raise ChangeFailedError("fake", "endpoint 'e' is Failed: not enough ml.m5.large capacity")
        if state == "Unreachable":
            raise BackendError("fake", "DescribeEndpoint on endpoint 'e' failed: ThrottlingException")
        if state == "Bug":
            raise KeyError("EndpointStatus")
        return PendingChange(backend="fake", resource="endpoint 'e'", state=state,
                             token={"expected_config": "e-cfg2"}, poll_interval_s=5.0, timeout_s=60.0)


def constant_rate_stats(rates: Mapping[str, tuple[float, float]]) -> StatsFn:
    """Stats growing linearly in window length: ``rates[version] = (requests_per_s, error_rate)``."""

    def fn(version: str, start_s: float, end_s: float) -> VersionStats:
        rps, err = rates[version]
        n = int(rps * max(0.0, end_s - start_s))
        return VersionStats(version=version, requests=n, errors=int(n * err),
                            latency_cumulative=cumulative_from_latencies([20.0] * n))

    return fn


#: (role, backend name, factory, options model) of the fakes; registered only for the tests that use them.
#: The fakes take no spec options (the Airflow layer still passes ``endpoint`` to serving and metrics).
FAKE_BACKENDS = (("metrics", "fake", "fakes:FakeMetrics", NoOptions),
                 ("registry", "fake", "fakes:FakeRegistry", NoOptions),
                 ("serving", "fake", "fakes:FakeRouter", NoOptions),
                 ("serving", "fake-settling", "fakes:FakeSettlingRouter", NoOptions))


def install(monkeypatch: Any) -> None:
    """Register the fakes for one test (``monkeypatch`` removes them again, so no other test sees them)."""
    for role, name, factory, options in FAKE_BACKENDS:
        monkeypatch.setitem(KNOWN_BACKENDS[role], name, factory)
        monkeypatch.setitem(BACKEND_OPTIONS[role], name, options)


#: The connections the task tests' specs name (a fake backend needs its connection to exist, nothing more).
FAKE_CONNECTIONS = {"fake_serving": "canary_serving", "fake_metrics": "canary_metrics",
                    "fake_registry": "canary_registry"}


def install_stack(monkeypatch: Any, *, connections: Mapping[str, str] = FAKE_CONNECTIONS,
                  versions: Sequence[str] = ("v1", "v2"), route: bool = True) -> None:
    """Register the fakes with a connection per ``connections`` (conn_id: conn_type) and model ``m``.

    ``m`` has ``versions`` in the registry, the first one its champion; with ``route`` all the fake
    router's traffic is on that champion.
    """
    install(monkeypatch)
    for conn_id, conn_type in connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": conn_type, "host": "x"}))
    FakeRegistry.versions = {"m": list(versions)}
    FakeRegistry.aliases = {"m": {"champion": versions[0]}}
    if route:
        FakeRouter.reset({versions[0]: 100})


@contextmanager
def installed() -> Iterator[None]:
    """Register the fakes for a ``with`` block (e.g. to parse a module-level spec that names them)."""
    added = [(role, name) for role, name, _, _ in FAKE_BACKENDS if name not in KNOWN_BACKENDS[role]]
    for role, name, factory, options in FAKE_BACKENDS:
        KNOWN_BACKENDS[role][name] = factory
        BACKEND_OPTIONS[role][name] = options
    try:
        yield
    finally:
        for role, name in added:
            KNOWN_BACKENDS[role].pop(name, None)
            BACKEND_OPTIONS[role].pop(name, None)
