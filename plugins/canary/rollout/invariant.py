"""The fail-safe invariant, checked after every run whatever happened in it.

Either the candidate is fully promoted and recorded as such (all traffic on it, the registry's champion, a
history record saying promoted), or all traffic is on the stable version, the candidate is removed or at 0%,
the registry never names the candidate champion, and the run's record says rolled back or failed with the
reason. In both cases: no mirror and no targeting rule left on the endpoint, no lease still held by the run,
and the run's report kept in the history. Never a silent split.

:func:`invariant_violations` is the rule, a pure function of what was observed (table-tested);
:func:`observe_state` reads that from the backends and the history. The fault-injection tests and
``make faults`` run both after every fault.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from canary.backends.base import EndpointLock, Lease, ModelRegistry, TrafficRouter
from canary.history.model import RolloutRecord
from canary.history.store import RolloutHistory
from canary.policy.decisions import Outcome

#: Outcomes after which all traffic must be back on stable.
SAFE_ON_STABLE = frozenset({Outcome.ROLLED_BACK.value, Outcome.FAILED.value})


@dataclass(frozen=True, kw_only=True)
class ObservedState:
    """What the serving layer, the registry, the lease store and the history say after a run.

    ``weights`` is None when the serving layer could not be read (``serving_error`` says why): traffic may
    then be in any state, which the invariant never accepts.
    """

    weights: Mapping[str, int] | None
    serving_error: str | None = None
    mirror: str | None = None
    targeting: Mapping[str, Any] | None = None
    champion: str | None = None
    candidate_tags: Mapping[str, str] = field(default_factory=dict)
    lease: Lease | None = None
    record: RolloutRecord | None = None
    has_json_report: bool = False
    has_html_report: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights) if self.weights is not None else None,
                "serving_error": self.serving_error, "mirror": self.mirror,
                "targeting": dict(self.targeting) if self.targeting else None, "champion": self.champion,
                "candidate_tags": dict(self.candidate_tags),
                "lease": self.lease.to_dict() if self.lease else None,
                "outcome": self.record.outcome if self.record else None,
                "reason": self.record.outcome_reason if self.record else None,
                "reports": {"json": self.has_json_report, "html": self.has_html_report}}


def _split(weights: Mapping[str, int]) -> str:
    return ", ".join(f"{v} {w}%" for v, w in sorted(weights.items())) or "no version"


def invariant_violations(state: ObservedState, *, dag_id: str, run_id: str, stable: str, candidate: str,
                         now_s: float | None = None) -> list[str]:
    """Return every way ``state`` breaks the fail-safe invariant for the run (empty: it holds)."""
    now_s = time.time() if now_s is None else now_s
    problems: list[str] = []
    record = state.record
    outcome = record.outcome if record is not None else None
    if record is None:
        problems.append(f"no history record of {dag_id} run {run_id}")
    elif outcome is None:
        problems.append(f"the record of {dag_id} run {run_id} has no outcome: it still reads as running")
    elif outcome not in (*SAFE_ON_STABLE, Outcome.PROMOTED.value, Outcome.DRY_RUN.value):
        problems.append(f"the record's outcome {outcome!r} is not one of promoted, rolled_back, failed, dry_run")
    elif outcome in SAFE_ON_STABLE and not (record.outcome_reason or "").strip():
        problems.append(f"the record says {outcome} without a reason")

    weights = state.weights
    if weights is None:
        problems.append(f"the serving layer could not be read ({state.serving_error or 'no answer'}): traffic may "
                        "be split in any way")
    else:
        serving = {v: w for v, w in weights.items() if w}
        if outcome == Outcome.PROMOTED.value:
            if serving != {candidate: 100}:
                problems.append(f"promoted, but traffic is {_split(weights)} (expected {candidate} 100%)")
        elif outcome != Outcome.DRY_RUN.value and serving != {stable: 100}:
            # rolled back, failed, or no outcome at all: the only safe state is stable at 100%
            problems.append(f"{outcome or 'no outcome'}, but traffic is {_split(weights)} (expected {stable} 100%)")
    if state.mirror is not None:
        problems.append(f"a mirror to {state.mirror} is still set on the endpoint")
    if state.targeting:
        problems.append(f"a targeting rule is still set on the endpoint: {dict(state.targeting)}")

    if outcome == Outcome.PROMOTED.value and state.champion != candidate:
        problems.append(f"promoted, but the registry's champion is {state.champion!r} (expected {candidate!r})")
    if outcome != Outcome.PROMOTED.value and state.champion == candidate:
        problems.append(f"not promoted ({outcome or 'no outcome'}), but the registry's champion is the candidate "
                        f"{candidate!r}")
    if outcome == Outcome.ROLLED_BACK.value and state.candidate_tags.get("rollout.result") != "rolled_back":
        problems.append(f"rolled back, but the registry was not told: {candidate}'s rollout.result is "
                        f"{state.candidate_tags.get('rollout.result')!r}")

    lease = state.lease
    if lease is not None and lease.holder.dag_id == dag_id and lease.holder.run_id == run_id \
            and not lease.expired(now_s):
        problems.append(f"the run still holds the lease on {lease.key} ({lease.describe()})")
    if record is not None and outcome is not None and outcome != Outcome.DRY_RUN.value:
        missing = [kind for kind, kept in (("json", state.has_json_report), ("html", state.has_html_report))
                   if not kept]
        if missing:
            problems.append(f"the run's {' and '.join(missing)} report is not in the history")
    return problems


def observe_state(*, router: TrafficRouter, registry: ModelRegistry, lock: EndpointLock | None,
                  history: RolloutHistory, model: str, candidate: str, lease_key: str, dag_id: str,
                  run_id: str) -> ObservedState:
    """Read what the invariant is about from the backends and the history; unreadable serving is recorded."""
    weights: dict[str, int] | None
    mirror = targeting = serving_error = None
    try:
        weights = router.get_weights()
        state = getattr(router, "state", None)  # the embedded serving layer also shows mirror and targeting
        if callable(state):
            full = state()
            mirror = (full.get("mirror") or {}).get("version")
            targeting = full.get("targeting")
    except Exception as err:  # any failure to read is "traffic unknown", reported, never raised
        weights, serving_error = None, f"{type(err).__name__}: {err}"
    tags: Mapping[str, str] = {}
    get_tags = getattr(registry, "get_tags", None)
    if callable(get_tags):
        try:
            tags = get_tags(model, candidate)
        except Exception:  # a candidate the registry does not know has no tags
            tags = {}
    return ObservedState(
        weights=weights, serving_error=serving_error, mirror=mirror, targeting=targeting,
        champion=registry.champion(model), candidate_tags=tags,
        lease=lock.get(lease_key) if lock is not None else None, record=history.rollout(dag_id, run_id),
        has_json_report=history.report(dag_id, run_id, "json") is not None,
        has_html_report=history.report(dag_id, run_id, "html") is not None)


__all__ = ["SAFE_ON_STABLE", "ObservedState", "invariant_violations", "observe_state"]
