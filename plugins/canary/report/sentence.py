"""The one sentence at the top of a report: how the rollout ended (or where it stands) and why, with the
numbers that decided it.

Pure functions of literal values (a run's outcome, its looks as :class:`canary.history.Look`, the shadow
verdict, the spec's policy), table-tested in ``tests/canary/report/test_sentence.py``. The deciding look
is the last look whose gate decision ended a stage with something other than an advance; its evidence
(``GateResult.evidence``, see :mod:`canary.policy.gate`) carries the numbers quoted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from canary.history.model import Look
from canary.policy.decisions import label_of
from canary.report import format as fmt

#: Gate decisions that end a stage without advancing it.
STOPPING_DECISIONS = ("rollback", "halt", "timeout")


def assessment(look: Look | None, metric: str | None) -> Mapping[str, Any] | None:
    """Return the metric's assessment dict (``MetricAssessment.to_dict()``) in a look, or None."""
    if look is None or metric is None:
        return None
    for item in look.evidence.get("metrics") or ():
        if label_of(item) == metric:
            return item
    return None


def deciding_look(looks: Sequence[Look]) -> Look | None:
    """Return the last look that stopped a stage (rollback, halt or timeout), or None."""
    for look in reversed(looks):
        if look.decision in STOPPING_DECISIONS:
            return look
    return None


def last_look_per_stage(looks: Sequence[Look]) -> dict[int, Look]:
    """Return each stage's last look, by stage index (looks in time order)."""
    out: dict[int, Look] = {}
    for look in looks:
        out[look.stage_index] = look
    return dict(sorted(out.items()))


def _rate(events: Any, exposure: Any) -> float | None:
    try:
        return float(events) / float(exposure) if exposure else None
    except (TypeError, ValueError):
        return None


def _label_what(item: Mapping[str, Any]) -> str:
    """Name what a label test counts: ``error rate``, ``conversion rate``, ``latency_tail (share slower than 200 ms)``."""
    name, kind, ev = str(item.get("metric")), str(item.get("kind")), item.get("evidence") or {}
    where = f" in segment {item['segment']}" if item.get("segment") else ""
    if kind == "error_rate":
        return f"error rate{where}" if name == "error_rate" else f"{name}{where} (error rate)"
    if kind == "kpi":
        return f"{name} rate{where}"
    threshold = ev.get("threshold_ms")
    slower = f"share slower than {fmt.sig(threshold)} ms" if threshold is not None else "slow-request share"
    return f"{name}{where} ({slower})"


def _evidence_clause(ev: Mapping[str, Any]) -> str:
    return f"evidence {fmt.evalue(ev.get('e_value'))} against a threshold of {fmt.evalue(ev.get('threshold'))}"


def regression_phrase(item: Mapping[str, Any]) -> str:
    """Word the numbers behind a metric's ROLLBACK (or a sample-ratio mismatch's HALT)."""
    kind, name, ev = str(item.get("kind")), label_of(item), item.get("evidence") or {}
    test = ev.get("test")
    if kind == "srm" or test == "srm":
        where = f" in segment {item['segment']}" if item.get("segment") else ""
        return (f"traffic split{where} {fmt.pct_points(ev.get('observed_weight_pct'))} canary vs "
                f"{fmt.pct_points(ev.get('configured_weight_pct'))} configured (sample-ratio mismatch; "
                f"{_evidence_clause(ev)})")
    if test == "tv_confidence_sequence":
        return (f"{name}: prediction distribution moved, total-variation distance at least "
                f"{fmt.sig(ev.get('tv_lower'), 2)} (estimate {fmt.sig(ev.get('tv_estimate'), 2)}) against a "
                f"tolerance of {fmt.sig(ev.get('tolerance'), 2)}")
    if test == "msprt_mean_log_latency":
        return (f"{name}: geometric-mean latency {fmt.ratio(ev.get('ratio_estimate'))} stable's, at least "
                f"{fmt.ratio(ev.get('ratio_lower'))} ({fmt.confidence(ev.get('threshold'))} confidence sequence); "
                f"{_evidence_clause(ev)}")
    if test == "label":
        canary = _rate(ev.get("canary_events"), ev.get("canary_exposure"))
        stable = _rate(ev.get("stable_events"), ev.get("stable_exposure"))
        lower_is_harm = (ev.get("tolerance_ratio") or 2.0) < 1.0  # a KPI where higher is better
        bound = (f"ratio at most {fmt.ratio(ev.get('ratio_upper'))}" if lower_is_harm
                 else f"ratio at least {fmt.ratio(ev.get('ratio_lower'))}")
        stages = int(ev.get("stages") or 1)
        over = f" over {stages} stages" if stages > 1 else ""  # the test pools the stages: so do its rates
        return (f"{_label_what(item)} {fmt.pct(canary)} vs {fmt.pct(stable)} on stable{over}; {bound} "
                f"({fmt.confidence(ev.get('threshold'))} confidence sequence); {_evidence_clause(ev)}")
    return f"{name}: {item.get('reason', '')}".rstrip(": ")


