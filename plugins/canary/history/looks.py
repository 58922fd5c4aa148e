"""A look from a gate result, and the one line the observe task log prints for it.

Pure: the observe sensor (first check, poke mode) and its trigger (every poll) build the same
:class:`~canary.history.model.Look` (through :func:`canary.rollout.observe.look_of_poll`) and print the
same line, so the log, the history and the report say the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from canary.history.model import Look
from canary.policy.decisions import GateResult, label_of
from canary.spec.durations import format_duration


def make_look(*, dag_id: str, run_id: str, stage_index: int, look_at_s: float, weight_pct: int,
              result: GateResult, eta_s: float | None) -> Look:
    """Return the look of one poll (``look_at_s``: the poll's clock, the look's identity)."""
    elapsed = result.evidence.get("elapsed_s")
    return Look(dag_id=dag_id, run_id=run_id, stage_index=stage_index, look_at_s=look_at_s, weight_pct=weight_pct,
                decision=result.decision.value, reason=result.reason, metric=result.metric,
                elapsed_s=None if elapsed is None else float(elapsed), eta_s=eta_s, evidence=dict(result.evidence))


def stage_title(stage_index: int, weight_pct: int) -> str:
    """Return the title of a stage's log group, e.g. ``stage 2 at 25% canary: looks``."""
    return f"stage {stage_index + 1} at {weight_pct}% canary: looks"


def _num(x: Any) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    if x != x:  # nan
        return "n/a"
    if abs(x) >= 1e4 or (0 < abs(x) < 1e-3):
        return f"{x:.2g}"
    return f"{x:.3g}"


def _metric_part(m: Mapping[str, Any]) -> str:
    ev = m.get("evidence") or {}
    name = label_of(m) if m.get("metric") else "?"
    bits = []
    if ev.get("test") == "srm":
        observed = ev.get("observed_weight_pct")
        bits.append(f"e {_num(ev.get('e_value'))}/{_num(ev.get('threshold'))}")
        if observed is not None:
            bits.append(f"observed {observed:.1f}% vs {ev.get('configured_weight_pct')}%")
    elif "tv_estimate" in ev:
        bits.append(f"TV {_num(ev.get('tv_estimate'))} CS [{_num(ev.get('tv_lower'))}, {_num(ev.get('tv_upper'))}]"
                    f" tol {_num(ev.get('tolerance'))}")
    else:
        if "e_value" in ev or "threshold" in ev:
            bits.append(f"e {_num(ev.get('e_value'))}/{_num(ev.get('threshold'))}")
        if "ratio_upper" in ev or "ratio_lower" in ev:
            # An unbounded upper end is stored as None (JSON has no infinity).
            upper = "inf" if ev.get("ratio_upper") is None else _num(ev.get("ratio_upper"))
            bits.append(f"ratio {_num(ev.get('ratio_estimate'))} CS [{_num(ev.get('ratio_lower'))}, {upper}] "
                        f"tol {_num(ev.get('tolerance_ratio'))}")
    decision = str(m.get("decision", "")).upper()
    return f"{name} {decision}" + (f" {' '.join(bits)}" if bits else "")


def look_line(look: Look) -> str:
    """Return one readable line for the observe log, e.g.

    ``10:04:05 stage 2 (25%) at 3m10s: canary 97 req 4 err (24.6% observed), stable 297 req 3 err |
    error_rate CONTINUE e 3.1/200 ratio 1.3 CS [0.81, 2.1] tol 1.25 | srm ADVANCE e 0.4/1e+03 | ETA 4m10s |
    CONTINUE: observing: error_rate``
    """
    ev = look.evidence
    at = datetime.fromtimestamp(look.look_at_s, UTC).strftime("%H:%M:%S")
    head = f"{at} stage {look.stage_index + 1} ({look.weight_pct}%)"
    if look.elapsed_s is not None:
        head += f" at {format_duration(look.elapsed_s)}"
    parts = [head]
    if ev.get("canary_requests") is not None:
        share = look.observed_weight_pct
        traffic = (f"canary {ev['canary_requests']} req {ev.get('canary_errors', 0)} err"
                   + (f" ({share:.1f}% observed)" if share is not None else "")
                   + f", stable {ev.get('stable_requests', 0)} req {ev.get('stable_errors', 0)} err")
        parts[0] += f": {traffic}"
    parts += [_metric_part(m) for m in ev.get("metrics") or ()]
    if look.decision == "continue":
        parts.append("ETA " + ("unknown" if look.eta_s is None else format_duration(look.eta_s)))
    parts.append(f"{look.decision.upper()}: {look.reason}")
    return " | ".join(parts)


__all__ = ["look_line", "make_look", "stage_title"]
