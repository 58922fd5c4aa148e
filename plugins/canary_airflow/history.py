"""The rollout history from the Airflow layer: which store, and writes that never decide anything.

The store is :func:`canary.history.open_history` at ``$CANARY_HISTORY_URL`` (any SQLAlchemy URL, e.g.
``postgresql+psycopg2://user@host/db``), else a SQLite file ``$AIRFLOW_HOME/canary_history.db``. Every
component that writes or reads it (the workers: validate, set_traffic, gate, finalize; the triggerer:
the observe trigger's looks; the API server: the UI) must see the same URL, so with a distributed
executor set ``CANARY_HISTORY_URL`` to a shared database for all of them.

The history is a record, not a control path: :func:`record` turns every failure of a write into a
warning in the task (or trigger) log, so a history store that is down, full or misconfigured never
changes a rollout's decision, its traffic or its outcome.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from canary.history import RolloutHistory, default_history_url, open_history
from canary.history.model import RolloutEvent

T = TypeVar("T")


@functools.lru_cache(maxsize=8)
def _history_at(url: str) -> RolloutHistory:
    return open_history(url)


def rollout_history() -> RolloutHistory:
    """Return the installation's history store (``$CANARY_HISTORY_URL``, else SQLite under ``$AIRFLOW_HOME``)."""
    return _history_at(default_history_url())


def record(what: str, write: Callable[[RolloutHistory], T], log: Any) -> T | None:
    """Run one history write; on any failure log a warning and return None.

    Deliberately catches every exception: the history must never change a rollout's decision or
    outcome, so nothing it raises may reach the task's control flow.

    :param what: what is recorded, for the warning (e.g. ``"the start of the rollout"``).
    :param write: the write, given the store.
    :param log: a logger (the task's or trigger's ``self.log``).
    """
    try:
        return write(rollout_history())
    except Exception as err:  # noqa: BLE001 - see the docstring: a record never decides anything
        log.warning("rollout history: could not record %s (%s: %s); the rollout goes on", what,
                    type(err).__name__, err)
        return None


async def arecord(what: str, write: Callable[[RolloutHistory], T], log: Any) -> T | None:
    """:func:`record` in a worker thread, for triggers: the event loop is never blocked by the store."""
    return await asyncio.to_thread(record, what, write, log)


def record_event(context: Any, kind: str, key: str, data: dict[str, Any], log: Any) -> None:
    """Record one event of the task's run (``(kind, key)`` identifies it: re-recording replaces it)."""
    ti = context["ti"]
    event = RolloutEvent(dag_id=ti.dag_id, run_id=context["run_id"], at_s=time.time(), kind=kind, key=key,
                         data=data)
    record(f"the {kind} event {key or ''}".rstrip(), lambda h: h.add_event(event), log)


__all__ = ["arecord", "record", "record_event", "rollout_history"]