def within_phrase(item: Mapping[str, Any]) -> str:
    """Word a metric's non-inferiority (ADVANCE) or where it stands (CONTINUE) in a few numbers."""
    name, ev = label_of(item), item.get("evidence") or {}
    test = ev.get("test")
    if test == "tv_confidence_sequence":
        return (f"{name} shift at most {fmt.sig(ev.get('tv_upper'), 2)}, "
                f"tolerance {fmt.sig(ev.get('tolerance'), 2)}")
    if test in ("label", "msprt_mean_log_latency"):
        lower_is_harm = (ev.get("tolerance_ratio") or 2.0) < 1.0
        bound = (f"at least {fmt.ratio(ev.get('ratio_lower'))}" if lower_is_harm
                 else f"at most {fmt.ratio(ev.get('ratio_upper'))}")
        label = "error rate" if item.get("metric") == "error_rate" else str(item.get("metric"))
        label += f" in segment {item['segment']}" if item.get("segment") else ""
        return f"{label} ratio {bound}, tolerance {fmt.ratio(ev.get('tolerance_ratio'))}"
    return f"{name}: {item.get('reason', '')}".rstrip(": ")


def waived(item: Mapping[str, Any]) -> bool:
    """Whether a segment's test says ADVANCE only because it need not show non-inferiority (still undecided)."""
    return item.get("decision") == "advance" and str(item.get("reason", "")).startswith("not required to advance")


def metric_phrase(item: Mapping[str, Any]) -> str:
    """Word a metric's latest verdict with its numbers (rollback, advance, or where it stands)."""
    decision = item.get("decision")
    if decision == "rollback" or (decision == "halt" and item.get("kind") == "srm"):
        return regression_phrase(item)
    if waived(item):
        return "not required to advance; " + _undecided_phrase(item)
    if decision == "advance" and item.get("kind") != "srm":
        return "within tolerance: " + within_phrase(item)
    if decision == "continue":
        return _undecided_phrase(item)
    return str(item.get("reason", ""))


def _where(look: Look, stages_planned: Sequence[int]) -> str:
    of = f" of {len(stages_planned)}" if stages_planned else ""
    return f"stage {look.stage_index + 1}{of} ({look.weight_pct}%)"


def _after(look: Look) -> str:
    requests = look.evidence.get("canary_requests")
    parts = []
    if look.elapsed_s is not None:
        parts.append(fmt.duration(look.elapsed_s))
    if requests is not None:
        parts.append(f"{fmt.count(requests)} canary requests")
    return f" after {' and '.join(parts)}" if parts else ""


def _guardrail_phrase(look: Look) -> str:
    ev = look.evidence
    if look.metric == "guardrail.max_error_rate":
        return (f"canary error rate {fmt.pct(ev.get('error_rate'))} above the {fmt.pct(ev.get('limit'))} guardrail "
                f"({fmt.count(ev.get('canary_errors'))} errors in {fmt.count(ev.get('canary_requests'))} requests)")
    return (f"canary p99 latency {fmt.sig(ev.get('latency_p99_ms'))} ms above the {fmt.sig(ev.get('limit'))} ms "
            "guardrail")


