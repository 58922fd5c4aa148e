"""The observe trigger: polls the metrics backend every ``poll_interval`` and fires on a terminal decision.

Stateless and idempotent: everything it needs travels in its JSON-able kwargs (the frozen spec, the
stage, the carried analyzer state), and the decision depends only on cumulative statistics, so a
trigger that is restarted or runs twice fires with the same decision.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from canary.backends.base import Lease, LeaseHolder, LeaseLostError
from canary.errors import BackendError
from canary.history.looks import stage_title
from canary.policy.decisions import Decision, GateResult
from canary.rollout.lease import blocking_lease
from canary.rollout.observe import StageWatch, default_analyzer, poll_stage
from canary.spec import defaults
from canary.spec.model import StageSpec, parse_spec
from canary_airflow.history import record_look
from canary_airflow.polling import DeadlinePassed, Failed, GaveUp, Polled, PollPolicy, poll_loop

#: Consecutive failed polls after which the trigger reports HALT instead of retrying further.
MAX_CONSECUTIVE_BACKEND_ERRORS = defaults.OBSERVE_MAX_CONSECUTIVE_ERRORS


class CanaryObserveTrigger(BaseTrigger):
    """Poll a stage until the gate decides.

    :param spec: the frozen rollout spec (``model_dump(by_alias=True)``).
    :param stage: the stage spec (``model_dump(by_alias=True)``).
    :param watch: :class:`~canary.rollout.observe.StageWatch` as a dict.
    :param metrics: ``{"name", "conn_id", "options"}`` of the metrics backend.
    :param lease: the run's endpoint lease, renewed at every poll: ``{"lock", "key", "dag_id", "run_id",
        "ttl_s"}`` (None: nothing to renew, e.g. a dry run). A lost lease fires HALT (metric ``lease``).
    :param dag_id: the observed run's DAG, to record each look in the rollout history.
    :param run_id: the observed run. Both None (triggers stored before the history existed): looks are
        logged, not recorded.
    """

    def __init__(self, *, spec: dict[str, Any], stage: dict[str, Any], watch: dict[str, Any],
                 metrics: dict[str, Any], lease: dict[str, Any] | None = None, dag_id: str | None = None,
                 run_id: str | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.stage = stage
        self.watch = watch
        self.metrics = metrics
        self.lease = lease
        self.dag_id = dag_id
        self.run_id = run_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"spec": self.spec, "stage": self.stage, "watch": self.watch, "metrics": self.metrics,
                 "lease": self.lease, "dag_id": self.dag_id, "run_id": self.run_id})

    async def _look(self, spec: Any, stage: StageSpec, watch: StageWatch, result: GateResult,
                    look_at_s: float) -> None:
        """Log the poll's look and record it in the history (in a thread; a failure only warns)."""
        await asyncio.to_thread(record_look, dag_id=self.dag_id, run_id=self.run_id, spec=spec, stage=stage,
                                stage_index=watch.stage_index, look_at_s=look_at_s, result=result, log=self.log)

    async def _lease_store(self) -> Any:
        if not self.lease:
            return None
        from canary_airflow.hooks import CanaryLockHook

        ref = self.lease["lock"]
        return await CanaryLockHook(ref["name"], ref["conn_id"], **ref.get("options", {})).aclient()

    async def _renew(self, store: Any) -> LeaseLostError | None:
        """Renew the lease; return the loss if another rollout has it (a store error only warns: the TTL
        covers many polls, and the next successful renewal re-takes a lease nobody else took)."""
        if store is None:
            return None
        lease = self.lease or {}
        holder = LeaseHolder(dag_id=lease["dag_id"], run_id=lease["run_id"])
        try:
            await asyncio.to_thread(store.renew, lease["key"], holder, ttl_s=float(lease["ttl_s"]))
        except LeaseLostError as err:
            return err
        except BackendError as err:
            self.log.warning("could not renew the lease on endpoint %s: %s", lease["key"], err)
        return None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from canary_airflow.hooks import CanaryMetricsHook

        spec = parse_spec(self.spec, source="trigger kwargs")
        stage = StageSpec.model_validate(self.stage)
        watch = StageWatch.from_dict(self.watch)
        analyzer = default_analyzer()
        hook = CanaryMetricsHook(self.metrics["name"], self.metrics["conn_id"], **self.metrics.get("options", {}))
        source = await hook.aclient()
        lease_store = await self._lease_store()

        async def poll() -> tuple[LeaseLostError | None, GateResult | None, Any, float]:
            lost = await self._renew(lease_store)
            look_at_s = time.time()
            if lost is not None:
                return lost, None, None, look_at_s
            result, state = await asyncio.to_thread(poll_stage, spec, stage, watch, source, analyzer=analyzer,
                                                    now_s=look_at_s)
            return None, result, state, look_at_s

        policy = PollPolicy(interval_s=spec.analysis.poll_interval_s,
                            max_consecutive_errors=MAX_CONSECUTIVE_BACKEND_ERRORS)
        polls = 0
        # One collapsible group per stage in the task log (Airflow's log view folds ::group:: ... ::endgroup::).
        self.log.info("::group::%s", stage_title(watch.stage_index, stage.weight))
        group_open = True

        def end_group() -> None:
            nonlocal group_open
            if group_open:
                self.log.info("::endgroup::")
                group_open = False

        try:
            async for step in poll_loop(poll, policy, retry_on=(BackendError,)):
                if isinstance(step, Polled):
                    lost, result, state, look_at_s = step.value
                    if lost is not None:
                        result = GateResult(decision=Decision.HALT, metric="lease",
                                            reason=f"{lost}: stopped observing")
                        end_group()
                        yield TriggerEvent(self._payload(result, watch.carry_state, polls))
                        return
                    polls += 1
                    await self._look(spec, stage, watch, result, look_at_s)
                    if result.decision.is_terminal():
                        end_group()
                        yield TriggerEvent(self._payload(result, state, polls))
                        return
                    continue
                assert isinstance(step, Failed | GaveUp)
                self.log.warning("metrics poll %d failed (%d in a row): %s", polls + 1, step.failures, step.error)
                past_deadline = time.time() - watch.stage_started_at_s >= stage.max_duration_s
                if isinstance(step, GaveUp) or past_deadline:
                    result = GateResult(decision=Decision.HALT, metric="data",
                                        reason=f"metrics backend failing ({step.failures} polls in a row): "
                                               f"{step.error}")
                    end_group()
                    yield TriggerEvent(self._payload(result, watch.carry_state, polls))
                    return
        finally:
            end_group()  # also when the triggerer cancels it (the task was cleared, the run failed)

    def _payload(self, result: GateResult, state: Any, polls: int) -> dict[str, Any]:
        return {"stage_index": self.watch["stage_index"], "result": result.to_dict(),
                "state": dict(state) if state else None, "polls": polls}


