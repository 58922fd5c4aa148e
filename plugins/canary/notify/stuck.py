"""When a rollout counts as stuck: the sum of every deadline its spec sets, plus a margin. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from canary.spec import defaults
from canary.spec.durations import format_duration
from canary.spec.model import OnBusy, RolloutSpec


@dataclass(frozen=True, kw_only=True)
class StuckBudget:
    """How long a run of a spec may take before it counts as stuck, and what that time is made of."""

    lock_wait_s: float
    shadow_s: float
    stages_s: float
    margin_s: float

    @property
    def total_s(self) -> float:
        return self.lock_wait_s + self.shadow_s + self.stages_s + self.margin_s

    def explain(self) -> str:
        parts = [f"stage deadlines {format_duration(self.stages_s)}"]
        if self.shadow_s:
            parts.append(f"shadow test {format_duration(self.shadow_s)}")
        if self.lock_wait_s:
            parts.append(f"endpoint wait {format_duration(self.lock_wait_s)}")
        parts.append(f"margin {format_duration(self.margin_s)}")
        return " + ".join(parts)


def stuck_budget(spec: RolloutSpec) -> StuckBudget:
    """Return how long a run of ``spec`` may take: every deadline it has, plus a margin.

    The deadlines are each stage's ``max_duration``, the shadow test's ``max_duration`` (when enabled) and,
    with ``concurrency.on_busy: wait``, the wait for the endpoint (``max_wait``). Time a person takes over an
    approval is not in it: a run still waiting for one past the budget gets the alert as a reminder.
    """
    stages_s = sum(s.max_duration_s for s in spec.stages)
    shadow_s = spec.shadow.max_duration_s if spec.shadow.enabled else 0.0
    lock_wait_s = spec.concurrency.max_wait_s if spec.concurrency.on_busy is OnBusy.WAIT else 0.0
    margin_s = max(defaults.STUCK_MIN_MARGIN_S, defaults.STUCK_MARGIN_FRACTION * (stages_s + shadow_s + lock_wait_s))
    return StuckBudget(lock_wait_s=lock_wait_s, shadow_s=shadow_s, stages_s=stages_s, margin_s=margin_s)


__all__ = ["StuckBudget", "stuck_budget"]
