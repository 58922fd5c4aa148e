"""The observe sensor: watch a stage until the gate decides (deferrable by default)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.configuration import conf
from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from canary.history.looks import stage_title
from canary.policy.decisions import GateResult
from canary.rollout.observe import StageWatch, poll_stage
from canary.rollout.plan import RolloutPlan
from canary_airflow.endpoint_lock import observe_lease_kwargs, renew_lease
from canary_airflow.history import record_look, run_key
from canary_airflow.operators import PLAN_TASK_ID, metrics_hook, stage_group
from canary_airflow.triggers import CanaryObserveTrigger

#: Slack added to the stage's max duration before the sensor itself times out: the gate returns
#: TIMEOUT at the deadline, so this only fires if polling is stuck.
TIMEOUT_SLACK_S = 300.0


class CanaryObserveSensor(BaseSensorOperator):
    """Poll the stage's metrics and evaluate the gate until it returns a terminal decision.

    Checks once synchronously, then defers to :class:`CanaryObserveTrigger` (or pokes every
    ``poll_interval`` when ``deferrable=False``). Returns ``{"result", "state", "polls"}``.

    :param stage_index: 0-based stage.
    :param stage_max_duration_s: the spec's stage deadline, to size the sensor's own timeout.
    :param deferrable: run the polling in the triggerer (default from ``[operators] default_deferrable``).
    """

    ui_color = "#e6f7ff"

    def __init__(self, *, stage_index: int, stage_max_duration_s: float, poll_interval_s: float,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=True),
                 **kwargs: Any) -> None:
        kwargs.setdefault("timeout", timedelta(seconds=stage_max_duration_s + TIMEOUT_SLACK_S))
        kwargs.setdefault("poke_interval", poll_interval_s)
        kwargs.setdefault("mode", "poke")
        super().__init__(**kwargs)
        self.stage_index = stage_index
        self.deferrable = deferrable

    def _setup(self, context: Any) -> tuple[RolloutPlan, StageWatch]:
        ti = context["ti"]
        plan = RolloutPlan.from_dict(ti.xcom_pull(task_ids=PLAN_TASK_ID))
        group = stage_group(self.stage_index)
        traffic = ti.xcom_pull(task_ids=f"{group}.set_traffic")
        if not traffic:
            raise AirflowFailException(f"{group}.set_traffic left no start time")
        carry = None
        if self.stage_index > 0:
            previous = ti.xcom_pull(task_ids=f"{stage_group(self.stage_index - 1)}.observe") or {}
            carry = previous.get("state")
        watch = StageWatch(stage_index=self.stage_index, stable=plan.stable, candidate=plan.candidate,
                           stage_started_at_s=float(traffic["started_at_s"]), carry_state=carry)
        return plan, watch

    def _log(self, plan: RolloutPlan, result: GateResult, polls: int) -> None:
        ev = result.evidence
        self.log.info("CANARY %s %s: stage %d (%s%%) after %s polls: %s - %s [canary %s req, stable %s req]",
                      plan.model, plan.candidate, self.stage_index + 1, ev.get("weight_pct"), polls,
                      result.decision.value.upper(), result.reason, ev.get("canary_requests"),
                      ev.get("stable_requests"))

    def poke(self, context: Any) -> PokeReturnValue:
        plan, watch = self._setup(context)
        renew_lease(plan)  # every look renews the endpoint lease (the trigger renews at its polls)
        stage = plan.stages[self.stage_index]
        source = metrics_hook(plan.spec).source
        look_at_s = time.time()
        result, state = poll_stage(plan.spec, stage, watch, source, now_s=look_at_s)
        self._look(context, plan, result, look_at_s)
        if result.decision.is_terminal():
            self._log(plan, result, 1)
        return PokeReturnValue(is_done=result.decision.is_terminal(),
                               xcom_value={"stage_index": self.stage_index, "result": result.to_dict(),
                                           "state": state or None, "polls": 1})

    def _look(self, context: Any, plan: RolloutPlan, result: GateResult, look_at_s: float) -> None:
        """Log one look and record it in the rollout history (a failure to record only warns)."""
        dag_id, run_id = run_key(context)
        record_look(dag_id=dag_id, run_id=run_id, spec=plan.spec, stage=plan.stages[self.stage_index],
                    stage_index=self.stage_index, look_at_s=look_at_s, result=result, log=self.log)

    def execute(self, context: Any) -> Any:
        plan, watch = self._setup(context)
        stage = plan.stages[self.stage_index]
        # One collapsible group per stage in the task log; the trigger opens its own while it polls.
        self.log.info("::group::%s", stage_title(self.stage_index, stage.weight))
        try:
            first = self.poke(context)
            if first.is_done:
                return first.xcom_value
            if plan.dry_run:
                # No traffic moved, so there is nothing to wait for: report what one look shows.
                self.log.info("CANARY %s %s: [dry run] stage %d: one look, not waiting: %s", plan.model,
                              plan.candidate, self.stage_index + 1, first.xcom_value["result"]["reason"])
                return first.xcom_value
            if not self.deferrable:
                return super().execute(context)
        finally:
            self.log.info("::endgroup::")
        ref = plan.spec.backends.metrics
        self.defer(
            trigger=CanaryObserveTrigger(
                spec=plan.spec.model_dump(mode="json", by_alias=True),
                stage=stage.model_dump(mode="json", by_alias=True),
                watch=watch.to_dict(),
                metrics={"name": ref.name, "conn_id": plan.spec.backends.conn_id("metrics"),
                         "options": {"endpoint": plan.spec.endpoint,
                                     **plan.spec.backends.constructor_kwargs("metrics")}},
                lease=observe_lease_kwargs(plan),
                dag_id=run_key(context)[0],
                run_id=run_key(context)[1],
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=stage.max_duration_s + TIMEOUT_SLACK_S),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not isinstance(event, dict) or "result" not in event:
            raise AirflowFailException(f"observe trigger sent a malformed event: {event!r}")
        result = GateResult.from_dict(event["result"])
        plan = RolloutPlan.from_dict(context["ti"].xcom_pull(task_ids=PLAN_TASK_ID))
        self._log(plan, result, int(event.get("polls", 0)))
        return {"stage_index": self.stage_index, "result": result.to_dict(), "state": event.get("state"),
                "polls": event.get("polls")}
