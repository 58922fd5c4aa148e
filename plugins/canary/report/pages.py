"""The Airflow UI's pages around the report: the Rollouts list and short notices (pure: values in, HTML out).

The pages are shown in an iframe of the Airflow UI (a ``nav`` view and a ``dag_run`` tab). That iframe
is sandboxed without ``allow-top-navigation``, so a plain ``target="_top"`` link cannot leave it: links
marked ``data-top`` are followed by moving the Airflow UI itself (its history, same origin), and fall
back to ``target="_top"`` when the page is opened on its own.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from canary.history.model import RolloutRecord
from canary.spec.durations import format_duration

#: Outcomes the list can be filtered by (``running``: not finished yet).
OUTCOME_FILTERS = ("running", "promoted", "rolled_back", "failed", "dry_run", "refused")

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;margin:16px;color:#1a202c}
h1{font-size:1.25rem;margin:0 0 8px}
p.summary{font-size:1rem;margin:0 0 12px}
form{margin:0 0 12px;display:flex;gap:12px;align-items:end;flex-wrap:wrap}
label{display:flex;flex-direction:column;font-size:.8rem;color:#4a5568}
select,button{font-size:.9rem;padding:3px 6px}
table{border-collapse:collapse;font-size:.85rem;width:100%}
th,td{border-bottom:1px solid #e2e8f0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f7fafc;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.outcome{font-weight:600}.promoted{color:#2f855a}.rolled_back,.failed,.refused{color:#c53030}
.running{color:#2b6cb0}.dry_run{color:#6b46c1}
"""

#: Follows ``a[data-top]`` in the Airflow UI around the iframe (see the module docstring).
_TOP_LINKS = """
document.addEventListener("click", function (e) {
  var a = e.target.closest ? e.target.closest("a[data-top]") : null;
  if (!a || window.top === window || e.ctrlKey || e.metaKey || e.shiftKey) return;
  try {
    var url = new URL(a.href);
    if (url.origin !== window.top.location.origin) return;
    window.top.history.pushState({}, "", url.pathname + url.search + url.hash);
    window.top.dispatchEvent(new PopStateEvent("popstate", {state: {}}));
    e.preventDefault();
  } catch (err) { /* not the same origin: let target=_top try */ }
});
"""


def _page(title: str, body: str, *, refresh_s: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>{body}<script>{_TOP_LINKS}</script></body></html>")


def format_time_utc(at_s: float | None) -> str:
    """Format an epoch time for reading: ``2026-12-02 10:15 UTC``."""
    if at_s is None:
        return "-"
    return datetime.fromtimestamp(at_s, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def outcome_label(outcome: str | None) -> str:
    """Return how an outcome reads (``rolled_back`` -> ``rolled back``; None -> ``running``)."""
    return "running" if outcome is None else outcome.replace("_", " ")


def duration_of(record: RolloutRecord, now_s: float) -> str:
    """Return the run's duration for reading; a running one counts up to ``now_s``."""
    end = record.finished_at_s if record.finished_at_s is not None else now_s
    return format_duration(max(0.0, end - record.started_at_s))


def notice_page(title: str, message: str, *, refresh_s: int | None = None) -> str:
    """Return a short page that says one thing (e.g. "This run is not a canary rollout")."""
    return _page(title, f"<h1>{html.escape(title)}</h1><p class=\"summary\">{html.escape(message)}</p>",
                 refresh_s=refresh_s)


def _options(values: Sequence[str], chosen: str | None, label: Callable[[str], str] = str) -> str:
    out = ['<option value="">all</option>']
    for v in values:
        selected = " selected" if v == chosen else ""
        out.append(f'<option value="{html.escape(v)}"{selected}>{html.escape(label(v))}</option>')
    return "".join(out)


def rollouts_page(records: Sequence[RolloutRecord], *, models: Sequence[str], run_href: Callable[[RolloutRecord], str],
                  model: str | None = None, outcome: str | None = None, now_s: float | None = None) -> str:
    """Return the Rollouts page: newest first, with a filter form (model, outcome) and a link per run.

    :param records: the runs to show, newest first, already filtered and limited to what the user may read.
    :param models: the models offered by the filter.
    :param run_href: the link to a run's Rollout tab.
    """
    now = time.time() if now_s is None else now_s
    esc = html.escape
    shown = len(records)
    running = sum(1 for r in records if r.running)
    promoted = sum(1 for r in records if r.outcome == "promoted")
    what = "rollout" if shown == 1 else "rollouts"
    filters = " and ".join(x for x in (f"model {model}" if model else "",
                                       f"outcome {outcome_label(outcome)}" if outcome else "") if x)
    if shown:
        summary = (f"{shown} {what}{' with ' + filters if filters else ''}, newest first: {promoted} promoted, "
                   f"{running} running, {shown - promoted - running} not promoted.")
    else:
        summary = f"No rollouts{' with ' + filters if filters else ''} yet that you may read."
    form = ('<form method="get" action="">'
            f'<label>model<select name="model">{_options(models, model)}</select></label>'
            f'<label>outcome<select name="outcome">{_options(OUTCOME_FILTERS, outcome, outcome_label)}</select>'
            '</label><button type="submit">Filter</button></form>')
    rows = []
    for r in records:
        label = outcome_label(r.outcome)
        reason = r.outcome_reason or r.reason or ""
        started_by = r.started_by.value.replace("_", " ") + (f" ({r.started_by_detail})" if r.started_by_detail
                                                              else "")
        planned = len(r.stages_planned)
        rows.append(
            f'<tr><td>{esc(format_time_utc(r.started_at_s))}</td><td>{esc(r.model)}</td>'
            f'<td><a data-top target="_top" href="{esc(run_href(r))}">{esc(r.candidate)}</a>'
            f"{' (dry run)' if r.dry_run else ''}</td><td>{esc(r.stable)}</td>"
            f'<td class="outcome {esc(r.outcome or "running")}">{esc(label)}</td>'
            f'<td class="num">{r.stages_reached}/{planned}</td><td class="num">{esc(duration_of(r, now))}</td>'
            f"<td>{esc(started_by)}</td><td>{esc(reason)}</td></tr>")
    table = ('<table id="rollouts"><thead><tr><th>started</th><th>model</th><th>candidate</th><th>stable</th>'
             '<th>outcome</th><th>stages</th><th>duration</th><th>started by</th><th>reason</th></tr></thead>'
             f"<tbody>{''.join(rows)}</tbody></table>") if rows else ""
    body = f'<h1>Rollouts</h1><p class="summary" id="summary">{esc(summary)}</p>{form}{table}'
    return _page("Rollouts", body, refresh_s=30 if running else None)


__all__ = ["OUTCOME_FILTERS", "duration_of", "format_time_utc", "notice_page", "outcome_label", "rollouts_page"]
