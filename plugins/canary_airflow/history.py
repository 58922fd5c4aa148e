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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from canary.history import RolloutHistory, default_history_url, open_history
from canary.history.model import RolloutEvent, RolloutRecord, StartedBy
from canary.history.started_by import started_by

if TYPE_CHECKING:
    from canary.policy.decisions import GateResult
    from canary.rollout.plan import RolloutPlan
    from canary.spec.model import RolloutSpec, StageSpec

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
    except Exception as err:  # every one: a record never decides anything (see above)
        log.warning("rollout history: could not record %s (%s: %s); the rollout goes on", what,
                    type(err).__name__, err)
        return None


async def arecord(what: str, write: Callable[[RolloutHistory], T], log: Any) -> T | None:
    """:func:`record` in a worker thread, for triggers: the event loop is never blocked by the store."""
    return await asyncio.to_thread(record, what, write, log)


def record_look(*, dag_id: str | None, run_id: str | None, spec: RolloutSpec, stage: StageSpec, stage_index: int,
                look_at_s: float, result: GateResult, log: Any) -> None:
    """Log one look of a stage and record it (the sensor's checks and the trigger's polls, in a thread there).

    Keyed by (run, stage, look time): a retried poll or a second copy of a trigger records it once. Neither
    describing the look (its ETA, its log line) nor recording it may change what the gate decided: both
    only warn. Without a run (a trigger stored before runs were named) the look is logged, not recorded.
    """
    from canary.history.looks import look_line
    from canary.rollout.observe import look_of_poll

    try:
        look = look_of_poll(dag_id=dag_id or "", run_id=run_id or "", spec=spec, stage=stage,
                            stage_index=stage_index, look_at_s=look_at_s, result=result)
        log.info("%s", look_line(look))
    except Exception as err:  # the journal (ETA, log line) never changes what the gate decided
        log.warning("could not describe look %.3f of stage %d (%s: %s); the rollout goes on", look_at_s,
                    stage_index + 1, type(err).__name__, err)
        return
    if dag_id and run_id:
        record(f"look {look_at_s:.3f} of stage {stage_index + 1}", lambda history: history.add_look(look), log)


def run_key(context: Any) -> tuple[str, str]:
    """Return ``(dag_id, run_id)`` of the task's run, the key of everything the history keeps of it."""
    dag = context.get("dag")
    dag_id = getattr(dag, "dag_id", None) or getattr(context.get("ti"), "dag_id", None) or ""
    return str(dag_id), str(context["run_id"])


def record_event(context: Any, kind: str, key: str, data: Mapping[str, Any], log: Any, *,
                 at_s: float | None = None) -> None:
    """Record one event of the task's run (``(kind, key)`` identifies it: re-recording replaces it)."""
    dag_id, run_id = run_key(context)
    event = RolloutEvent(dag_id=dag_id, run_id=run_id, at_s=time.time() if at_s is None else at_s, kind=kind,
                         key=key, data=dict(data))
    record(f"the {kind} event {key}".rstrip(), lambda h: h.add_event(event), log)


def started_by_of(context: Any) -> tuple[StartedBy, str]:
    """Return who started the task's run (:func:`canary.history.started_by.started_by` on its dag_run)."""
    dag_run = context.get("dag_run")
    return started_by(getattr(dag_run, "run_type", None), getattr(dag_run, "conf", None) or {},
                      getattr(dag_run, "triggering_user_name", None))


def record_start(context: Any, plan: RolloutPlan, log: Any) -> None:
    """Record the run's start with its frozen plan (a retried ``validate_request`` replaces it)."""
    dag_id, run_id = run_key(context)
    who, detail = started_by_of(context)
    rollout = RolloutRecord(dag_id=dag_id, run_id=run_id, model=plan.model, endpoint=plan.spec.endpoint,
                            candidate=plan.candidate, stable=plan.stable, started_by=who, started_by_detail=detail,
                            reason=plan.reason, dry_run=plan.dry_run, started_at_s=plan.started_at_s,
                            stages_planned=tuple(s.weight for s in plan.stages),
                            spec=plan.spec.model_dump(mode="json", by_alias=True))
    record("the start of the rollout", lambda h: h.start(rollout), log)


def record_refusal(context: Any, spec: RolloutSpec | None, conf: Mapping[str, Any], reason: str, log: Any) -> None:
    """Record a run refused before any traffic moved: its start and, at once, its end (outcome ``refused``)."""
    from canary.spec.defaults import ROLLOUT_DAG_PREFIX

    dag_id, run_id = run_key(context)
    who, detail = started_by_of(context)
    now_s = time.time()
    rollout = RolloutRecord(
        dag_id=dag_id, run_id=run_id, model=spec.model if spec else dag_id.removeprefix(ROLLOUT_DAG_PREFIX),
        endpoint=spec.endpoint if spec else "", candidate=str(conf.get("version") or ""), stable="",
        started_by=who, started_by_detail=detail, reason=str(conf.get("reason") or ""),
        dry_run=conf.get("dry_run") is True, started_at_s=now_s,
        stages_planned=tuple(s.weight for s in spec.stages) if spec else (),
        spec=spec.model_dump(mode="json", by_alias=True) if spec else {})

    def write(history: RolloutHistory) -> None:
        history.start(rollout)
        history.finish(dag_id, run_id, outcome=REFUSED, reason=reason, finished_at_s=now_s, stages_reached=0)

    record("the refusal of the rollout", write, log)


#: The outcome recorded for a run refused by ``validate_request`` (no traffic moved).
REFUSED = "refused"


__all__ = ["REFUSED", "arecord", "record", "record_event", "record_refusal", "record_start", "rollout_history",
           "run_key", "started_by_of"]
