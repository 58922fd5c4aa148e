"""Operators of a rollout DAG. Each one does one step, is idempotent, and honours dry runs.

The first task (:class:`ValidateRolloutRequestOperator`) freezes the rollout plan (spec, versions,
stages) into XCom; every later task reads that frozen plan, never the spec file, so editing a spec
cannot change a rollout that is already running.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.configuration import conf
from airflow.sdk import BaseOperator
from airflow.sdk.bases.branch import BaseBranchOperator
from airflow.sdk.exceptions import AirflowFailException

from canary.backends import TargetingTrafficRouter, TrafficRouter, without_waiting
from canary.backends.base import LeaseLostError
from canary.errors import CanaryError, ConfigError, RequestError, SpecError
from canary.policy.decisions import Action, GateResult, Outcome, decide_outcome
from canary.policy.evidence_md import EVIDENCE_MD_XCOM_KEY, gate_evidence_markdown
from canary.rollout.plan import RolloutPlan, RolloutRequest, plan_rollout
from canary.rollout.safety import return_to_stable
from canary.spec.durations import format_duration
from canary.spec.model import RolloutSpec, TargetingSpec, load_spec
from canary_airflow import notify
from canary_airflow.endpoint_lock import (
    APPROVAL_TIMEOUT_S,
    EndpointLeaseMixin,
    lease_holder,
    lease_key,
    lock_hook,
    renew_lease,
    wait_origin_s,
)
from canary_airflow.history import record_event
from canary_airflow.hooks import CanaryMetricsHook, CanaryRegistryHook, CanaryServingHook
from canary_airflow.links import RolloutReportLink
from canary_airflow.serving_changes import (
    ServingChangeError,
    check_settled,
    defer_while_changing,
    serving_ref,
)

PLAN_TASK_ID = "validate_request"
SHADOW_TASK_ID = "shadow_test"
PROMOTE_TASK_ID = "promote"


def stage_group(index: int) -> str:
    """Return the task group id of stage ``index`` (0-based), e.g. ``stage_1``."""
    return f"stage_{index + 1}"


def serving_hook(spec: RolloutSpec) -> CanaryServingHook:
    return CanaryServingHook(spec.backends.serving.name, spec.backends.conn_id("serving"), endpoint=spec.endpoint,
                             **spec.backends.constructor_kwargs("serving"))


def metrics_hook(spec: RolloutSpec) -> CanaryMetricsHook:
    return CanaryMetricsHook(spec.backends.metrics.name, spec.backends.conn_id("metrics"), endpoint=spec.endpoint,
                             **spec.backends.constructor_kwargs("metrics"))


def registry_hook(spec: RolloutSpec) -> CanaryRegistryHook:
    return CanaryRegistryHook(spec.backends.registry.name, spec.backends.conn_id("registry"),
                              **spec.backends.constructor_kwargs("registry"))


def build_backends(spec: RolloutSpec) -> dict[str, Any]:
    """Build every backend a rollout of ``spec`` uses (constructors only: no call, no traffic change).

    Reads each connection and runs each backend's constructor, which checks its connection fields and
    options, so a bad connection or option refuses the run before any traffic moves.

    :return: role -> the built backend.
    :raises ConfigError: naming the role, the backend and the connection of the first one that cannot be built.
    """
    from airflow.sdk.exceptions import AirflowNotFoundException

    hooks = {"serving": serving_hook(spec), "metrics": metrics_hook(spec), "registry": registry_hook(spec),
             "lock": lock_hook(spec)}
    built = {}
    for role, hook in hooks.items():
        what = f"{role} backend {hook.backend!r} (connection {hook.conn_id!r})"
        try:
            built[role] = hook.client
        except AirflowNotFoundException as err:
            raise ConfigError(f"{what}: the connection is not defined; create it (Admin > Connections, or "
                              f"AIRFLOW_CONN_{hook.conn_id.upper()}) or set backends.{role}.conn_id") from err
        except (ConfigError, TypeError, ValueError) as err:
            raise ConfigError(f"{what} cannot be built: {err}") from err
        except Exception as err:
            err.add_note(f"while building the {what}")  # maybe transient (a secrets backend): the retry may help
            raise
    return built


class CanaryBaseOperator(BaseOperator):
    """Base of the rollout steps: reads the frozen plan and builds backends from it.

    Steps that change the traffic split wait for the serving backend to apply each change (a SageMaker
    endpoint update takes minutes). Deferrable (the default), they issue the change, check once, and
    defer to :class:`~canary_airflow.serving_changes.ServingChangeTrigger` while it is being applied;
    the resumed task runs its idempotent steps again from the start.

    :param deferrable: wait for serving changes in the triggerer (default from
        ``[operators] default_deferrable``); false: the backend waits inside the task.
    """

    ui_color = "#fff7e6"
    #: "Rollout report": the run's Rollout tab in the Airflow UI (computed by the worker at task end).
    operator_extra_links = (RolloutReportLink(),)
    #: Reading the plan renews the run's endpoint lease (one rollout per endpoint): every step that may
    #: move traffic first makes sure this run still owns the endpoint. ``finalize`` checks on its own.
    renews_lease = True

    def lease_ttl_s(self, plan: RolloutPlan) -> float:
        """Return how long the lease must last from this step's start until the next renewal."""
        return plan.spec.concurrency.lease_ttl_s

    def __init__(self, *, deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=True),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deferrable = deferrable

    def changing_router(self, spec: RolloutSpec) -> TrafficRouter:
        """Return the spec's router; deferrable, one that does not wait for its changes to take effect."""
        router = serving_hook(spec).router
        return without_waiting(router) if self.deferrable else router

    def settle(self, spec: RolloutSpec, router: TrafficRouter) -> None:
        """Return once ``router`` has no change in progress; deferrable, defer the task until then."""
        if self.deferrable:
            defer_while_changing(self, router, serving_ref(spec))

    def resume_after_serving_change(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Resume after a deferred wait: fail on a failed change, else run the (idempotent) steps again."""
        try:
            check_settled(event)
        except ServingChangeError as err:
            if err.final:
                raise AirflowFailException(f"serving change failed: {err}") from err
            raise  # a timeout or a backend that could not be reached: the task's retries may help
        return self.execute(context)

    def plan(self, context: Any) -> RolloutPlan:
        data = context["ti"].xcom_pull(task_ids=PLAN_TASK_ID)
        if not data:
            raise AirflowFailException(f"no rollout plan in XCom of {PLAN_TASK_ID!r}; did it run?")
        plan = RolloutPlan.from_dict(data)
        if self.renews_lease:
            renew_lease(plan, ttl_s=self.lease_ttl_s(plan))
        return plan

    def say(self, plan: RolloutPlan, message: str) -> None:
        """Log one timeline line (prefixed so the demo and the report can pick them out)."""
        prefix = "[dry run] " if plan.dry_run else ""
        self.log.info("CANARY %s %s: %s%s", plan.model, plan.candidate, prefix, message)


class ValidateRolloutRequestOperator(EndpointLeaseMixin, CanaryBaseOperator):
    """Validate the spec and the run's conf, resolve versions, take the endpoint, and freeze the plan.

    Anything that cannot run is refused here, before any traffic moves, with the field named. While
    another rollout holds the endpoint's lease it waits in the triggerer (``concurrency.on_busy: wait``,
    up to ``max_wait``) or is refused naming that rollout (``refuse``); a dry run takes no lease.

    :param spec_path: the model's YAML spec.
    """

    template_fields: Sequence[str] = ("spec_path",)
    ui_color = "#e8f1ff"

    def __init__(self, *, spec_path: str, **kwargs: Any) -> None:
        # Refusals fail at once (AirflowFailException, never retried); a retry only repeats the registry
        # reads and re-takes the run's own lease, for a flaky backend or an Airflow hiccup.
        kwargs.setdefault("retries", 1)
        super().__init__(**kwargs)
        self.spec_path = spec_path

    def execute(self, context: Any) -> dict[str, Any]:
        from canary_airflow.history import record_refusal, record_start

        spec: RolloutSpec | None = None
        conf = dict(context["params"])
        conf.update(context["dag_run"].conf or {})
        try:
            spec = load_spec(self.spec_path)
            request = RolloutRequest.from_conf(conf)
            backends = build_backends(spec)
            registry = backends["registry"]
            plan = plan_rollout(spec, request, registry, run_id=context["run_id"], now_s=time.time())
            self._wait_origin_s = wait_origin_s(context)
            plan = self.take_endpoint(plan, lambda: plan_rollout(spec, request, registry,
                                                                 run_id=context["run_id"], now_s=time.time()),
                                      backends["lock"])
        except (SpecError, RequestError, ConfigError) as err:
            from canary_airflow.run_notes import write_run_note

            write_run_note(context, f"REFUSED before any traffic moved - {err}", log=self.log)
            record_refusal(context, spec, conf, str(err), self.log)
            notify.rollout_refused(context, self.spec_path, err, log=self.log)
            raise AirflowFailException(f"rollout refused: {err}") from err
        weights = " -> ".join(f"{s.weight}%" for s in plan.stages)
        self.say(plan, f"rollout of {plan.candidate} against champion {plan.stable}, stages {weights}"
                       + (f" ({plan.reason})" if plan.reason else ""))
        record_start(context, plan, self.log)  # the plan is frozen: the spec as this run will apply it
        notify.rollout_started(context, plan, log=self.log)
        return plan.to_dict()


class ShadowTestOperator(CanaryBaseOperator):
    """Mirror real requests to the candidate, compare with stable, validate its outputs (Great Expectations,
    imported only here), and fail the rollout if it differs or an expectation fails."""

    ui_color = "#f0e8ff"

    def lease_ttl_s(self, plan: RolloutPlan) -> float:
        # The shadow test renews nothing while it runs (up to its max_duration, then the task's timeout).
        return plan.spec.concurrency.lease_ttl_s + plan.spec.shadow.max_duration_s + 120.0

    def execute(self, context: Any) -> dict[str, Any]:
        plan = self.plan(context)
        shadow = plan.spec.shadow
        if not shadow.enabled:
            self.say(plan, "shadow test disabled in the spec")
            return {"passed": True, "skipped": True, "reasons": [], "summary": {}}
        if plan.dry_run:
            self.say(plan, f"would mirror {shadow.mirror_percent}% of requests and run the paired tests until "
                           f"conclusive (at least {shadow.requests} pairs to pass, at most "
                           f"{format_duration(shadow.max_duration_s)})")
            return {"passed": True, "skipped": True, "reasons": ["dry run"], "summary": {}}
        from canary.rollout.shadow import run_shadow

        verdict = run_shadow(serving_hook(plan.spec).router, metrics_hook(plan.spec).source, shadow,
                             stable=plan.stable, candidate=plan.candidate, alpha=plan.spec.analysis.alpha,
                             log=lambda m: self.say(plan, m))
        result = verdict.to_dict()
        record_event(context, "shadow", "", result, self.log)
        if not verdict.passed:
            context["ti"].xcom_push(key="return_value", value=result)
            raise AirflowFailException(f"shadow test failed: {'; '.join(verdict.reasons)}")
        checked = (f", {len(verdict.expectations)} expectations met by {verdict.outputs_validated} of its outputs"
                   if verdict.expectations else "")
        self.say(plan, f"shadow test passed on {verdict.summary['pairs']} mirrored requests{checked}"
                 + "".join(f"; {note}" for note in verdict.notes))
        return result


class DeployCanaryOperator(CanaryBaseOperator):
    """Deploy the candidate beside stable at 0% traffic."""

    def execute(self, context: Any) -> dict[str, int]:
        plan = self.plan(context)
        router = self.changing_router(plan.spec)
        if plan.dry_run:
            weights = router.get_weights()
            self.say(plan, f"would deploy {plan.candidate} at 0%; current split {weights}")
            return weights
        self.settle(plan.spec, router)  # an update in progress (e.g. before a retry) first
        router.deploy(plan.candidate)
        self.settle(plan.spec, router)
        weights = router.get_weights()
        if weights.get(plan.candidate, 0) != 0:
            raise AirflowFailException(f"{plan.candidate} already receives {weights[plan.candidate]}% traffic; "
                                       "another rollout may be running on this endpoint")
        self.say(plan, f"deployed {plan.candidate} at 0%")
        return weights


def split_for(plan: RolloutPlan, canary_pct: int) -> dict[str, int]:
    """Return the declarative split that gives the candidate ``canary_pct`` percent."""
    return {plan.stable: 100 - canary_pct, plan.candidate: canary_pct}


def apply_targeting(router: TrafficRouter, plan: RolloutPlan, targeting: TargetingSpec | None) -> None:
    """Expose the candidate to ``targeting``'s population only, or to everyone (None). Idempotent.

    Nothing to do for a spec without targeting; the spec refuses targeting on routers that cannot do it.
    """
    if plan.spec.targeting is None:
        return
    if not isinstance(router, TargetingTrafficRouter):
        raise AirflowFailException(f"targeting: the serving backend {type(router).__name__} cannot route by "
                                   "request attributes")
    if targeting is None:
        router.set_targeting(None)
    else:
        router.set_targeting(plan.candidate, targeting.match)


class SetTrafficOperator(CanaryBaseOperator):
    """Set the stage's split declaratively (a retry sets the same weights) and start its clock.

    :param stage_index: 0-based stage.
    """

    ui_color = "#e6ffed"

    def __init__(self, *, stage_index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage_index = stage_index

    def execute(self, context: Any) -> dict[str, Any]:
        plan = self.plan(context)
        weight = plan.stages[self.stage_index].weight
        split = split_for(plan, weight)
        targeting = plan.spec.targeting_for(self.stage_index)
        of_whom = f" of requests with {targeting.describe()}" if targeting else ""
        if plan.dry_run:
            self.say(plan, f"stage {self.stage_index + 1}: would set {split}{of_whom}")
        else:
            router = self.changing_router(plan.spec)
            self.settle(plan.spec, router)
            # Targeting first: the first request at the new weight already goes where the stage says.
            apply_targeting(router, plan, targeting)
            router.set_weights(split)
            self.settle(plan.spec, router)  # the stage's clock starts once the split is in effect
            self.say(plan, f"stage {self.stage_index + 1}: traffic set to {weight}% canary{of_whom}")
        started_at_s = time.time()
        if self.stage_index > 0:
            record_approval(context, self.stage_index - 1, self.log)  # the answer that let this stage start
        record_event(context, "traffic", stage_group(self.stage_index),
                     {"stage": self.stage_index, "weight_pct": weight, "weights": split,
                      "targeting": targeting.match if targeting else None, "dry_run": plan.dry_run},
                     self.log, at_s=started_at_s)
        return {"stage_index": self.stage_index, "weight": weight, "started_at_s": started_at_s, "split": split}


class CanaryGateOperator(CanaryBaseOperator, BaseBranchOperator):
    """Turn the stage's observed decision into the next step, per the spec's policy (a branch).

    :param stage_index: 0-based stage.
    :param has_approval: whether the stage group has an ``approve`` task to hold on.
    """

    ui_color = "#fffbe6"

    def __init__(self, *, stage_index: int, has_approval: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage_index = stage_index
        self.has_approval = has_approval

    def choose_branch(self, context: Any) -> str:
        plan = self.plan(context)
        group = stage_group(self.stage_index)
        observed = context["ti"].xcom_pull(task_ids=f"{group}.observe")
        if not observed:
            raise AirflowFailException(f"{group}.observe returned no decision")
        result = GateResult.from_dict(observed["result"])
        if plan.dry_run and not result.decision.is_terminal():
            action, why = Action.NEXT_STAGE, f"dry run: would keep observing ({result.reason})"
        else:
            action, why = next_action_for(plan, self.stage_index, result)
        if action is Action.HOLD and not self.has_approval:
            action, why = Action.ROLLBACK, f"{why} (no approval task in this DAG: rolling back)"
        gate = {"action": action.value, "reason": why, "decision": result.decision.value, "metric": result.metric}
        context["ti"].xcom_push(key="action", value=gate)
        record_event(context, "gate", group, {**gate, "stage": self.stage_index}, self.log)
        # What a person approving a held stage reads (the approval task's body pulls it).
        context["ti"].xcom_push(key=EVIDENCE_MD_XCOM_KEY, value=gate_evidence_markdown(
            result.to_dict(), action=action.value, action_reason=why))
        self.say(plan, f"stage {self.stage_index + 1} gate: {result.decision.value} -> {action.value}: {why}")
        notify.stage_decided(context, plan, self.stage_index, result, action, why, log=self.log)
        if action is Action.ROLLBACK:
            return f"{group}.rollback"
        if action is Action.HOLD:
            # Nothing renews the lease while a person decides: make it outlast the approval's timeout.
            renew_lease(plan, ttl_s=APPROVAL_TIMEOUT_S + plan.spec.concurrency.lease_ttl_s)
            return f"{group}.approve"
        return f"{group}.proceed"


def next_action_for(plan: RolloutPlan, stage_index: int, result: GateResult) -> tuple[Action, str]:
    from canary.policy.gate import next_action

    spec = plan.spec.model_copy(update={"stages": list(plan.stages)})
    return next_action(spec, stage_index, result)


def decided_metrics(context: Any, stage_index: int) -> dict[str, Any]:
    """Return the stage's gate evidence for the registry: ``stage`` (1-based) and ``metrics`` (assessments)."""
    observed = context["ti"].xcom_pull(task_ids=f"{stage_group(stage_index)}.observe") or {}
    metrics = ((observed.get("result") or {}).get("evidence") or {}).get("metrics")
    return {"stage": stage_index + 1, "metrics": metrics} if metrics else {}