class EndpointLeaseTrigger(BaseTrigger):
    """Wait until an endpoint's lease is free (or expired), or until the deadline; never takes it.

    Only reads the lease store, so it is idempotent and may run twice; the resumed task takes the
    lease (and defers again if another waiting rollout was faster). Fires ``{"status": "free"|"timeout",
    "holder": <lease dict or None>, "deadline_s", "waiting_since_s", "error"}``.

    :param lock: ``{"name", "conn_id", "options"}`` of the lock backend.
    :param key: the endpoint's lease key (``<serving backend>/<endpoint>``).
    :param dag_id: the waiting run's DAG (its own lease does not block it).
    :param run_id: the waiting run.
    :param deadline_s: epoch seconds after which it fires ``timeout`` (``concurrency.max_wait``).
    :param waiting_since_s: when the run started waiting (reported back).
    :param poll_interval_s: how often the store is read.
    """

    def __init__(self, *, lock: dict[str, Any], key: str, dag_id: str, run_id: str, deadline_s: float,
                 waiting_since_s: float, poll_interval_s: float) -> None:
        super().__init__()
        self.lock = lock
        self.key = key
        self.dag_id = dag_id
        self.run_id = run_id
        self.deadline_s = deadline_s
        self.waiting_since_s = waiting_since_s
        self.poll_interval_s = poll_interval_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"lock": self.lock, "key": self.key, "dag_id": self.dag_id, "run_id": self.run_id,
                 "deadline_s": self.deadline_s, "waiting_since_s": self.waiting_since_s,
                 "poll_interval_s": self.poll_interval_s})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from canary_airflow.hooks import CanaryLockHook

        store = await CanaryLockHook(self.lock["name"], self.lock["conn_id"], **self.lock.get("options", {})).aclient()
        holder = LeaseHolder(dag_id=self.dag_id, run_id=self.run_id)

        async def poll() -> Lease | None:
            return await asyncio.to_thread(blocking_lease, store, self.key, holder, time.time())

        blocking: Lease | None = None
        policy = PollPolicy(interval_s=self.poll_interval_s, deadline_s=self.deadline_s)
        async for step in poll_loop(poll, policy, retry_on=(BackendError,)):
            if isinstance(step, Polled):
                blocking = step.value
                if blocking is None:
                    yield TriggerEvent(self._payload("free", None, None))
                    return
                self.log.info("endpoint %s still held by %s", self.key, blocking.describe())
            elif isinstance(step, Failed):
                self.log.warning("reading the lease of endpoint %s failed (%d in a row): %s", self.key,
                                 step.failures, step.error)
            elif isinstance(step, DeadlinePassed):
                error = None if step.last_error is None else str(step.last_error)
                yield TriggerEvent(self._payload("timeout", blocking, error))
                return

    def _payload(self, status: str, blocking: Lease | None, error: str | None) -> dict[str, Any]:
        return {"status": status, "key": self.key, "holder": blocking.to_dict() if blocking else None,
                "deadline_s": self.deadline_s, "waiting_since_s": self.waiting_since_s, "error": error}
