"""One rollout per endpoint: leases on an endpoint, held by one rollout run at a time.

Two runs that would move the same endpoint's traffic must never overlap, whether they come from
one DAG or from two models sharing an endpoint. Before any traffic moves a run takes the lease on
``<serving backend>/<endpoint>``; every later step renews it, and the final step releases it once
traffic is back on stable (or the candidate is promoted). A lease expires after its TTL, so a
crashed scheduler cannot wedge an endpoint forever; ``canary lock release`` breaks one sooner.

The stores (:class:`EndpointLock`) live in :mod:`canary.backends` (``local``: SQLite, ``postgres``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from canary.errors import CanaryError

#: File name of the local (SQLite) lease store when no connection gives a path.
LOCAL_LOCK_FILE = "canary_locks.db"


def endpoint_lease_key(serving_backend: str, endpoint: str) -> str:
    """Return the lease key of an endpoint: two specs collide exactly when both parts are equal.

    The serving connection is deliberately not part of the key: two connections to the same
    serving layer must still collide (a false collision only makes a rollout wait).
    """
    return f"{serving_backend}/{endpoint}"


def default_lock_path() -> Path:
    """Return the local lease store used without a connection path.

    ``$CANARY_LOCK_PATH``, else ``$AIRFLOW_HOME/canary_locks.db`` (``~/airflow`` without it): every
    Airflow component of one installation (workers, triggerer, ``airflow dags test``) shares it.
    """
    if os.environ.get("CANARY_LOCK_PATH"):
        return Path(os.environ["CANARY_LOCK_PATH"])
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / LOCAL_LOCK_FILE


def _utc(ts_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_s))


@dataclass(frozen=True, kw_only=True)
class LeaseHolder:
    """The rollout run holding (or asking for) a lease."""

    dag_id: str
    run_id: str

    def __str__(self) -> str:
        return f"{self.dag_id} run {self.run_id}"


@dataclass(frozen=True, kw_only=True)
class Lease:
    """A lease on one endpoint: who holds it, since when, until when unless renewed (epoch seconds)."""

    key: str
    holder: LeaseHolder
    acquired_at_s: float
    renewed_at_s: float
    expires_at_s: float

    def expired(self, now_s: float) -> bool:
        return now_s >= self.expires_at_s

    def describe(self) -> str:
        """Return e.g. ``canary_rollout__m run manual__1 (since 2026-12-01T18:50:00Z, expires ...)``."""
        return f"{self.holder} (since {_utc(self.acquired_at_s)}, lease expires {_utc(self.expires_at_s)} " \
               "unless renewed)"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "dag_id": self.holder.dag_id, "run_id": self.holder.run_id,
                "acquired_at_s": self.acquired_at_s, "renewed_at_s": self.renewed_at_s,
                "expires_at_s": self.expires_at_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        return cls(key=str(data["key"]), holder=LeaseHolder(dag_id=str(data["dag_id"]), run_id=str(data["run_id"])),
                   acquired_at_s=float(data["acquired_at_s"]), renewed_at_s=float(data["renewed_at_s"]),
                   expires_at_s=float(data["expires_at_s"]))


class EndpointBusyError(CanaryError):
    """Another rollout holds the endpoint's lease; ``lease`` says who and since when."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        super().__init__(f"endpoint {lease.key} is busy: held by {lease.describe()}")


class LeaseLostError(CanaryError):
    """A run renewing its lease no longer holds it: another rollout took it after it expired or was broken."""

    def __init__(self, key: str, holder: LeaseHolder, current: Lease | None) -> None:
        self.key = key
        self.holder = holder
        self.current = current
        now = f"now held by {current.describe()}" if current else "now free"
        super().__init__(f"{holder} lost the lease on endpoint {key} ({now})")


@runtime_checkable
class EndpointLock(Protocol):
    """A lease store. Every call is atomic; ``acquire`` and ``renew`` are re-entrant for the holder."""

    def acquire(self, key: str, holder: LeaseHolder, *, ttl_s: float) -> Lease:
        """Take the lease (or renew it if ``holder`` has it); a free or expired lease is taken.

        :raises EndpointBusyError: another holder has an unexpired lease.
        """

    def renew(self, key: str, holder: LeaseHolder, *, ttl_s: float) -> Lease:
        """Extend ``holder``'s lease to ``now + ttl_s``; re-takes it if it expired and nobody took it.

        :raises LeaseLostError: another holder has the lease now.
        """

    def release(self, key: str, holder: LeaseHolder) -> bool:
        """Drop the lease if ``holder`` has it; return whether it did (idempotent, never raises for others)."""

    def get(self, key: str) -> Lease | None:
        """Return the stored lease of ``key`` (possibly expired), or None."""

    def list_leases(self) -> list[Lease]:
        """Return every stored lease (expired ones too), sorted by key."""

    def break_lease(self, key: str) -> Lease | None:
        """Drop the lease of ``key`` whoever holds it (an operator's override); return what was dropped."""


def blocking_lease(lock: EndpointLock, key: str, holder: LeaseHolder, now_s: float) -> Lease | None:
    """Return the lease that keeps ``holder`` off the endpoint at ``now_s``, or None if it may take it."""
    lease = lock.get(key)
    if lease is None or lease.expired(now_s) or lease.holder == holder:
        return None
    return lease


def lock_store_conflicts(specs: Iterable[tuple[str, Any]]) -> list[tuple[str, str, str]]:
    """Return ``(source, field, message)`` for specs sharing an endpoint but not the lock store.

    Leases only exclude each other within one store: two specs on one endpoint that name different
    stores (backend, connection or options) could roll out at the same time, so both are refused.

    :param specs: ``(source, RolloutSpec)`` pairs, e.g. every valid spec of a directory.
    """
    groups: dict[str, list[tuple[str, Any, str]]] = {}
    for source, spec in specs:
        lock = spec.backends.lock
        store = f"{lock.name} (connection {spec.backends.conn_id('lock')}" + \
            (f", options {json.dumps(lock.options, sort_keys=True)})" if lock.options else ")")
        key = endpoint_lease_key(spec.backends.serving.name, spec.endpoint)
        groups.setdefault(key, []).append((source, spec, store))
    problems = []
    for key, members in groups.items():
        if len({store for _source, _spec, store in members}) < 2:
            continue
        for source, _spec, store in members:
            others = "; ".join(f"{other.model}: {other_store}" for _s, other, other_store in members
                               if other_store != store)
            problems.append((source, "backends.lock",
                             f"endpoint {key} is shared with specs whose lock store differs ({others}; this one: "
                             f"{store}): name the same lock store in every spec of the endpoint, or their "
                             "rollouts do not exclude each other"))
    return problems


__all__ = ["EndpointBusyError", "EndpointLock", "Lease", "LeaseHolder", "LeaseLostError", "blocking_lease",
           "default_lock_path", "endpoint_lease_key", "lock_store_conflicts"]
