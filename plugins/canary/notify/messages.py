"""What a rollout tells people: a subject and one or two lines (what happened, why, with the deciding
numbers), and a link to the run's rollout tab in the Airflow UI. Pure: the Airflow layer sends them.

Subjects are ASCII and one line (SNS refuses anything else); every notice also carries small JSON-able
``facts`` (model, versions, run, stage, decision) for receivers that are programs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from canary.notify.stuck import Stall, StallKind, StuckBudget
from canary.policy.decisions import Action, Decision, GateResult, Outcome
from canary.spec.durations import format_duration
from canary.spec.model import NotifyEvent

#: The rollout tab (the plugin's ``external_views`` entry) of a DAG run in the Airflow UI.
ROLLOUT_TAB = "rollout"


def rollout_url(base_url: str, dag_id: str, run_id: str) -> str:
    """Return the rollout tab of one DAG run: ``<base_url>/dags/<dag_id>/runs/<run_id>/plugin/rollout``."""
    return f"{base_url.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/plugin/{ROLLOUT_TAB}"


@dataclass(frozen=True, kw_only=True)
class RunRef:
    """Which rollout run a notice is about, and where people look at it."""

    model: str
    dag_id: str
    run_id: str
    base_url: str
    candidate: str | None = None
    stable: str | None = None
    dry_run: bool = False

    @property
    def link(self) -> str:
        return rollout_url(self.base_url, self.dag_id, self.run_id)

    @property
    def version(self) -> str:
        return self.candidate or "the candidate"

    def facts(self) -> dict[str, Any]:
        return {"model": self.model, "candidate": self.candidate, "stable": self.stable, "dag_id": self.dag_id,
                "run_id": self.run_id, "dry_run": self.dry_run}


@dataclass(frozen=True, kw_only=True)
class Notice:
    """One thing people are told. ``events`` are what it stands for, the most specific first."""

    events: tuple[NotifyEvent, ...]
    subject: str
    lines: tuple[str, ...]
    link: str
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def event(self) -> NotifyEvent:
        return self.events[0]

    def text(self) -> str:
        """Return the notice as plain text: the lines, then the link."""
        return "\n".join([*self.lines, f"Details: {self.link}"])

    def payload(self) -> dict[str, Any]:
        """Return the notice as one JSON object (``text`` is what chat webhooks show)."""
        return {"event": self.event.value, "events": [e.value for e in self.events], "subject": self.subject,
                "text": f"{self.subject}\n{self.text()}", "lines": list(self.lines), "link": self.link,
                **self.facts}


# -- numbers for reading ------------------------------------------------------------------------------

def format_pct(rate: float) -> str:
    """Format a rate in [0, 1] as a percentage for reading: ``0.094`` -> ``9.4%``, ``0.0004`` -> ``0.04%``."""
    pct = rate * 100
    if pct == 0:
        return "0%"
    if abs(pct) < 0.1:
        return f"{pct:.2f}%"
    return f"{pct:.1f}%"


def format_count(n: float) -> str:
    return f"{int(n):,}"


def _rate(errors: Any, requests: Any, *, unit: str = "") -> str | None:
    if not isinstance(errors, int | float) or not isinstance(requests, int | float) or requests <= 0:
        return None
    return f"{format_pct(errors / requests)}{unit} ({format_count(errors)}/{format_count(requests)})"


def evidence_line(evidence: Mapping[str, Any]) -> str | None:
    """Return the headline numbers of a gate's evidence, e.g. ``canary 4.1% errors (82/2,000) vs stable ...``."""
    canary = _rate(evidence.get("canary_errors"), evidence.get("canary_requests"), unit=" errors")
    if canary is None:
        return None
    stable = _rate(evidence.get("stable_errors"), evidence.get("stable_requests"))
    line = f"Canary {canary}" + (f" vs stable {stable}" if stable else "")
    elapsed_s = evidence.get("elapsed_s")
    if isinstance(elapsed_s, int | float):
        line += f" after {format_duration(elapsed_s)}"
    return line + "."


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\n", " ")


def _subject(ref: RunRef, what: str) -> str:
    prefix = "[dry run] " if ref.dry_run else ""
    return _ascii(f"{prefix}{ref.model}: {what}")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def _cap(text: str) -> str:
    """Capitalise a sentence that starts with a word (not with a metric name such as ``error_rate``)."""
    first = text.split(" ", 1)[0].rstrip(":,")
    return text[:1].upper() + text[1:] if first.isalpha() else text


# -- the notices ----------------------------------------------------------------------------------------

def started(ref: RunRef, weights_pct: Sequence[int], *, reason: str = "") -> Notice:
    """The plan is frozen and traffic is about to move."""
    lines = [f"Rolling out {ref.version} against champion {ref.stable}: "
             f"{' -> '.join(f'{w}%' for w in weights_pct)} canary traffic."]
    if reason:
        lines.append(f"Reason: {_sentence(reason)}")
    return Notice(events=(NotifyEvent.STARTED,), subject=_subject(ref, f"rollout of {ref.version} started"),
                  lines=tuple(lines), link=ref.link, facts={**ref.facts(), "stages": list(weights_pct)})


def refused(ref: RunRef, reason: str) -> Notice:
    """The first task refused the run: nothing changed."""
    return Notice(events=(NotifyEvent.FAILED,), subject=_subject(ref, f"rollout of {ref.version} refused"),
                  lines=(f"Refused before any traffic moved: {_sentence(reason)}",), link=ref.link,
                  facts={**ref.facts(), "outcome": "refused", "reason": reason})


