"""When a rollout counts as stuck. Pure.

Two views, each with its own alarm:

- the whole run outlives the sum of every deadline its spec sets, plus a margin (:func:`stuck_budget`:
  the rollout DAG's Deadline Alert, fired by the scheduler);
- a stage being observed shows no sign of life (no look recorded) for several poll intervals, or runs
  past its own deadline without a decision (:func:`find_stall`: the watchdog DAG, which runs as an
  ordinary task, so it also catches a triggerer that died with the observe triggers in it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

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


class StallKind(StrEnum):
    NO_LOOKS = "no_looks"  # nothing polled the stage for several poll intervals
    PAST_DEADLINE = "past_deadline"  # polled, but undecided well past the stage's max_duration


@dataclass(frozen=True, kw_only=True)
class Stall:
    """A stage under observation that shows no progress (what :func:`find_stall` found)."""

    kind: StallKind
    stage_index: int  # 0-based
    weight_pct: int
    stage_started_at_s: float
    last_look_at_s: float | None  # None: no look of this stage at all
    silent_s: float  # seconds since the last sign of life (the last look, else the traffic change)
    stage_running_s: float  # seconds since the stage's traffic change
    poll_interval_s: float
    missed_polls: int  # the spec's poll intervals without a look that count as a stall
    max_duration_s: float

    @property
    def key(self) -> str:
        """What the stall is about within its run: one alert per stage and kind."""
        return f"stage_{self.stage_index + 1}/{self.kind.value}"

    def explain(self) -> str:
        """One sentence (no final period): what is wrong, with the numbers."""
        stage = f"stage {self.stage_index + 1} ({self.weight_pct}%)"
        if self.kind is StallKind.NO_LOOKS:
            since = "since its traffic was set" if self.last_look_at_s is None else "since its last look"
            return (f"{stage} has had no look for {format_duration(self.silent_s)} {since}: it should be polled "
                    f"every {format_duration(self.poll_interval_s)} (alert after {self.missed_polls} missed polls)")
        return (f"{stage} is still undecided after {format_duration(self.stage_running_s)}, past its max_duration "
                f"of {format_duration(self.max_duration_s)}: the stage should have decided by its timeout policy")


def find_stall(spec: RolloutSpec, events: Sequence[tuple[str, int, float]], looks: Sequence[tuple[int, float]], *,
               now_s: float, missed_polls: int) -> Stall | None:
    """Return the stall of a running rollout's current stage, or None while it makes progress.

    A stage is under observation from its traffic change until its gate decides. It is stalled when no
    look has been recorded for ``missed_polls`` poll intervals (since the last look, or since the
    traffic change before the first), or when it is still undecided ``missed_polls`` poll intervals past
    its ``max_duration`` (when the stage must have decided by the spec's timeout policy). A stage
    waiting for a person (after its gate, before the next traffic change) is not observed: the run's
    Deadline Alert covers it.

    :param spec: the spec as frozen for the run.
    :param events: the run's ``(kind, stage_index, at_s)`` of its ``traffic`` and ``gate`` events (others ignored).
    :param looks: the run's recorded looks as ``(stage_index, look_at_s)``, any order.
    :param now_s: the time of the check.
    :param missed_polls: poll intervals without a look that make a stall (at least 1).
    """
    if missed_polls < 1:
        raise ValueError(f"missed_polls must be at least 1, got {missed_polls}")
    traffic = {stage: at_s for kind, stage, at_s in events if kind == "traffic"}
    decided = {stage for kind, stage, _ in events if kind == "gate"}
    observed = [stage for stage in traffic if stage not in decided and 0 <= stage < len(spec.stages)]
    if not observed:
        return None
    stage_index = max(observed)
    started_s = traffic[stage_index]
    stage = spec.stages[stage_index]
    poll_s = spec.analysis.poll_interval_s
    # Looks of an earlier try of the stage (cleared and run again) are older than its traffic change.
    times = [at_s for stage_of, at_s in looks if stage_of == stage_index and at_s >= started_s]
    last_look_s = max(times) if times else None
    silent_s = now_s - (last_look_s if last_look_s is not None else started_s)
    common = {"stage_index": stage_index, "weight_pct": stage.weight, "stage_started_at_s": started_s,
              "last_look_at_s": last_look_s, "silent_s": max(silent_s, 0.0),
              "stage_running_s": max(now_s - started_s, 0.0), "poll_interval_s": poll_s,
              "missed_polls": missed_polls, "max_duration_s": stage.max_duration_s}
    if silent_s > missed_polls * poll_s:
        return Stall(kind=StallKind.NO_LOOKS, **common)
    if now_s - started_s > stage.max_duration_s + missed_polls * poll_s:
        return Stall(kind=StallKind.PAST_DEADLINE, **common)
    return None


__all__ = ["Stall", "StallKind", "StuckBudget", "find_stall", "stuck_budget"]
