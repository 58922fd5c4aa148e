"""The rollout pages of the Airflow UI, served by the API server under ``/canary`` (router of the plugin app).

- ``GET /canary/rollouts/{dag_id}/{run_id}``: a run's "Rollout" tab (live while it runs, the report after);
- ``GET /canary/rollouts``: the "Rollouts" page, history newest first, filterable by model and outcome;
- ``GET /canary/api/rollouts`` and ``GET /canary/api/rollouts/{dag_id}/{run_id}``: the same as JSON.

Airflow does not authenticate plugin apps: every route here checks the caller with Airflow's own auth
(the browser's ``_token`` cookie, or a Bearer token). A run's data needs read access to that DAG's runs
(``requires_access_dag("GET", DagAccessEntity.RUN)``); the lists show only the DAGs the auth manager lets
the user read. Pages come from the pure core (:mod:`canary.report`); this module only reads the history
store and the auth manager.
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import APIRouter, Depends, HTTPException, Query  # imported only by the API server's plugin app
from fastapi.responses import HTMLResponse

from canary.errors import BackendError
from canary.history import RolloutHistory, RolloutRecord, open_history
from canary.history.store import models_of
from canary.report.pages import OUTCOME_FILTERS, notice_page, rollouts_page
from canary.spec.defaults import ROLLOUT_DAG_PREFIX, RUN_TAB_ROUTE, rollout_tab_path

#: The Rollouts page's ``url_route`` (``/plugin/rollouts``).
NAV_ROUTE = "rollouts"
#: Most runs a list shows.
LIST_LIMIT = 200
#: Seconds between reloads of the page of a rollout run not recorded yet.
NOT_RECORDED_REFRESH_S = 5

#: Read access to the runs of the DAG named by the path's ``dag_id`` (403 otherwise; 401 without a token).
can_read_runs = requires_access_dag("GET", DagAccessEntity.RUN)


def readable_dag_ids(user: GetUserDep) -> set[str]:
    """Return the DAG ids the caller may read, per Airflow's auth manager."""
    from airflow.api_fastapi.app import get_auth_manager

    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def history_store() -> RolloutHistory:
    """Return the history store (``$CANARY_HISTORY_URL``, else ``$AIRFLOW_HOME/canary_history.db``)."""
    return open_history()


HistoryDep = Annotated[RolloutHistory, Depends(history_store)]
ReadableDep = Annotated[set[str], Depends(readable_dag_ids)]
_NO_STORE = {"Cache-Control": "no-store"}


def _store_error(err: BackendError) -> HTTPException:
    return HTTPException(503, f"the rollout history store cannot be read: {err}")


def _outcome_filter(outcome: str | None) -> str | None:
    if outcome and outcome not in OUTCOME_FILTERS:
        raise HTTPException(400, f"outcome {outcome!r} is not one of {', '.join(OUTCOME_FILTERS)} (or empty: all)")
    return outcome or None


def _readable_records(history: RolloutHistory, readable: set[str], *, model: str | None,
                      outcome: str | None, limit: int) -> list[RolloutRecord]:
    try:
        # Over-fetch: runs of DAGs the user may not read are dropped after the query.
        found = history.rollouts(model=model, outcome=outcome, limit=max(limit, LIST_LIMIT) * 5)
    except BackendError as err:
        raise _store_error(err) from err
    return [r for r in found if r.dag_id in readable][:limit]


def _report_of(history: RolloutHistory, record: RolloutRecord) -> dict[str, Any] | None:
    if record.running:
        return None
    stored = history.report(record.dag_id, record.run_id, "json")
    try:
        return json.loads(stored) if stored else None
    except ValueError:
        return None  # a damaged stored report: the page renders from the journal alone


def json_safe(value: Any) -> Any:
    """Return ``value`` with NaN and infinities as strings (``"inf"``): JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def create_router() -> APIRouter:
    """Return the router of the rollout pages and their JSON (included by the plugin's app factory)."""
    router = APIRouter()

    @router.get("/rollouts", response_class=HTMLResponse)
    def rollouts_list(history: HistoryDep, readable: ReadableDep, model: str | None = None,
                      outcome: str | None = None) -> HTMLResponse:
        chosen = _outcome_filter(outcome)
        records = _readable_records(history, readable, model=model or None, outcome=chosen, limit=LIST_LIMIT)
        try:
            every = [r for r in history.rollouts(limit=LIST_LIMIT * 5) if r.dag_id in readable]
        except BackendError as err:
            raise _store_error(err) from err
        page = rollouts_page(records, models=models_of(every), model=model or None, outcome=chosen,
                             run_href=lambda r: f"../{rollout_tab_path(r.dag_id, r.run_id)}", now_s=time.time())
        return HTMLResponse(page, headers=_NO_STORE)

    @router.get("/rollouts/{dag_id}/{run_id:path}", response_class=HTMLResponse,
                dependencies=[Depends(can_read_runs)])
    def rollout_tab(dag_id: str, run_id: str, history: HistoryDep) -> HTMLResponse:
        from canary.report.html import render_html

        try:
            record = history.rollout(dag_id, run_id)
            if record is None:
                if not dag_id.startswith(ROLLOUT_DAG_PREFIX):
                    return HTMLResponse(notice_page(
                        "Not a canary rollout",
                        f"This run is not a canary rollout: DAG {dag_id} is not a rollout DAG "
                        f"({ROLLOUT_DAG_PREFIX}<model>), so it has no rollout report."), headers=_NO_STORE)
                return HTMLResponse(notice_page(
                    "Rollout not recorded yet",
                    f"Run {run_id} of {dag_id} is not in the rollout history yet: it is recorded when its "
                    f"first task has validated the request (a run refused before that never is). This page "
                    f"reloads every {NOT_RECORDED_REFRESH_S}s.", refresh_s=NOT_RECORDED_REFRESH_S), headers=_NO_STORE)
            looks = history.looks(dag_id, run_id)
            events = history.events(dag_id, run_id)
            report = _report_of(history, record)
        except BackendError as err:
            raise _store_error(err) from err
        page = render_html(record, looks, events, report=report, live=record.running, now_s=time.time())
        return HTMLResponse(page, headers=_NO_STORE)

    @router.get("/api/rollouts")
    def rollouts_json(history: HistoryDep, readable: ReadableDep, model: str | None = None,
                      outcome: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=LIST_LIMIT)] = 100) -> dict[str, Any]:
        records = _readable_records(history, readable, model=model or None, outcome=_outcome_filter(outcome),
                                    limit=limit)
        return json_safe({"rollouts": [r.to_dict() for r in records], "total_entries": len(records)})

    @router.get("/api/rollouts/{dag_id}/{run_id:path}", dependencies=[Depends(can_read_runs)])
    def rollout_json(dag_id: str, run_id: str, history: HistoryDep) -> dict[str, Any]:
        try:
            record = history.rollout(dag_id, run_id)
            if record is None:
                raise HTTPException(404, f"no rollout {dag_id}/{run_id} in the history store")
            return json_safe({"rollout": record.to_dict(),
                              "looks": [lk.to_dict() for lk in history.looks(dag_id, run_id)],
                              "events": [ev.to_dict() for ev in history.events(dag_id, run_id)]})
        except BackendError as err:
            raise _store_error(err) from err

    return router


__all__ = ["NAV_ROUTE", "RUN_TAB_ROUTE", "can_read_runs", "create_router", "history_store", "readable_dag_ids",
           "rollout_tab_path"]