def roll_back(plan: RolloutPlan, reason: str, *, log: Any, task: CanaryBaseOperator | None = None,
              evidence: dict[str, Any] | None = None) -> None:
    """Return all traffic to stable, remove the candidate and tell the registry why. Idempotent.

    With ``task``, its router and its waits are used: deferrable, each change may defer the task, whose
    resumption calls this again (the steps already done are no-ops). ``evidence`` (see
    :func:`decided_metrics`) goes into the registry's summary.
    """
    router = task.changing_router(plan.spec) if task else serving_hook(plan.spec).router
    settle = (lambda: task.settle(plan.spec, router)) if task else (lambda: None)
    settle()
    return_to_stable(router, plan.stable, log=log)  # retried with backoff: the serving layer may be failing
    settle()
    apply_targeting(router, plan, None)
    router.remove(plan.candidate)
    settle()
    registry_hook(plan.spec).registry.record_rollback(plan.model, plan.candidate, run_id=plan.run_id,
                                                      reason=reason, summary={"stable": plan.stable,
                                                                              **(evidence or {})})
    log(f"rolled back: 100% on {plan.stable}, {plan.candidate} removed ({reason})")


class RollbackOperator(CanaryBaseOperator):
    """Roll back after a stage's gate said so: 0% canary, canary removed, registry told why."""

    ui_color = "#ffe6e6"

    def __init__(self, *, stage_index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage_index = stage_index

    def execute(self, context: Any) -> dict[str, Any]:
        plan = self.plan(context)
        gate = context["ti"].xcom_pull(task_ids=f"{stage_group(self.stage_index)}.gate", key="action") or {}
        reason = f"stage {self.stage_index + 1} ({plan.stages[self.stage_index].weight}%): " + \
            gate.get("reason", "gate decided to roll back")
        if plan.dry_run:
            self.say(plan, f"would roll back: {reason}")
        else:
            roll_back(plan, reason, log=lambda m: self.say(plan, m), task=self,
                      evidence=decided_metrics(context, self.stage_index))
        record_event(context, "rollback", stage_group(self.stage_index),
                     {"stage": self.stage_index, "reason": reason, "metric": gate.get("metric"),
                      "weights": {plan.stable: 100}, "dry_run": plan.dry_run}, self.log)
        return {"outcome": Outcome.ROLLED_BACK.value, "reason": reason, "stage_index": self.stage_index,
                "metric": gate.get("metric")}


class PromoteOperator(CanaryBaseOperator):
    """Promote: 100% candidate, old version retired, registry's champion moved."""

    ui_color = "#d9f7be"

    def execute(self, context: Any) -> dict[str, Any]:
        plan = self.plan(context)
        reason = f"every stage passed ({' -> '.join(str(s.weight) for s in plan.stages)}%)"
        if plan.dry_run:
            self.say(plan, f"would promote {plan.candidate} and retire {plan.stable}")
            return {"outcome": Outcome.DRY_RUN.value, "reason": reason}
        router = self.changing_router(plan.spec)
        self.settle(plan.spec, router)
        apply_targeting(router, plan, None)  # promotion exposes everyone
        router.set_weights({plan.candidate: 100})
        self.settle(plan.spec, router)
        router.remove(plan.stable)
        self.settle(plan.spec, router)
        registry_hook(plan.spec).registry.promote(plan.model, plan.candidate, run_id=plan.run_id,
                                                  summary={"retired": plan.stable, "reason": reason,
                                                           **decided_metrics(context, len(plan.stages) - 1)})
        self.say(plan, f"promoted {plan.candidate}; {plan.stable} retired")
        record_event(context, "promote", "", {"candidate": plan.candidate, "retired": plan.stable, "reason": reason,
                                              "weights": {plan.candidate: 100}}, self.log)
        return {"outcome": Outcome.PROMOTED.value, "reason": reason}


class FinalizeRolloutOperator(CanaryBaseOperator):
    """Teardown: whatever happened, leave traffic on stable unless promoted, then write the report.

    Runs even when an upstream task failed. The DAG run fails unless the outcome is a promotion (or
    a dry run), so a rolled-back rollout is visible as a failed run; the report says why.

    :param stage_count: number of stages in the DAG.
    """

    ui_color = "#eeeeee"
    renews_lease = False  # it must run even when the lease is lost or the lock store is down

    def __init__(self, *, stage_count: int, **kwargs: Any) -> None:
        # Returning traffic to stable must survive a flaky backend: retried (the verdict itself is not).
        kwargs.setdefault("retries", 3)
        super().__init__(**kwargs)
        self.stage_count = stage_count

    def execute(self, context: Any) -> dict[str, Any]:
        from canary.rollout.report import build_report, write_report

        ti = context["ti"]
        plan = self.plan(context)
        groups = [stage_group(i) for i in range(self.stage_count)]
        stages = [ti.xcom_pull(task_ids=f"{g}.observe") for g in groups]
        rollbacks = [r for r in (ti.xcom_pull(task_ids=f"{g}.rollback") for g in groups) if r]
        promoted = ti.xcom_pull(task_ids=PROMOTE_TASK_ID)
        shadow = ti.xcom_pull(task_ids=SHADOW_TASK_ID)
        lost = None if plan.dry_run else self._lease_lost(plan)
        final = decide_outcome(promoted=promoted, rollbacks=rollbacks, shadow=shadow,
                               failed_tasks=self._failed_tasks(context), dry_run=plan.dry_run,
                               lease_lost=None if lost is None else str(lost))
        outcome, reason = final.outcome, final.reason
        if final.return_to_stable:
            try:
                roll_back(plan, reason, log=lambda m: self.say(plan, m), task=self)
            except CanaryError as err:  # retried: the task's retries exist for exactly this
                message = f"could not return traffic to {plan.stable} yet: {err}"
                if int(getattr(ti, "try_number", 1) or 1) > int(self.retries or 0):  # the last try: tell people
                    self.log.error("CANARY %s", message)
                    notify.rollout_finished(context, plan, Outcome.FAILED, message, log=self.log)
                raise RuntimeError(message) from err
            record_event(context, "rollback", "finalize", {"reason": reason, "weights": {plan.stable: 100}},
                         self.log)
        if final.release_lease:
            self._release_lease(plan)  # traffic is settled (on stable, or promoted): the endpoint is free
        for index in range(self.stage_count):
            record_approval(context, index, self.log)
        report = build_report(plan, outcome=outcome, reason=reason, shadow=shadow,
                              stages=[s for s in stages if s])
        paths = write_report(report)
        self.say(plan, f"outcome {outcome.value}: {reason} (report {paths[0]})")
        self._record_finish(context, report, outcome=outcome.value, reason=reason,
                            stages_reached=sum(1 for s in stages if s), location=str(paths[0]))
        from canary_airflow.run_notes import write_run_note

        dry = "[dry run] " if plan.dry_run and outcome is not Outcome.DRY_RUN else ""
        write_run_note(context, f"{dry}{outcome.value.upper().replace('_', ' ')} {plan.candidate} "
                                f"(stable {plan.stable}) - {reason}", log=self.log)
        notify.rollout_finished(context, plan, outcome, reason, log=self.log)
        if not outcome.is_success():
            context["ti"].xcom_push(key="return_value", value=report)
            raise AirflowFailException(f"rollout {outcome.value}: {reason}")
        return report

    def _record_finish(self, context: Any, report: dict[str, Any], *, outcome: str, reason: str,
                       stages_reached: int, location: str) -> None:
        """Record how the run ended and keep its reports in the history (a failure only warns)."""
        import json

        from canary.rollout.report import render_markdown
        from canary_airflow.history import record, run_key

        dag_id, run_id = run_key(context)

        def write(history: Any) -> None:
            history.put_report(dag_id, run_id, "json", json.dumps(report, indent=2, default=str))
            history.put_report(dag_id, run_id, "md", render_markdown(report))
            html_path = Path(location).with_suffix(".html")
            try:
                history.finish(dag_id, run_id, outcome=outcome, reason=reason, finished_at_s=time.time(),
                               stages_reached=stages_reached, report_location=str(html_path))
            except KeyError:
                self.log.warning("rollout history: no start of run %s/%s was recorded; its outcome is kept "
                                 "in its reports only", dag_id, run_id)
                return
            # The HTML page is drawn from the journal (every look, every event) as finished, kept in the
            # history (the API server serves it from there: no shared disk needed) and written beside the JSON.
            from canary.report.html import render_html

            finished = history.rollout(dag_id, run_id)
            page = render_html(finished, history.looks(dag_id, run_id), history.events(dag_id, run_id),
                               report=report)
            history.put_report(dag_id, run_id, "html", page)
            tmp = html_path.with_suffix(".html.tmp")
            tmp.write_text(page)
            os.replace(tmp, html_path)
            self.log.info("CANARY HTML report %s", html_path)

        record("the outcome of the rollout", write, self.log)

    def resume_after_serving_change(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Resume the return to stable; any wait that did not settle fails the try, so a retry does it again."""
        try:
            check_settled(event)
        except ServingChangeError as err:
            raise RuntimeError(f"could not return traffic to stable yet: {err}") from err
        return self.execute(context)

    def _lease_lost(self, plan: RolloutPlan) -> LeaseLostError | None:
        """Return the loss if another rollout owns the endpoint now (then its traffic is not ours to move).

        A lock store that cannot be reached is no reason to leave traffic on a candidate: that only warns.
        """
        try:
            lock_hook(plan.spec).lock.renew(lease_key(plan.spec), lease_holder(plan),
                                            ttl_s=plan.spec.concurrency.lease_ttl_s)
        except LeaseLostError as err:
            self.log.error("%s: not touching its traffic", err)
            return err
        except Exception as err:  # the safety net must not depend on the lock store
            self.log.warning("could not check the endpoint lease (%s); returning traffic to stable anyway", err)
        return None

    def _release_lease(self, plan: RolloutPlan) -> None:
        key = lease_key(plan.spec)
        try:
            released = lock_hook(plan.spec).lock.release(key, lease_holder(plan))
        except Exception as err:  # not worth failing the run over: the lease expires by itself
            self.log.warning("could not release the lease on endpoint %s (%s); it expires after %ss", key, err,
                             plan.spec.concurrency.lease_ttl_s)
            return
        self.say(plan, f"released the lease on endpoint {key}" if released
                 else f"held no lease on endpoint {key} any more")

    def _failed_tasks(self, context: Any) -> list[str]:
        try:
            return failed_task_ids(context, exclude=self.task_id)
        except Exception as err:  # older task SDKs: name no task rather than fail the safety net
            self.log.warning("could not read task states: %s", err)
            return []


def record_approval(context: Any, stage_index: int, log: Any) -> None:
    """Record the answer of a stage's ``approve`` task, if it ran (who responded, when, the chosen option).

    Airflow's ``ApprovalOperator`` returns ``{"chosen_options", "params_input", "responded_at",
    "responded_by_user"}`` as its XCom; it is read here rather than by subclassing the operator. The
    event's ``stage`` is 0-based, like the other events' (its key is the stage's task group).
    """
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    group = stage_group(stage_index)
    answer = context["ti"].xcom_pull(task_ids=f"{group}.approve")
    if not isinstance(answer, dict) or not answer.get("chosen_options"):
        return
    responded_at = answer.get("responded_at")
    user = answer.get("responded_by_user") or {}
    chosen = str(answer["chosen_options"][0])
    data = {"stage": stage_index, "decision": chosen, "approved": chosen == ApprovalOperator.APPROVE,
            "user": (user.get("name") or user.get("id")) if isinstance(user, dict) else str(user),
            "responded_at": responded_at.isoformat() if hasattr(responded_at, "isoformat") else responded_at,
            "params_input": dict(answer.get("params_input") or {})}
    record_event(context, "approval", group, data, log,
                 at_s=responded_at.timestamp() if hasattr(responded_at, "timestamp") else None)


def failed_task_ids(context: Any, *, exclude: str | None = None) -> list[str]:
    """Return the ids of the current DAG run's failed tasks (other than ``exclude``), sorted."""
    states = context["ti"].get_task_states(dag_id=context["dag"].dag_id, run_ids=[context["run_id"]])
    per_run: dict[str, Any] = states.get(context["run_id"], states)
    return sorted(t for t, s in per_run.items() if s == "failed" and t != exclude)