def _stopping_clause(look: Look) -> str:
    """Why the deciding look stopped its stage, with its numbers."""
    if look.metric and look.metric.startswith("guardrail."):
        return _guardrail_phrase(look)
    item = assessment(look, look.metric)
    if look.decision == "rollback" and item is not None:
        return regression_phrase(item)
    if look.decision == "halt":
        if item is not None and item.get("kind") == "srm":
            return regression_phrase(item)
        if item is not None:
            return f"{look.metric} could not be evaluated ({item.get('reason')})"
        return look.reason
    if look.decision == "timeout":
        pending = [m for m in look.evidence.get("metrics") or () if m.get("decision") == "continue"]
        shown = "; ".join(_undecided_phrase(m) for m in pending) or _after_colon(look.reason)
        return f"the stage deadline passed with {shown}"
    return look.reason


def _undecided_phrase(item: Mapping[str, Any]) -> str:
    name, ev = label_of(item), item.get("evidence") or {}
    if ev.get("test") == "tv_confidence_sequence":
        return (f"{name} undecided (TV between {fmt.sig(ev.get('tv_lower'), 2)} and "
                f"{fmt.sig(ev.get('tv_upper'), 2)}, tolerance {fmt.sig(ev.get('tolerance'), 2)})")
    if "ratio_upper" in ev or "ratio_lower" in ev:
        upper = ev.get("ratio_upper")
        return (f"{name} undecided (ratio between {fmt.ratio(ev.get('ratio_lower'))} and "
                f"{'∞' if upper is None else fmt.ratio(upper)}, tolerance {fmt.ratio(ev.get('tolerance_ratio'))})")
    return f"{name} undecided ({item.get('reason')})"


def _after_colon(text: str) -> str:
    return text.split(": ", 1)[1] if ": " in text else text


def _policy_clause(look: Look, outcome: str, policy: Mapping[str, Any]) -> str:
    if look.decision == "halt":
        return f"; {_traffic_back(outcome)} (on_halt: {policy.get('on_halt', 'rollback')})"
    if look.decision == "timeout":
        return f"; {_traffic_back(outcome)} (on_timeout: {policy.get('on_timeout', 'rollback')})"
    return ""


def _traffic_back(outcome: str) -> str:
    return "rolled back" if outcome == "rolled_back" else outcome.replace("_", " ")


def _stages_text(stages: Sequence[int]) -> str:
    return " → ".join(f"{w}%" for w in stages)


def _canary_total(looks: Sequence[Look]) -> int:
    return sum(int(look.evidence.get("canary_requests") or 0) for look in last_look_per_stage(looks).values())


def _shadow_sentence(shadow: Mapping[str, Any]) -> str:
    summary = shadow.get("summary") or {}
    pairs = summary.get("pairs")
    on = f" on {fmt.count(pairs)} mirrored requests" if pairs is not None else ""
    reasons = "; ".join(str(r) for r in shadow.get("reasons") or ()) or "no reason recorded"
    return f"Rolled back before any user was served: the shadow test failed{on}: {reasons}."


def outcome_sentence(*, outcome: str, reason: str, candidate: str, looks: Sequence[Look] = (),
                     stages_planned: Sequence[int] = (), shadow: Mapping[str, Any] | None = None,
                     duration_s: float | None = None, dry_run: bool = False,
                     policy: Mapping[str, Any] | None = None) -> str:
    """Say how a finished rollout ended and why, with the deciding numbers.

    :param outcome: the run's outcome (:class:`canary.policy.decisions.Outcome` values, or ``refused``).
    :param reason: the outcome's reason as ``finalize`` worded it.
    :param looks: the run's looks in time order (the journal, or the report's last look per stage).
    :param shadow: the shadow verdict (``ShadowVerdict.to_dict()``), if the shadow test ran.
    :param policy: the spec's ``policy`` section (``on_timeout``, ``on_halt``), for the words of a halt or timeout.
    """
    policy = policy or {}
    text = _outcome_text(outcome=outcome, reason=reason, candidate=candidate, looks=looks,
                         stages_planned=stages_planned, shadow=shadow, duration_s=duration_s, policy=policy)
    if dry_run and outcome != "dry_run":
        return f"Dry run (no traffic or registry state changed): {text[0].lower()}{text[1:]}"
    return text


