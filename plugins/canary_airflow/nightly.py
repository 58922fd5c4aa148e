"""The ``nightly_rollouts`` DAG: start one rollout per model with a new candidate, report the rest.

Graph::

    select_candidates >> start_rollout (one mapped TriggerDagRunOperator per model to start) >> report

Only specs with ``schedule.nightly: true`` (at ``$CANARY_NIGHTLY_CRON``, default ``0 2 * * *``) or
``schedule.nightly_cron`` (at that time) take part. The DAG runs at every one of those times (one
timetable of all of them, UTC); a scheduled run checks the models whose time it is, a manual run every
opted-in model. Conf ``{"force": true}`` re-rolls versions that were already rolled out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, BaseOperator, Param, TriggerRule
from airflow.sdk.exceptions import AirflowFailException

from canary.errors import CanaryError, SpecError
from canary.history.model import StartedBy
from canary.history.started_by import STARTED_BY_DETAIL_KEY, STARTED_BY_KEY
from canary.spec import defaults
from canary.spec.model import load_spec, spec_files
from canary_airflow.factory import START_DATE, specs_dir
from canary_airflow.operators import failed_task_ids, registry_hook

NIGHTLY_DAG_ID = "nightly_rollouts"
DEFAULT_NIGHTLY_CRON = defaults.NIGHTLY_CRON
SELECT_TASK_ID = "select_candidates"
ACTIVE_STATES = ["queued", "running"]


def nightly_cron() -> str:
    """Return ``$CANARY_NIGHTLY_CRON`` or the default (02:00 every day)."""
    return os.environ.get("CANARY_NIGHTLY_CRON") or DEFAULT_NIGHTLY_CRON


class SelectNightlyRolloutsOperator(BaseOperator):
    """Decide, per opted-in spec, whether to start a rollout tonight; return the triggers to map over.

    Pushes every decision (started, skipped, errors, with reasons) as XCom ``choices``.

    :param specs_path: directory of rollout specs.
    :param default_cron: the time of specs with ``schedule.nightly: true`` (the DAG's default cron).
    """

    template_fields: Sequence[str] = ("specs_path",)
    ui_color = "#e8f1ff"

    def __init__(self, *, specs_path: str, default_cron: str = DEFAULT_NIGHTLY_CRON, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.specs_path = specs_path
        self.default_cron = default_cron

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from canary.starts.nightly import NightlyChoice, choose, nightly_time_choice, rollout_run_id

        dag_run = context["dag_run"]
        conf = {**context["params"], **(dag_run.conf or {})}
        force = conf.get("force") is True
        scheduled = str(getattr(dag_run.run_type, "value", dag_run.run_type)) == "scheduled"
        run_at = dag_run.logical_date if scheduled else None
        choices: list[NightlyChoice] = []
        for path in spec_files(self.specs_path):
            try:
                spec = load_spec(path)
            except SpecError as err:
                choices.append(NightlyChoice(model=path.stem, dag_id=defaults.rollout_dag_id(path.stem), action="error",
                                             reason=f"invalid spec: {err}"))
                continue
            if not spec.schedule.takes_part_nightly:
                choices.append(NightlyChoice(model=spec.model, dag_id=spec.dag_id, action="skip",
                                             reason="not opted in (set schedule.nightly or schedule.nightly_cron)"))
                continue
            not_due = nightly_time_choice(spec.model, spec.dag_id, own_cron=spec.schedule.nightly_cron,
                                          default_cron=self.default_cron, run_at=run_at)
            if not_due is not None:
                choices.append(not_due)
                continue
            try:
                registry = registry_hook(spec).registry
            except CanaryError as err:
                choices.append(NightlyChoice(model=spec.model, dag_id=spec.dag_id, action="error",
                                             reason=f"registry: {err}"))
                continue
            active = context["ti"].get_dr_count(dag_id=spec.dag_id, states=ACTIVE_STATES)
            choices.append(choose(spec.model, spec.dag_id, registry, active_runs=active, force=force))
        for c in choices:
            self.log.info("NIGHTLY %s: %s%s - %s", c.model, c.action, f" {c.version}" if c.version else "", c.reason)
        context["ti"].xcom_push(key="choices", value=[c.to_dict() for c in choices])
        return [{"trigger_dag_id": c.dag_id, "trigger_run_id": rollout_run_id(context["run_id"], c.version or ""),
                 # started_by: the rollout's history says the nightly started it (its tasks see no caller).
                 "conf": {"version": c.version, "reason": f"nightly: {c.reason}",
                          STARTED_BY_KEY: StartedBy.NIGHTLY.value,
                          STARTED_BY_DETAIL_KEY: f"{NIGHTLY_DAG_ID} run {context['run_id']}"},
                 "note": f"started by {NIGHTLY_DAG_ID} run {context['run_id']}: {c.reason}"}
                for c in choices if c.action == "start"]


class NightlyReportOperator(BaseOperator):
    """Log and return what the nightly run started and skipped, and why; fail if a model could not be checked."""

    ui_color = "#eeeeee"

    def execute(self, context: Any) -> dict[str, Any]:
        from canary.starts.nightly import summarize

        ti = context["ti"]
        choices = ti.xcom_pull(task_ids=SELECT_TASK_ID, key="choices")
        if choices is None:
            raise AirflowFailException(f"{SELECT_TASK_ID} recorded no decisions (did it fail?)")
        report = summarize(choices)
        report["trigger_failures"] = failed_task_ids(context)
        for kind in ("started", "skipped", "errors"):
            for c in report[kind]:
                self.log.info("NIGHTLY %s %s%s: %s", kind, c["model"], f" {c['version']}" if c["version"] else "",
                              c["reason"])
        if report["errors"] or report["trigger_failures"]:
            context["ti"].xcom_push(key="return_value", value=report)
            raise AirflowFailException(
                "nightly rollouts: could not check "
                + (", ".join(f"{c['model']} ({c['reason']})" for c in report["errors"]) or "-")
                + f"; failed tasks: {', '.join(report['trigger_failures']) or '-'}")
        return report


def spec_crons(specs_path: str | Path) -> list[str]:
    """Return the distinct ``schedule.nightly_cron`` of the valid specs (invalid ones are the rollout DAGs' errors)."""
    crons: set[str] = set()
    for path in spec_files(specs_path):
        try:
            cron = load_spec(path).schedule.nightly_cron
        except SpecError:
            continue
        if cron:
            crons.add(cron)
    return sorted(crons)


def nightly_timetable(default_cron: str, crons: Sequence[str]) -> Any:
    """Return the DAG's schedule: the default cron, or one timetable firing at every distinct time (UTC)."""
    from airflow.sdk import MultipleCronTriggerTimetable

    every = [default_cron, *(c for c in crons if c != default_cron)]
    return every[0] if len(every) == 1 else MultipleCronTriggerTimetable(*every, timezone="UTC")


def build_nightly_dag(*, specs_path: str | Path | None = None, schedule: str | None = None) -> DAG:
    """Build the ``nightly_rollouts`` DAG."""
    specs_path = specs_path or specs_dir()
    default_cron = schedule or nightly_cron()
    with DAG(
        dag_id=NIGHTLY_DAG_ID,
        description="Start one rollout per model with a new candidate version",
        schedule=nightly_timetable(default_cron, spec_crons(specs_path)),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        params={"force": Param(False, type="boolean", title="Force",
                               description="Also re-roll versions that were already rolled out.")},
        doc_md=__doc__,
        tags=["canary", "nightly"],
        default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30)},
    ) as dag:
        select = SelectNightlyRolloutsOperator(task_id=SELECT_TASK_ID, specs_path=str(specs_path),
                                               default_cron=default_cron)
        start = TriggerDagRunOperator.partial(
            task_id="start_rollout", wait_for_completion=False, skip_when_already_exists=True,
            map_index_template="{{ task.trigger_dag_id }}",
        ).expand_kwargs(select.output)
        report = NightlyReportOperator(task_id="report", trigger_rule=TriggerRule.ALL_DONE)
        select >> start >> report
    return dag


__all__ = ["NIGHTLY_DAG_ID", "build_nightly_dag", "nightly_cron"]