def gate_events(decision: Decision, action: Action) -> tuple[NotifyEvent, ...]:
    """Return what a gate's choice stands for, the most specific first (every choice is a stage decision)."""
    events: list[NotifyEvent] = []
    if action is Action.HOLD:
        events.append(NotifyEvent.APPROVAL_NEEDED)
    if decision is Decision.HALT:
        events.append(NotifyEvent.HALTED)
    return (*events, NotifyEvent.STAGE_DECIDED)


def gate_decided(ref: RunRef, *, stage_index: int, stage_count: int, weight_pct: int, result: GateResult,
                 action: Action, why: str) -> Notice:
    """A stage's gate chose the next step: ``why`` is the gate's reason (with the policy applied)."""
    stage = f"stage {stage_index + 1} of {stage_count} ({weight_pct}%)"
    halted = result.decision is Decision.HALT
    if action is Action.HOLD:
        what, next_step = f"{stage} needs approval", "Approve or reject it in the run's approve task."
    elif action is Action.ROLLBACK:
        what = f"{stage} {'halted' if halted else 'failed'}, rolling back {ref.version}"
        next_step = f"All traffic returns to {ref.stable}."
    elif action is Action.PROMOTE:
        what, next_step = f"{stage} passed, promoting {ref.version}", None
    elif result.decision.is_terminal():
        what, next_step = f"{stage} passed, moving to stage {stage_index + 2}", None
    else:  # a dry run that would have kept observing
        what, next_step = f"{stage} undecided, moving on (dry run)", None
    lines = [_cap(_sentence(why))]
    numbers = evidence_line(result.evidence)
    if numbers:
        lines.append(numbers + (f" {next_step}" if next_step else ""))
    elif next_step:
        lines.append(next_step)
    return Notice(events=gate_events(result.decision, action), subject=_subject(ref, what), lines=tuple(lines),
                  link=ref.link, facts={**ref.facts(), "stage": stage_index + 1, "weight_pct": weight_pct,
                                        "decision": result.decision.value, "action": action.value,
                                        "metric": result.metric, "reason": why})


_OUTCOME_EVENTS = {
    Outcome.PROMOTED: NotifyEvent.PROMOTED,
    Outcome.DRY_RUN: NotifyEvent.PROMOTED,  # a dry run that would have promoted
    Outcome.ROLLED_BACK: NotifyEvent.ROLLED_BACK,
    Outcome.FAILED: NotifyEvent.FAILED,
}


def finished(ref: RunRef, outcome: Outcome, reason: str) -> Notice:
    """``finalize`` settled the run: promoted, rolled back or failed (traffic on stable)."""
    why = f"Why: {_sentence(reason)}"
    if outcome is Outcome.PROMOTED:
        what, line = f"{ref.version} promoted", f"{ref.version} is the champion now; {ref.stable} is retired."
    elif outcome is Outcome.DRY_RUN:
        what, line = f"{ref.version} would be promoted", "Dry run: no traffic or registry state was changed."
    elif outcome is Outcome.ROLLED_BACK:
        what, line = f"{ref.version} rolled back", f"All traffic is back on {ref.stable}."
    else:
        what, line = f"rollout of {ref.version} failed", f"Traffic was returned to {ref.stable} unless another " \
                                                         "rollout owns the endpoint."
    return Notice(events=(_OUTCOME_EVENTS[outcome],), subject=_subject(ref, what), lines=(line, why),
                  link=ref.link, facts={**ref.facts(), "outcome": outcome.value, "reason": reason})


# -- the stuck-rollout alert ----------------------------------------------------------------------------

def stuck(ref: RunRef, budget: StuckBudget) -> Notice:
    """The run is still going past its budget (the Deadline Alert fired)."""
    return Notice(events=(NotifyEvent.STUCK,),
                  subject=_subject(ref, f"rollout of {ref.version} still running after "
                                        f"{format_duration(budget.total_s)}"),
                  lines=(f"It should have ended within {format_duration(budget.total_s)} ({budget.explain()}).",
                         "Check its current task: a stalled triggerer, a pending approval or a serving change "
                         "that does not settle."),
                  link=ref.link, facts={**ref.facts(), "stuck_after_s": budget.total_s})


def stalled(ref: RunRef, stall: Stall) -> Notice:
    """A stage under observation shows no progress (the watchdog found it)."""
    where = f"stage {stall.stage_index + 1} ({stall.weight_pct}%)"
    if stall.kind is StallKind.NO_LOOKS:
        what = f"rollout of {ref.version} stalled at {where}: no look for {format_duration(stall.silent_s)}"
        check = ("Check that a triggerer is running (airflow jobs check --job-type TriggererJob) and the "
                 "observe task's log; traffic stays as it is until the stage decides.")
    else:
        what = f"rollout of {ref.version} undecided at {where} past its deadline"
        check = "Check the observe and gate tasks of that stage; traffic stays as it is until the stage decides."
    return Notice(events=(NotifyEvent.STUCK,), subject=_subject(ref, what),
                  lines=(_cap(_sentence(stall.explain())), check), link=ref.link,
                  facts={**ref.facts(), "stage": stall.stage_index + 1, "weight_pct": stall.weight_pct,
                         "stall": stall.kind.value, "silent_s": round(stall.silent_s, 3),
                         "last_look_at_s": stall.last_look_at_s})


__all__ = ["ROLLOUT_TAB", "Notice", "RunRef", "evidence_line", "finished", "format_count", "format_pct",
           "gate_decided", "gate_events", "refused", "rollout_url", "stalled", "started", "stuck"]