def _outcome_text(*, outcome: str, reason: str, candidate: str, looks: Sequence[Look],
                  stages_planned: Sequence[int], shadow: Mapping[str, Any] | None, duration_s: float | None,
                  policy: Mapping[str, Any]) -> str:
    deciding = deciding_look(looks)
    if outcome in ("promoted", "dry_run"):
        verb = f"Promoted {candidate}" if outcome == "promoted" else f"Dry run of {candidate} passed"
        stages = last_look_per_stage(looks)
        n = len(stages) or len(stages_planned)
        plan = f" ({_stages_text(stages_planned)})" if stages_planned else ""
        took = f" in {fmt.duration(duration_s)}" if duration_s is not None else ""
        requests = _canary_total(looks)
        head = f"{verb} after {n} stage{'s' if n != 1 else ''}{plan}{took}"
        if requests:
            head += f" and {fmt.count(requests)} canary requests"
        compared = [look for look in stages.values() if look.evidence.get("metrics")]
        if compared:
            last = compared[-1]
            metrics = [m for m in last.evidence["metrics"] if m.get("kind") != "srm"]
            if metrics:
                head += (f": every metric within tolerance at {last.weight_pct}% ("
                         f"{'; '.join(within_phrase(m) for m in metrics)})")
        elif reason:
            head += f": {reason}"
        timed_out = [look for look in looks if look.decision == "timeout"]
        if timed_out:
            head += (f"; with a warning: stage {timed_out[-1].stage_index + 1} ({timed_out[-1].weight_pct}%) "
                     f"timed out undecided (on_timeout: {policy.get('on_timeout', 'promote_with_warning')})")
        if outcome == "dry_run":
            head += "; nothing was changed"
        return head + "."
    if outcome == "refused":
        return f"Refused before any traffic moved: {reason}."
    if outcome == "rolled_back":
        if deciding is not None:
            verb = {"rollback": "Rolled back", "halt": "Halted", "timeout": "Timed out"}[deciding.decision]
            after = "" if deciding.metric == "data" else _after(deciding)  # its reason says how long already
            return (f"{verb} at {deciding.weight_pct}%{after}: {_stopping_clause(deciding)}"
                    f"{_policy_clause(deciding, outcome, policy)}.")
        if shadow is not None and not shadow.get("passed", True):
            return _shadow_sentence(shadow)
        where = f" at {looks[-1].weight_pct}%" if looks else ""
        return f"Rolled back{where}: {reason}."
    if outcome == "failed":
        where = f" at stage {looks[-1].stage_index + 1} ({looks[-1].weight_pct}%)" if looks else ""
        return f"Failed{where}: {reason}."
    return f"{outcome.replace('_', ' ').capitalize()}: {reason}."


def running_sentence(*, looks: Sequence[Look], stages_planned: Sequence[int] = (), stage_started_s: float | None = None,
                     now_s: float | None = None) -> str:
    """Say where a running rollout stands: its stage, for how long, what the latest look shows, the ETA.

    ``stage_started_s`` and ``now_s`` make the time in the stage current between looks; without them
    the latest look's ``elapsed_s`` is used.
    """
    if not looks:
        plan = f" ({_stages_text(stages_planned)})" if stages_planned else ""
        return f"Starting{plan}: no look at the canary yet."
    look = looks[-1]
    elapsed = look.elapsed_s
    if stage_started_s is not None and now_s is not None:
        elapsed = max(now_s - stage_started_s, 0.0)
    head = f"Observing {_where(look, stages_planned)}"
    if elapsed is not None:
        head += f" for {fmt.duration(elapsed)}"
    ev = look.evidence
    facts = []
    if ev.get("canary_requests") is not None:
        facts.append(f"{fmt.count(ev.get('canary_requests'))} canary requests")
        if ev.get("canary_errors") is not None and ev.get("stable_requests"):
            facts.append(f"error rate {fmt.pct(_rate(ev.get('canary_errors'), ev.get('canary_requests')))} vs "
                         f"{fmt.pct(_rate(ev.get('stable_errors'), ev.get('stable_requests')))} on stable")
    text = f"{head}: {', '.join(facts) or look.reason}"
    if look.decision in STOPPING_DECISIONS or look.decision == "advance":
        text += f"; the gate decided {look.decision}: {look.reason}"
    elif look.eta_s is not None:
        text += f"; decision expected in about {fmt.duration(look.eta_s)}"
    elif facts:
        text += f"; {look.reason}"
    return text + "."


__all__ = ["STOPPING_DECISIONS", "assessment", "deciding_look", "last_look_per_stage", "metric_phrase",
           "outcome_sentence",
           "regression_phrase", "running_sentence", "within_phrase"]
