"""One rollout per endpoint in the Airflow layer: take, renew and release the endpoint's lease.

``validate_request`` takes the lease before any traffic moves (refusing, or deferring to
:class:`~canary_airflow.triggers.EndpointLeaseTrigger` while another rollout holds it); every later
step renews it (:func:`renew_lease`, called when a step reads the plan), the observe trigger renews it
at each poll, and ``finalize`` releases it once traffic is back on stable or the candidate is promoted.
Dry runs change nothing and take no lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from canary.backends.base import EndpointBusyError, EndpointLock, Lease, LeaseHolder, LeaseLostError
from canary.errors import RequestError
from canary.rollout.lease import endpoint_lease_key
from canary.rollout.plan import RolloutPlan
from canary.spec.durations import format_duration
from canary.spec.model import OnBusy, RolloutSpec
from canary_airflow.hooks import CanaryLockHook

#: How long the ``approve`` task waits for a person (its ``execution_timeout``); the gate extends the
#: lease over it, since nothing renews the lease while a rollout holds for approval.
APPROVAL_TIMEOUT_S = 24 * 3600.0
#: The wait trigger fires at its own deadline; the task's defer timeout only covers a stuck triggerer.
WAIT_TIMEOUT_SLACK_S = 300.0


def lock_ref(spec: RolloutSpec) -> dict[str, Any]:
    """Return the lock backend as JSON-able trigger kwargs: ``{"name", "conn_id", "options"}``."""
    ref = spec.backends.lock
    return {"name": ref.name, "conn_id": spec.backends.conn_id("lock"),
            "options": spec.backends.constructor_kwargs("lock")}


def lock_hook(spec: RolloutSpec) -> CanaryLockHook:
    ref = lock_ref(spec)
    return CanaryLockHook(ref["name"], ref["conn_id"], **ref["options"])


def lease_key(spec: RolloutSpec) -> str:
    """Return the spec's endpoint lease key: specs sharing serving backend and endpoint share it."""
    return endpoint_lease_key(spec.backends.serving.name, spec.endpoint)


def lease_holder(plan: RolloutPlan) -> LeaseHolder:
    return LeaseHolder(dag_id=plan.spec.dag_id, run_id=plan.run_id)


def observe_lease_kwargs(plan: RolloutPlan) -> dict[str, Any] | None:
    """Return what the observe trigger needs to renew the lease at every poll (None for a dry run)."""
    if plan.dry_run:
        return None
    holder = lease_holder(plan)
    return {"lock": lock_ref(plan.spec), "key": lease_key(plan.spec), "dag_id": holder.dag_id,
            "run_id": holder.run_id, "ttl_s": plan.spec.concurrency.lease_ttl_s}


def renew_lease(plan: RolloutPlan, *, ttl_s: float | None = None) -> Lease | None:
    """Renew the run's lease before a step moves traffic; fail the step if another rollout has it.

    :raises AirflowFailException: the lease was lost (it expired and another rollout took it, or it
        was broken with ``canary lock release``). A lock store error propagates, so the task retries.
    """
    if plan.dry_run:
        return None
    key = lease_key(plan.spec)
    try:
        return lock_hook(plan.spec).lock.renew(key, lease_holder(plan),
                                               ttl_s=ttl_s or plan.spec.concurrency.lease_ttl_s)
    except LeaseLostError as err:
        raise AirflowFailException(f"{err}: not touching the traffic of an endpoint another rollout owns "
                                   "(see `canary lock list`)") from err


