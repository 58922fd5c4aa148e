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

from canary.errors import BackendError
from canary.observe import StageWatch, default_analyzer, poll_stage
from canary.phases import Decision, GateResult
from canary.spec import StageSpec, parse_spec

#: Consecutive failed polls after which the trigger reports HALT instead of retrying further.
MAX_CONSECUTIVE_BACKEND_ERRORS = 5


class CanaryObserveTrigger(BaseTrigger):
    """Poll a stage until the gate decides.

    :param spec: the frozen rollout spec (``model_dump(by_alias=True)``).
    :param stage: the stage spec (``model_dump(by_alias=True)``).
    :param watch: :class:`~canary.observe.StageWatch` as a dict.
    :param metrics: ``{"name", "conn_id", "options"}`` of the metrics backend.
    """

    def __init__(self, *, spec: dict[str, Any], stage: dict[str, Any], watch: dict[str, Any],
                 metrics: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.stage = stage
        self.watch = watch
        self.metrics = metrics

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"spec": self.spec, "stage": self.stage, "watch": self.watch, "metrics": self.metrics})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from canary_airflow.hooks import CanaryMetricsHook

        spec = parse_spec(self.spec, source="trigger kwargs")
        stage = StageSpec.model_validate(self.stage)
        watch = StageWatch.from_dict(self.watch)
        analyzer = default_analyzer()
        hook = CanaryMetricsHook(self.metrics["name"], self.metrics["conn_id"], **self.metrics.get("options", {}))
        source = await hook.aclient()
        polls, failures = 0, 0
        while True:
            try:
                result, state = await asyncio.to_thread(poll_stage, spec, stage, watch, source, analyzer=analyzer)
                failures = 0
            except BackendError as err:
                failures += 1
                self.log.warning("metrics poll %d failed (%d in a row): %s", polls + 1, failures, err)
                elapsed = time.time() - watch.stage_started_at_s
                if failures >= MAX_CONSECUTIVE_BACKEND_ERRORS or elapsed >= stage.max_duration_s:
                    result = GateResult(decision=Decision.HALT, metric="data",
                                        reason=f"metrics backend failing ({failures} polls in a row): {err}")
                    yield TriggerEvent(self._payload(result, watch.carry_state, polls))
                    return
                await asyncio.sleep(min(spec.analysis.poll_interval_s, 2.0**failures))
                continue
            polls += 1
            self.log.info("stage %d poll %d: %s (%s)", watch.stage_index + 1, polls, result.decision.value,
                          result.reason)
            if result.decision.is_terminal():
                yield TriggerEvent(self._payload(result, state, polls))
                return
            await asyncio.sleep(spec.analysis.poll_interval_s)

    def _payload(self, result: GateResult, state: Any, polls: int) -> dict[str, Any]:
        return {"stage_index": self.watch["stage_index"], "result": result.to_dict(),
                "state": dict(state) if state else None, "polls": polls}
