"""STAND-IN for the report renderer (issue 10's report work writes the real one; take that at merge).

Only the signature is the contract: :func:`render_html` ``(record, looks, events, *, report=None,
live=False, now_s=None) -> str``. This stand-in draws the least the Rollout tab needs: one sentence,
a table of the looks and (live) a self-refresh. No charts.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

from canary.history.model import Look, RolloutEvent, RolloutRecord
from canary.spec.durations import format_duration

#: Seconds between refreshes of a live page.
LIVE_REFRESH_S = 10


def render_html(record: RolloutRecord, looks: Sequence[Look], events: Sequence[RolloutEvent], *,
                report: Mapping[str, Any] | None = None, live: bool = False, now_s: float | None = None) -> str:
    """Return a whole HTML page for one rollout (stand-in: sentence and looks table)."""
    now = time.time() if now_s is None else now_s
    esc = html.escape
    if record.outcome is None:
        stage = looks[-1] if looks else None
        where = (f"stage {stage.stage_index + 1} at {stage.weight_pct}% canary" if stage else "starting")
        eta = f", about {format_duration(stage.eta_s)} to the decision" if stage and stage.eta_s else ""
        sentence = (f"Rolling out {record.model} {record.candidate} (stable {record.stable}): {where}{eta}; "
                    f"running for {format_duration(max(0.0, now - record.started_at_s))}.")
    else:
        took = format_duration(max(0.0, (record.finished_at_s or now) - record.started_at_s))
        sentence = (f"{record.outcome.replace('_', ' ').upper()} {record.model} {record.candidate} "
                    f"(stable {record.stable}) after {took}: {record.outcome_reason or 'no reason recorded'}.")
    rows = "".join(
        f"<tr><td>{lk.stage_index + 1}</td><td>{lk.weight_pct}%</td>"
        f"<td>{format_duration(lk.elapsed_s) if lk.elapsed_s is not None else '-'}</td>"
        f"<td>{esc(lk.decision)}</td><td>{esc(lk.reason)}</td></tr>" for lk in looks)
    refresh = f'<meta http-equiv="refresh" content="{LIVE_REFRESH_S}">' if live else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f"<title>Rollout {esc(record.model)} {esc(record.candidate)}</title></head><body>"
            f'<p class="summary" id="summary">{esc(sentence)}</p>'
            f'<table id="looks"><thead><tr><th>stage</th><th>weight</th><th>elapsed</th><th>decision</th>'
            f"<th>reason</th></tr></thead><tbody>{rows}</tbody></table>"
            f"<p>{len(events)} event(s) recorded.</p></body></html>")


__all__ = ["render_html"]
