"""The ``canary_watchdog`` DAG: find rollouts whose current stage makes no progress, and tell people.

Graph: one task, ``find_stalled_rollouts``, every ``$CANARY_WATCHDOG_CRON`` (default every 5 minutes).

It reads the rollout history (the same store the rollout tasks and the UI use): for every rollout still
running, the stage being observed must show a look at least every ``missed_polls`` poll intervals of its
frozen spec, and must decide within its ``max_duration`` (plus as many intervals). A stage that does not
(:func:`canary.notify.stuck.find_stall`) gets a ``stuck`` notice through the spec's ``notify`` entries,
once per run, stage and kind. Being an ordinary task, it also catches what the rollout DAG's own Deadline
Alert cannot see: the Deadline Alert's callback runs in the triggerer, and a dead triggerer is the most
likely reason for looks to stop.

A history row still "running" whose DAG run has ended (marked failed or success in the UI, which runs
no callback and may skip ``finalize``) is closed as ``failed`` with a reason that says to check where the
endpoint's traffic is. The watchdog never touches traffic.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, BaseOperator, Param

from canary.spec import defaults
from canary_airflow.factory import START_DATE

WATCHDOG_DAG_ID = "canary_watchdog"
FIND_TASK_ID = "find_stalled_rollouts"
#: Most running rollouts one check reads.
MAX_RUNNING = 500
#: DAG run states of a run that is still going.
LIVE_RUN_STATES = frozenset({"queued", "running"})
#: The outcome a history row gets when its DAG run ended without ``finalize`` recording one.
ABANDONED_OUTCOME = "failed"


def watchdog_cron() -> str:
    """Return ``$CANARY_WATCHDOG_CRON`` or the default (every 5 minutes)."""
    return os.environ.get("CANARY_WATCHDOG_CRON") or defaults.WATCHDOG_CRON


class FindStalledRolloutsOperator(BaseOperator):
    """Check every running rollout's current stage for progress; notify and return the stalls found.

    :param missed_polls: poll intervals without a look that make a stall (conf ``missed_polls`` overrides).
    """

    ui_color = "#fff1f0"

    def __init__(self, *, missed_polls: int = defaults.WATCHDOG_MISSED_POLLS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.missed_polls = missed_polls

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from pydantic import ValidationError

        from canary.notify.stuck import find_stall
        from canary.spec.model import RolloutSpec
        from canary_airflow import notify
        from canary_airflow.history import rollout_history

        conf = {**(context.get("params") or {}), **(getattr(context.get("dag_run"), "conf", None) or {})}
        missed_polls = int(conf.get("missed_polls") or self.missed_polls)
        history = rollout_history()
        running = history.rollouts(outcome="running", limit=MAX_RUNNING)  # a store that is down fails the check
        now_s = time.time()
        stalls: list[dict[str, Any]] = []
        for record in running:
            name = f"{record.dag_id} {record.run_id}"
            state = self._dag_run_state(context, record.dag_id, record.run_id)
            if state is not None and state not in LIVE_RUN_STATES:
                self._close_abandoned(history, record, state, now_s)
                continue
            try:
                spec = RolloutSpec.model_validate(record.spec)
            except ValidationError as err:
                self.log.warning("%s: its frozen spec does not load (%s); not checked",
                                 name, str(err).splitlines()[0])
                continue
            events = [(e.kind, int(e.data.get("stage", -1)), e.at_s)
                      for e in history.events(record.dag_id, record.run_id) if e.kind in ("traffic", "gate")]
            looks = [(lk.stage_index, lk.look_at_s) for lk in history.looks(record.dag_id, record.run_id)]
            stall = find_stall(spec, events, looks, now_s=now_s, missed_polls=missed_polls)
            if stall is None:
                continue
            self.log.warning("%s: %s", name, stall.explain())
            sent = notify.rollout_stalled(context, record, spec, stall, log=self.log)
            stalls.append({"dag_id": record.dag_id, "run_id": record.run_id, "model": record.model,
                           "stage": stall.stage_index + 1, "kind": stall.kind.value,
                           "silent_s": round(stall.silent_s, 3), "reason": stall.explain(), "notified": sent})
        self.log.info("checked %d running rollout(s): %d stalled", len(running), len(stalls))
        return stalls

    def _dag_run_state(self, context: Any, dag_id: str, run_id: str) -> str | None:
        """Return the Airflow state of a DAG run (None when it cannot be asked: then it counts as live)."""
        try:
            return str(context["ti"].get_dagrun_state(dag_id=dag_id, run_id=run_id))
        except Exception as err:
            self.log.info("the state of %s %s is unknown (%s: %s): checked as running", dag_id, run_id,
                          type(err).__name__, err)
            return None

    def _close_abandoned(self, history: Any, record: Any, state: str, now_s: float) -> None:
        reason = (f"the DAG run ended ({state}) without finalize recording an outcome, e.g. marked {state} in the "
                  f"UI: check that the endpoint's traffic is back on {record.stable or 'the stable version'}")
        self.log.warning("%s %s: %s; closing its history row", record.dag_id, record.run_id, reason)
        history.finish(record.dag_id, record.run_id, outcome=ABANDONED_OUTCOME, reason=reason, finished_at_s=now_s,
                       stages_reached=record.stages_reached)


def build_watchdog_dag(*, schedule: str | None = None) -> DAG:
    """Build the ``canary_watchdog`` DAG."""
    with DAG(
        dag_id=WATCHDOG_DAG_ID,
        description="Tell people about rollouts whose current stage makes no progress",
        schedule=schedule or watchdog_cron(),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        params={"missed_polls": Param(defaults.WATCHDOG_MISSED_POLLS, type="integer", minimum=1,
                                      title="Missed polls",
                                      description="Poll intervals without a look that make a stage stalled.")},
        doc_md=__doc__,
        tags=["canary", "watchdog"],
        default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30)},
    ) as dag:
        FindStalledRolloutsOperator(task_id=FIND_TASK_ID, execution_timeout=timedelta(minutes=4))
    return dag


__all__ = ["WATCHDOG_DAG_ID", "FindStalledRolloutsOperator", "build_watchdog_dag", "watchdog_cron"]
