"""The rollout history store: where every rollout, look, event and report is kept.

One store per Airflow installation (not per spec): the triggerer writes looks, the workers write
the rollout rows, events and reports, and the API server reads them for the UI, so in a distributed
deployment all of them must reach the same database. The store is named by a SQLAlchemy URL:
``$CANARY_HISTORY_URL``, else a SQLite file ``$AIRFLOW_HOME/canary_history.db`` (no set-up for the demo,
``airflow dags test`` or ``airflow standalone``). Use PostgreSQL (``postgresql+psycopg2://...``) when the
components run on different hosts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from canary.history.model import Look, RolloutEvent, RolloutRecord

#: File name of the default (SQLite) history store.
LOCAL_HISTORY_FILE = "canary_history.db"
#: Report kinds the store keeps per run.
REPORT_KINDS = ("json", "md", "html")


def default_history_url() -> str:
    """Return ``$CANARY_HISTORY_URL``, else SQLite at ``$AIRFLOW_HOME/canary_history.db`` (``~/airflow`` without it)."""
    explicit = os.environ.get("CANARY_HISTORY_URL")
    if explicit:
        return explicit
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return f"sqlite:///{Path(home) / LOCAL_HISTORY_FILE}"


@runtime_checkable
class RolloutHistory(Protocol):
    """Rollouts, their looks, events and reports. Every write is idempotent (safe to retry or repeat)."""

    def start(self, record: RolloutRecord) -> None:
        """Record a run's start; a run recorded again (a retried or cleared task) is replaced."""

    def finish(self, dag_id: str, run_id: str, *, outcome: str, reason: str, finished_at_s: float,
               stages_reached: int, report_location: str | None = None) -> None:
        """Record how a run ended. :raises KeyError: for a run that was never started."""

    def add_look(self, look: Look) -> bool:
        """Record one look; return False if it was recorded already (same run, stage and look time)."""

    def add_event(self, event: RolloutEvent) -> None:
        """Record an event; one with the same ``(dag_id, run_id, kind, key)`` replaces it."""

    def put_report(self, dag_id: str, run_id: str, kind: str, content: str) -> None:
        """Store a rendered report (``kind`` in :data:`REPORT_KINDS`), replacing an earlier one."""

    def rollout(self, dag_id: str, run_id: str) -> RolloutRecord | None:
        """Return one run's record, or None."""

    def find_run(self, run_id: str) -> list[RolloutRecord]:
        """Return the records with this run id (run ids are unique per DAG, not across DAGs)."""

    def rollouts(self, *, model: str | None = None, outcome: str | None = None,
                 limit: int = 100) -> list[RolloutRecord]:
        """Return runs newest first, optionally of one model / with one outcome (``"running"``: unfinished)."""

    def looks(self, dag_id: str, run_id: str) -> list[Look]:
        """Return a run's looks in time order."""

    def events(self, dag_id: str, run_id: str) -> list[RolloutEvent]:
        """Return a run's events in time order."""

    def report(self, dag_id: str, run_id: str, kind: str) -> str | None:
        """Return a stored report, or None."""


def open_history(url: str | None = None) -> RolloutHistory:
    """Open the history store at ``url`` (default :func:`default_history_url`); creates its tables."""
    from canary.history.sql import SqlRolloutHistory

    return SqlRolloutHistory(url or default_history_url())


def models_of(records: Sequence[RolloutRecord]) -> list[str]:
    """Return the distinct models of ``records``, sorted (for filters)."""
    return sorted({r.model for r in records})


__all__ = ["LOCAL_HISTORY_FILE", "REPORT_KINDS", "RolloutHistory", "default_history_url", "models_of",
           "open_history"]
