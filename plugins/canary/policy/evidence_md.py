"""The gate's evidence as a short Markdown table: what a person approving a held stage reads.

Pure: a gate result's dict (:meth:`canary.policy.decisions.GateResult.to_dict`) in, Markdown out. The
approval task's body pulls it from the gate's XCom (``evidence_md``), so the person deciding sees the
numbers the gate saw: each metric's e-value against its threshold, its confidence-sequence bounds
against the tolerance, the requests per version and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from canary.policy.decisions import label_of
from canary.spec.durations import format_duration

#: XCom key under which the gate task pushes the Markdown.
EVIDENCE_MD_XCOM_KEY = "evidence_md"


def _num(value: Any) -> str:
    """Format a number for reading: 3 significant digits, thousands separated, huge ones as ``1.2e9``."""
    x = _float(value)
    if x is None:
        return "-"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if abs(x) >= 1e6:
        mantissa, exponent = f"{x:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _fixed(value: Any, decimals: int = 2) -> str:
    """Format a ratio or a distance with fixed decimals (``1.04``), so bounds line up with the estimate."""
    x = _float(value)
    if x is None:
        return "-"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{decimals}f}"


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _count(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _cell(text: Any) -> str:
    """Make ``text`` safe inside one Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip() or "-"


def _test_cells(kind: str, ev: Mapping[str, Any]) -> tuple[str, str, str]:
    """Return (e-value vs threshold, estimate and bounds, tolerance) for one metric's evidence."""
    if "limit" in ev:  # a guardrail breach: the observed value against its absolute limit
        observed = ev.get("error_rate", ev.get("latency_p99_ms"))
        unit = " ms" if "latency_p99_ms" in ev else ""
        return "-", f"{_num(observed)}{unit}", f"limit {_num(ev['limit'])}{unit}"
    e = f"{_num(ev.get('e_value'))} / {_num(ev.get('threshold'))}" if "e_value" in ev else "-"
    if "tv_estimate" in ev:
        bounds = f"TV {_fixed(ev.get('tv_estimate'))} [{_fixed(ev.get('tv_lower'))}, {_fixed(ev.get('tv_upper'))}]"
        return e, bounds, f"≤ {_fixed(ev.get('tolerance'))}"
    if kind == "srm" or "observed_weight_pct" in ev:
        return e, (f"{_num(ev.get('observed_weight_pct'))}% observed vs "
                   f"{_num(ev.get('configured_weight_pct'))}% set"), "-"
    if "ratio_estimate" in ev:
        bounds = (f"ratio {_fixed(ev.get('ratio_estimate'))} "
                  f"[{_fixed(ev.get('ratio_lower'))}, {_fixed(ev.get('ratio_upper'))}]")
        return e, bounds, f"≤ {_fixed(ev.get('tolerance_ratio'))}"
    return e, "-", "-"


def gate_evidence_markdown(result: Mapping[str, Any], *, action: str | None = None,
                           action_reason: str | None = None) -> str:
    """Render one stage's gate result as Markdown: a headline, the requests, one row per metric.

    :param result: a gate result dict (``decision``, ``reason``, ``metric``, ``evidence``).
    :param action: what the gate does with it (``hold``, ``rollback``, ``next_stage``...), if known.
    :param action_reason: why, as the gate's policy says.
    """
    ev: Mapping[str, Any] = result.get("evidence") or {}
    stage = ev.get("stage")
    where = []
    if stage is not None:
        where.append(f"stage {stage}")
    if ev.get("weight_pct") is not None:
        where.append(f"at {ev['weight_pct']}% canary")
    if ev.get("elapsed_s") is not None:
        where.append(f"after {format_duration(float(ev['elapsed_s']))}")
    head = f"**Gate {' '.join(where) or 'result'}: {result.get('decision', '?')}"
    head += f" → {action}**" if action else "**"
    lines = [head, "", f"Why: {_cell(action_reason or result.get('reason') or '-')}"]
    if action_reason and result.get("reason") and action_reason != result.get("reason"):
        lines += ["", f"Gate decision: {_cell(result['reason'])}"]
    if result.get("warning"):
        lines += ["", f"Warning: {_cell(result['warning'])}"]
    if "canary_requests" in ev or "stable_requests" in ev:
        lines += ["", "| version | requests | errors |", "|---|---:|---:|",
                  f"| canary | {_count(ev.get('canary_requests'))} | {_count(ev.get('canary_errors'))} |",
                  f"| stable | {_count(ev.get('stable_requests'))} | {_count(ev.get('stable_errors'))} |"]
    metrics = ev.get("metrics") or []
    if metrics:
        lines += ["", "| metric | decision | e-value / threshold | estimate [bounds] | tolerance | reason |",
                  "|---|---|---:|---|---|---|"]
        for m in metrics:
            e, bounds, tolerance = _test_cells(str(m.get("kind", "")), m.get("evidence") or {})
            lines.append(f"| {_cell(label_of(m))} | {_cell(m.get('decision'))} | {e} | {bounds} | "
                         f"{tolerance} | {_cell(m.get('reason'))} |")
    elif not ev:
        lines += ["", "No evidence recorded for this look."]
    return "\n".join(lines) + "\n"


__all__ = ["EVIDENCE_MD_XCOM_KEY", "gate_evidence_markdown"]
