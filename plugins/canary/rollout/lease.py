"""One rollout per endpoint: leases on an endpoint, held by one rollout run at a time.

Two runs that would move the same endpoint's traffic must never overlap, whether they come from
one DAG or from two models sharing an endpoint. Before any traffic moves a run takes the lease on
``<serving backend>/<endpoint>``; every later step renews it, and the final step releases it once
traffic is back on stable (or the candidate is promoted). A lease expires after its TTL, so a
crashed scheduler cannot wedge an endpoint forever; ``canary lock release`` breaks one sooner.

The store interface (:class:`~canary.backends.base.EndpointLock`) and its values live in
:mod:`canary.backends.base`, the stores beside it (``local``: SQLite, ``postgres``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from canary.backends.base import EndpointLock, Lease, LeaseHolder

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


__all__ = ["blocking_lease", "default_lock_path", "endpoint_lease_key", "lock_store_conflicts"]
