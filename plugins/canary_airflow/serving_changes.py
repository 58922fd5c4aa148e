"""Deferred waits for traffic changes that a serving backend applies asynchronously (SageMaker updates).

A rollout task that changes the split takes the router :func:`~canary.backends.without_waiting`, makes
its (idempotent) change, and checks once with :func:`~canary.backends.pending_change`. If the change
is still being applied, :func:`defer_while_changing` defers the task to :class:`ServingChangeTrigger`,
which polls the backend until the change has settled, failed, or timed out. The resumed task (a new
operator instance) runs its steps again from the start: every step is idempotent, so the finished ones
are no-ops and the next one runs. Routers that apply a change before answering (the embedded serving
layer) are always settled, so their tasks never defer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from canary.backends import PendingChange, TrafficRouter, pending_change
from canary.errors import BackendError, CanaryError, ChangeFailedError
from canary.spec import defaults
from canary_airflow.polling import DeadlinePassed, Failed, GaveUp, Polled, PollPolicy, poll_loop

#: Consecutive failed status checks after which the trigger gives up (each one is followed by a sleep).
MAX_CONSECUTIVE_CHECK_ERRORS = defaults.SERVING_CHANGE_MAX_CONSECUTIVE_ERRORS
#: Floor of every sleep between checks, so that no path can spin (e.g. a poll interval of 0).
MIN_CHECK_INTERVAL_S = defaults.POLL_MIN_SLEEP_S
#: Added to the change's own timeout for the deferral's timeout: the trigger reports the timeout itself.
DEFER_TIMEOUT_SLACK_S = 300.0
#: Event statuses; only ``settled`` lets the task go on.
SETTLED, FAILED, TIMEOUT, ERROR = "settled", "failed", "timeout", "error"


class ServingChangeError(RuntimeError):
    """A deferred wait for a serving change did not end settled.

    ``final`` is true when the backend says the change failed (waiting again will not help).
    """

    def __init__(self, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.final = final


def serving_ref(spec: Any) -> dict[str, Any]:
    """Return the JSON-able ``{"name", "conn_id", "options"}`` a trigger rebuilds the spec's router from."""
    ref = spec.backends.serving
    return {"name": ref.name, "conn_id": spec.backends.conn_id("serving"),
            "options": {"endpoint": spec.endpoint, **spec.backends.constructor_kwargs("serving")}}


def defer_while_changing(task: Any, router: TrafficRouter, serving: Mapping[str, Any], *,
                         method_name: str = "resume_after_serving_change") -> None:
    """Return if ``router`` has no change in progress; else defer ``task`` until it has settled.

    :param task: the operator to defer.
    :param router: the router that made the change (its last change defines "settled").
    :param serving: :func:`serving_ref` of the spec.
    :raises TaskDeferred: (through ``task.defer``) when the change is still being applied.
    :raises ChangeFailedError: when the backend already reports the change failed.
    """
    pending = pending_change(router)
    if pending is None:
        return
    task.log.info("%s is %s: deferring until the change has settled (checks every %gs, up to %gs)",
                  pending.resource, pending.state, pending.poll_interval_s, pending.timeout_s)
    task.defer(trigger=ServingChangeTrigger(serving=dict(serving), pending=pending.to_dict(),
                                            deadline_s=time.time() + pending.timeout_s),
               method_name=method_name,
               timeout=timedelta(seconds=pending.timeout_s + DEFER_TIMEOUT_SLACK_S))


def check_settled(event: Any) -> dict[str, Any]:
    """Validate a :class:`ServingChangeTrigger` event; return it if the change settled.

    :raises ServingChangeError: for a failed change (``final``), a timeout, an error, or a malformed event.
    """
    if not isinstance(event, dict) or event.get("status") not in (SETTLED, FAILED, TIMEOUT, ERROR):
        raise ServingChangeError(f"serving change trigger sent a malformed event: {event!r}", final=False)
    if event["status"] == SETTLED:
        return event
    raise ServingChangeError(str(event.get("message") or event["status"]), final=event["status"] == FAILED)


class ServingChangeTrigger(BaseTrigger):
    """Poll a serving backend until a traffic change has been applied.

    Stateless and idempotent: it only reads the backend's state, so a restarted trigger (or two copies
    of it) fires the same event. The deadline is absolute, so a restart does not extend the wait.

    :param serving: ``{"name", "conn_id", "options"}`` of the serving backend (:func:`serving_ref`).
    :param pending: :meth:`canary.backends.PendingChange.to_dict` of the change being waited for.
    :param deadline_s: epoch seconds after which the wait fails with a timeout.
    """

    def __init__(self, *, serving: dict[str, Any], pending: dict[str, Any], deadline_s: float) -> None:
        super().__init__()
        self.serving = serving
        self.pending = pending
        self.deadline_s = deadline_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"serving": self.serving, "pending": self.pending, "deadline_s": self.deadline_s})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from canary_airflow.hooks import CanaryServingHook

        pending = PendingChange.from_dict(self.pending)
        started_s = time.time()
        try:
            hook = CanaryServingHook(self.serving["name"], self.serving["conn_id"], **self.serving.get("options", {}))
            router = await hook.aclient()
        except CanaryError as err:
            yield self._event(ERROR, pending, f"cannot build the serving backend to check {pending.resource}: {err}",
                              started_s)
            return

        async def check() -> PendingChange | ChangeFailedError | None:
            try:
                return await asyncio.to_thread(pending_change, router, pending)
            except ChangeFailedError as err:  # final: waiting longer will not help
                return err

        policy = PollPolicy(interval_s=pending.poll_interval_s, deadline_s=self.deadline_s,
                            max_consecutive_errors=MAX_CONSECUTIVE_CHECK_ERRORS, min_sleep_s=MIN_CHECK_INTERVAL_S)
        checks, state = 0, pending.state
        try:
            async for step in poll_loop(check, policy, retry_on=(BackendError,)):
                if isinstance(step, Polled):
                    checks = step.polls
                    if isinstance(step.value, ChangeFailedError):
                        yield self._event(FAILED, pending, str(step.value), started_s, checks=checks)
                        return
                    if step.value is None:
                        yield self._event(SETTLED, pending, f"{pending.resource} settled", started_s, checks=checks)
                        return
                    state = step.value.state
                    self.log.info("%s still %s (check %d)", pending.resource, state, checks)
                elif isinstance(step, Failed):
                    self.log.warning("checking %s failed (%d in a row): %s", pending.resource, step.failures,
                                     step.error)
                elif isinstance(step, GaveUp):
                    yield self._event(ERROR, pending, f"could not check {pending.resource} "
                                                      f"({step.failures} failures in a row): {step.error}",
                                      started_s, checks=checks)
                    return
                elif isinstance(step, DeadlinePassed):
                    yield self._event(TIMEOUT, pending, f"{pending.resource} still {state} after "
                                                        f"{pending.timeout_s:g}s; raise the backend's wait_timeout_s "
                                                        "or check the endpoint", started_s, checks=checks)
                    return
        except Exception as err:  # a defect in the backend: checking again will not help, say what broke
            self.log.exception("checking %s raised an unexpected error", pending.resource)
            yield self._event(ERROR, pending, f"checking {pending.resource} raised an unexpected "
                                              f"{type(err).__name__}: {err}", started_s, checks=checks)

    @staticmethod
    def _event(status: str, pending: PendingChange, message: str, started_s: float, *,
               checks: int = 0) -> TriggerEvent:
        return TriggerEvent({"status": status, "resource": pending.resource, "message": message, "checks": checks,
                             "waited_s": round(time.time() - started_s, 3)})