class EndpointLeaseMixin:
    """Take the endpoint's lease in the first task; wait for it in the triggerer (``on_busy: wait``).

    The resumed task runs its ``execute`` again: it validates and resolves the request afresh (the
    rollout that held the endpoint may have moved the champion) and tries to take the lease; if another
    waiting rollout won the race it defers again, with the same deadline.
    """

    _lease_wait: dict[str, Any] | None = None
    #: When a fresh wait counts from (see :func:`wait_origin_s`); None: now.
    _wait_origin_s: float | None = None

    def take_endpoint(self, plan: RolloutPlan, replan: Callable[[], RolloutPlan], lock: EndpointLock) -> RolloutPlan:
        """Return the plan, resolved again under the lease; raise :class:`RequestError` when refused.

        :param plan: the plan resolved before taking the lease (its request was valid).
        :param replan: resolves the request again (called once the lease is held).
        :param lock: the spec's lease store, as the first task built it.
        """
        spec = plan.spec
        say: Callable[[RolloutPlan, str], None] = self.say  # type: ignore[attr-defined]
        if plan.dry_run:
            say(plan, "dry run: no endpoint lease taken (nothing will change)")
            return plan
        key, holder, concurrency = lease_key(spec), lease_holder(plan), spec.concurrency
        waited = self._lease_wait
        now = time.time()
        try:
            lock.acquire(key, holder, ttl_s=concurrency.lease_ttl_s)
        except EndpointBusyError as busy:
            if concurrency.on_busy is OnBusy.REFUSE:
                raise RequestError("concurrency.on_busy", f"{busy}; refused (on_busy: refuse): start it again "
                                   "once that rollout finished, or set concurrency.on_busy: wait") from busy
            since = float(waited["waiting_since_s"]) if waited else min(now, self._wait_origin_s or now)
            deadline = float(waited["deadline_s"]) if waited else since + concurrency.max_wait_s
            if now >= deadline or (waited and waited.get("status") == "timeout"):
                raise RequestError("concurrency.max_wait", _timeout_message(
                    key, {**(waited or {}), "holder": busy.lease.to_dict()}, concurrency.max_wait_s)) from busy
            say(plan, f"waiting for endpoint {key}: held by {busy.lease.describe()} "
                      f"(up to {format_duration(deadline - now)} more, concurrency.max_wait)")
            from canary_airflow.triggers import EndpointLeaseTrigger

            self.defer(  # type: ignore[attr-defined]
                trigger=EndpointLeaseTrigger(lock=lock_ref(spec), key=key, dag_id=holder.dag_id,
                                             run_id=holder.run_id, deadline_s=deadline, waiting_since_s=since,
                                             poll_interval_s=concurrency.poll_interval_s),
                method_name="resume_after_lease_wait",
                timeout=timedelta(seconds=deadline - now + WAIT_TIMEOUT_SLACK_S),
            )
        try:
            fresh = replan()  # under the lease: the champion cannot move any more
        except RequestError:
            lock.release(key, holder)
            raise
        waited_s = now - float(waited["waiting_since_s"]) if waited else 0.0
        say(fresh, f"took the lease on endpoint {key}" + (f" after waiting {format_duration(waited_s)}"
                                                          if waited_s >= 1 else ""))
        return fresh

    def resume_after_lease_wait(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Resume after the wait trigger fired: validate its event, then run the first task again."""
        if not isinstance(event, dict) or event.get("status") not in ("free", "timeout") \
                or "deadline_s" not in event or "waiting_since_s" not in event:
            raise AirflowFailException(f"endpoint lease trigger sent a malformed event: {event!r}")
        self._lease_wait = event
        return self.execute(context)  # type: ignore[attr-defined]


def wait_origin_s(context: Any) -> float | None:
    """When a wait for the endpoint counts from: None (now) on the first try; on a retry, when the run
    started, so that retrying the first task never grants a fresh ``concurrency.max_wait``."""
    ti, run = context.get("ti"), context.get("dag_run")
    start = getattr(run, "start_date", None)
    if ti is None or start is None or int(getattr(ti, "try_number", 1) or 1) <= 1:
        return None
    return start.timestamp()


def _timeout_message(key: str, waited: dict[str, Any], max_wait_s: float) -> str:
    holder = waited.get("holder")
    who = Lease.from_dict(holder).describe() if holder else "another rollout"
    error = f" (last lock store error: {waited['error']})" if waited.get("error") else ""
    return (f"waited {format_duration(max_wait_s)} for endpoint {key}, still held by {who}{error}; "
            "start it again later or raise concurrency.max_wait")


__all__ = ["APPROVAL_TIMEOUT_S", "EndpointLeaseMixin", "lease_holder", "lease_key", "lock_hook", "lock_ref",
           "observe_lease_kwargs", "renew_lease", "wait_origin_s"]
