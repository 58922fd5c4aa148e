"""The rollout page: one self-contained HTML document, live while a rollout runs and final after it.

:func:`render_html` takes what the history keeps (:class:`canary.history.RolloutRecord`, its looks and
events) and, optionally, the JSON report (for the shadow verdict when no ``shadow`` event holds it). The
page reads top-down: one sentence (outcome and why, with the deciding numbers), the traffic chart, per
metric its charts, then tables (stages, the sample-ratio check, the shadow test, approvals) and the spec
as frozen for the run. Everything is inline (CSS and SVG); nothing is loaded from a URL and there is no
script, so the file opens anywhere, offline, and the same function serves the live UI tab (``live=True``:
a ``<meta http-equiv="refresh">``) and the final report. Every value is escaped (Jinja2 autoescape).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from canary.history.model import Look, RolloutEvent, RolloutRecord
from canary.report import format as fmt
from canary.report.sentence import (
    assessment,
    last_look_per_stage,
    metric_phrase,
    outcome_sentence,
    running_sentence,
    waived,
)

#: Seconds between refreshes of a live page unless the spec's poll interval says otherwise.
DEFAULT_REFRESH_S = 10
#: A live page never refreshes more often than this.
MIN_REFRESH_S = 3

OUTCOME_STYLE = {"promoted": "good", "dry_run": "good", "rolled_back": "bad", "failed": "bad", "refused": "bad",
                 None: "live"}

_CSS = """
:root { --fg:#212529; --muted:#6c757d; --line:#dee2e6; --good:#2b8a3e; --bad:#c92a2a; --live:#1c7ed6;
        --warn:#e67700; --bg-soft:#f8f9fa; }
* { box-sizing: border-box; }
body { font-family: "Liberation Sans", Arial, Helvetica, sans-serif; color: var(--fg); margin: 0;
       background: #fff; font-size: 14px; line-height: 1.45; }
main { max-width: 1060px; margin: 0 auto; padding: 20px 24px 40px; }
header { border-bottom: 1px solid var(--line); padding-bottom: 10px; margin-bottom: 14px; }
h1 { font-size: 20px; margin: 0 0 4px; font-weight: 600; }
h2 { font-size: 16px; margin: 26px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 14px; margin: 16px 0 4px; }
.meta { color: var(--muted); font-size: 13px; }
.meta span + span::before { content: " · "; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; color: #fff; font-size: 12px;
         font-weight: 700; letter-spacing: .03em; vertical-align: 3px; margin-left: 6px; }
.badge.good { background: var(--good); } .badge.bad { background: var(--bad); } .badge.live { background: var(--live); }
.sentence { font-size: 17px; line-height: 1.5; padding: 12px 16px; border-left: 5px solid var(--live);
            background: var(--bg-soft); margin: 8px 0 6px; }
.sentence.good { border-color: var(--good); } .sentence.bad { border-color: var(--bad); }
.live-box { display: flex; gap: 28px; margin: 10px 0; padding: 8px 16px; border: 1px solid var(--line);
            border-radius: 6px; }
.live-box div b { display: block; font-size: 18px; }
.live-box div { color: var(--muted); font-size: 12px; }
.live-box div b { color: var(--fg); }
.chart svg { max-width: 100%; height: auto; }
.row { display: flex; flex-wrap: wrap; gap: 6px 10px; }
.verdict { color: var(--muted); font-size: 13px; margin: 0 0 4px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 4px 0 8px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--bg-soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.d-advance, .pass { color: var(--good); font-weight: 600; } .d-rollback, .fail { color: var(--bad); font-weight: 600; }
.d-halt, .d-timeout { color: var(--warn); font-weight: 600; } .d-continue { color: var(--muted); }
code { font-size: 12px; background: var(--bg-soft); padding: 0 3px; border-radius: 3px; }
details { margin-top: 8px; } summary { cursor: pointer; color: var(--muted); }
pre { background: var(--bg-soft); padding: 10px; overflow-x: auto; font-size: 12px; border-radius: 4px; }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; }
.empty { color: var(--muted); font-style: italic; }
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{% if refresh_s %}<meta http-equiv="refresh" content="{{ refresh_s }}">{% endif %}
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
<main>
<header>
  <h1>{{ record.model }} {{ record.candidate }} <span class="meta">vs stable {{ record.stable }}</span>
    <span class="badge {{ tone }}">{{ badge }}</span></h1>
  <div class="meta">{% for item in meta %}<span>{{ item }}</span>{% endfor %}</div>
</header>
<p class="sentence {{ tone }}" id="sentence">{{ sentence }}</p>
{% if live_facts %}
<div class="live-box" id="live">{% for label, value in live_facts %}<div>{{ label }}<b>{{ value }}</b></div>{% endfor %}
</div>
{% endif %}
{% if traffic_svg %}
<section id="traffic"><div class="chart">{{ traffic_svg }}</div></section>
{% endif %}
{% if metrics %}
<h2>Metrics</h2>
{% for m in metrics %}
<section class="metric" id="metric-{{ m.slug }}">
  <h3>{{ m.name }}{% if m.kind != m.name %} <span class="meta">{{ m.kind.replace("_", " ") }}</span>{% endif %}</h3>
  <p class="verdict">latest verdict: <span class="d-{{ m.decision }}">{{ m.decision }}</span> · {{ m.reason }}</p>
  <div class="row">{% for svg in m.svgs %}<div class="chart">{{ svg }}</div>{% endfor %}</div>
</section>
{% endfor %}
{% endif %}
{% if segments %}
<h2>Segments</h2>
<table id="segments"><thead><tr><th>stage</th><th>segment</th><th>test</th><th class="num">share of canary requests</th>
<th>required to advance</th><th>verdict</th><th>numbers</th></tr></thead><tbody>
{% for r in segments %}<tr><td>{{ r.stage }}</td><td>{{ r.segment }}</td><td>{{ r.test }}</td><td class="num">{{ r.share }}</td>
<td>{{ r.required }}</td><td class="d-{{ r.decision }}">{{ r.decision }}</td><td>{{ r.numbers }}</td></tr>{% endfor %}
</tbody></table>
{% endif %}
<h2>Stages</h2>
{% if stages %}
<table id="stages"><thead><tr><th>stage</th><th class="num">canary</th><th>started</th><th class="num">time in stage</th>
<th class="num">looks</th><th class="num">canary requests (errors)</th><th class="num">stable requests (errors)</th>
<th>decision</th><th>why</th></tr></thead><tbody>
{% for s in stages %}<tr><td>{{ s.stage }}</td><td class="num">{{ s.weight }}</td><td>{{ s.started }}</td>
<td class="num">{{ s.elapsed }}</td><td class="num">{{ s.looks }}</td><td class="num">{{ s.canary }}</td>
<td class="num">{{ s.stable }}</td><td class="d-{{ s.decision }}">{{ s.decision }}</td><td>{{ s.reason }}</td></tr>
{% endfor %}</tbody></table>
{% else %}<p class="empty">No stage was observed{% if record.stages_planned %} (planned: {{ planned }}){% endif %}.</p>{% endif %}
{% if srm %}
<h2>Traffic split (sample-ratio check)</h2>
<table id="srm"><thead><tr><th>stage</th><th class="num">configured</th><th class="num">observed</th>
<th class="num">canary / stable requests</th><th class="num">e-value</th><th class="num">threshold</th><th>verdict</th>
</tr></thead><tbody>
{% for s in srm %}<tr><td>{{ s.stage }}</td><td class="num">{{ s.configured }}</td><td class="num">{{ s.observed }}</td>
<td class="num">{{ s.requests }}</td><td class="num">{{ s.e_value }}</td><td class="num">{{ s.threshold }}</td>
<td class="d-{{ s.decision }}">{{ s.verdict }}</td></tr>{% endfor %}
</tbody></table>
{% endif %}
{% if shadow %}
<h2>Shadow test <span class="{{ 'pass' if shadow.passed else 'fail' }}">{{ 'passed' if shadow.passed else 'failed' }}</span></h2>
{% if shadow.reasons %}<ul>{% for r in shadow.reasons %}<li>{{ r }}</li>{% endfor %}</ul>{% endif %}
<table id="shadow"><thead><tr><th>on the same mirrored requests</th><th class="num">stable</th>
<th class="num">candidate</th></tr></thead><tbody>
{% for label, stable, candidate in shadow.rows %}<tr><td>{{ label }}</td><td class="num">{{ stable }}</td>
<td class="num">{{ candidate }}</td></tr>{% endfor %}
</tbody></table>
{% if shadow.tests %}
<h3>Paired tests (sequential: valid at every look)</h3>
<table id="shadow-tests"><thead><tr><th>test</th><th>pairs</th><th class="num">evidence of harm</th>
<th>increase (confidence sequence)</th><th>verdict</th></tr></thead><tbody>
{% for t in shadow.tests %}<tr><td>{{ t.test }}</td><td>{{ t.pairs }}</td><td class="num">{{ t.evidence }}</td>
<td>{{ t.bound }}</td><td class="{{ 'fail' if t.verdict == 'FAIL' else ('pass' if t.verdict == 'pass' else '') }}">{{ t.verdict }}</td></tr>
{% endfor %}</tbody></table>
{% if shadow.notes %}<ul>{% for n in shadow.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
{% endif %}
{% if shadow.expectations %}
<h3>Output expectations ({{ shadow.validated }} mirrored answers of the candidate)</h3>
<table id="expectations"><thead><tr><th>expectation</th><th>rows</th><th>result</th><th>observed</th></tr></thead><tbody>
{% for e in shadow.expectations %}<tr><td><code>{{ e.describe }}</code></td><td>{{ e.rows }}</td>
<td class="{{ 'pass' if e.success else 'fail' }}">{{ 'pass' if e.success else 'FAIL' }}</td><td>{{ e.observed }}</td></tr>
{% endfor %}</tbody></table>
{% endif %}
{% endif %}
<h2>Approvals</h2>
{% if approvals %}
<table id="approvals"><thead><tr><th>when</th><th>who</th><th>stage</th><th>answer</th><th>comment</th></tr></thead><tbody>
{% for a in approvals %}<tr><td>{{ a.when }}</td><td>{{ a.who }}</td><td>{{ a.stage }}</td>
<td class="{{ 'pass' if a.approved else 'fail' }}">{{ a.answer }}</td><td>{{ a.comment }}</td></tr>{% endfor %}
</tbody></table>
{% else %}<p class="empty">No approval was asked for.</p>{% endif %}
<h2>Run</h2>
<table id="run"><tbody>{% for label, value in run_rows %}<tr><th>{{ label }}</th><td>{{ value }}</td></tr>{% endfor %}</tbody></table>
{% if spec_yaml %}<details id="spec"><summary>The spec as frozen for this run</summary><pre>{{ spec_yaml }}</pre></details>{% endif %}
<footer>{{ footer }}</footer>
</main>
</body>
</html>
"""


def _environment() -> Any:
    import jinja2

    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def _outcome_badge(record: RolloutRecord) -> str:
    if record.outcome is None:
        return "RUNNING"
    badge = record.outcome.replace("_", " ").upper()
    return f"{badge} (DRY RUN)" if record.dry_run and record.outcome != "dry_run" else badge


def _shadow_verdict(events: Sequence[RolloutEvent], report: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    for event in reversed(events):
        if event.kind == "shadow" and event.data:
            return event.data
    if report and report.get("shadow"):
        return report["shadow"]
    return None


def headline(record: RolloutRecord, looks: Sequence[Look], events: Sequence[RolloutEvent] = (), *,
             report: Mapping[str, Any] | None = None, now_s: float | None = None) -> str:
    """Return the page's sentence: the outcome and why, or where a running rollout stands."""
    if record.outcome is None:
        stage_started = None
        if looks and looks[-1].elapsed_s is not None:
            stage_started = looks[-1].look_at_s - looks[-1].elapsed_s
        return running_sentence(looks=looks, stages_planned=record.stages_planned, stage_started_s=stage_started,
                                now_s=now_s)
    duration = record.finished_at_s - record.started_at_s if record.finished_at_s is not None else None
    policy = record.spec.get("policy") if isinstance(record.spec.get("policy"), Mapping) else None
    return outcome_sentence(outcome=record.outcome, reason=record.outcome_reason or "", candidate=record.candidate,
                            looks=looks, stages_planned=record.stages_planned,
                            shadow=_shadow_verdict(events, report), duration_s=duration, dry_run=record.dry_run,
                            policy=policy)


def _targeting_of(events: Sequence[RolloutEvent]) -> dict[int, str]:
    """Return, per targeted stage (0-based), who could see the canary, e.g. ``region in [eu-west]``."""
    out = {}
    for event in events:
        match = event.data.get("targeting") if event.kind == "traffic" else None
        if isinstance(match, Mapping) and match and isinstance(event.data.get("stage"), int):
            out[event.data["stage"]] = " and ".join(f"{name} in [{', '.join(map(str, values))}]"
                                                    for name, values in match.items())
    return out


def _stage_rows(looks: Sequence[Look], events: Sequence[RolloutEvent] = ()) -> list[dict[str, Any]]:
    targeted = _targeting_of(events)
    counts: dict[int, int] = {}
    for look in looks:
        counts[look.stage_index] = counts.get(look.stage_index, 0) + 1
    rows = []
    for index, look in last_look_per_stage(looks).items():
        ev = look.evidence
        started = look.look_at_s - (look.elapsed_s or 0.0)
        rows.append({
            "stage": index + 1, "started": fmt.timestamp(started),
            "weight": f"{look.weight_pct}%" + (f" of requests with {targeted[index]}" if index in targeted else ""),
            "elapsed": fmt.duration(look.elapsed_s), "looks": fmt.count(counts[index]),
            "canary": _requests(ev.get("canary_requests"), ev.get("canary_errors")),
            "stable": _requests(ev.get("stable_requests"), ev.get("stable_errors")),
            "decision": look.decision, "reason": look.reason,
        })
    return rows


def _requests(requests: Any, errors: Any) -> str:
    if requests is None:
        return fmt.MISSING
    rate = f", {fmt.pct(errors / requests)}" if errors is not None and requests else ""
    return f"{fmt.count(requests)} ({fmt.count(errors)}{rate})"


def _segment_rows(looks: Sequence[Look]) -> list[dict[str, Any]]:
    """One row per test in a segment (``analysis.segments``) at each stage's last look."""
    rows = []
    for index, look in last_look_per_stage(looks).items():
        for item in look.evidence.get("metrics") or ():
            if not item.get("segment"):
                continue
            ev = item.get("evidence") or {}
            rows.append({"stage": index + 1, "segment": str(item["segment"]), "test": str(item.get("metric")),
                         "share": fmt.pct(ev.get("canary_share")),
                         "required": "yes" if ev.get("required") else "no",
                         "decision": "undecided" if waived(item) else str(item.get("decision", "")),
                         "numbers": metric_phrase(item)})
    return rows


def _slug(name: str) -> str:
    """Return ``name`` as an HTML id: letters, digits, ``_`` and ``-``."""
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in name)


def _srm_rows(looks: Sequence[Look]) -> list[dict[str, Any]]:
    rows = []
    for index, look in last_look_per_stage(looks).items():
        item = assessment(look, "srm")
        if item is None:
            continue
        ev = item.get("evidence") or {}
        rows.append({"stage": index + 1, "configured": fmt.pct_points(ev.get("configured_weight_pct")),
                     "observed": fmt.pct_points(ev.get("observed_weight_pct")),
                     "requests": f"{fmt.count(ev.get('canary_requests'))} / {fmt.count(ev.get('stable_requests'))}",
                     "e_value": fmt.evalue(ev.get("e_value")), "threshold": fmt.evalue(ev.get("threshold")),
                     "decision": item.get("decision"),
                     "verdict": "mismatch" if item.get("decision") == "halt" else "consistent"})
    return rows


def _shadow_section(shadow: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not shadow:
        return None
    from canary.rollout.expectations import ExpectationResult

    s = shadow.get("summary") or {}
    pairs = s.get("pairs")

    def rate(errors: Any) -> str:
        return f"{fmt.count(errors)} ({fmt.pct(errors / pairs)})" if errors is not None and pairs else fmt.count(errors)

    def ms(value: Any) -> str:
        return fmt.MISSING if value is None else f"{fmt.sig(value)} ms"

    rows = [("requests answered by both", fmt.count(pairs), fmt.count(pairs)),
            ("errors", rate(s.get("stable_errors")), rate(s.get("candidate_errors"))),
            ("p95 latency", ms(s.get("stable_latency_p95_ms")), ms(s.get("candidate_latency_p95_ms"))),
            ("predicted class agrees with stable", "", fmt.pct(s.get("prediction_agreement"), 3)),
            ("mean |score difference|", "", fmt.sig(s.get("mean_abs_score_diff")))]
    expectations = []
    for data in shadow.get("expectations") or ():
        try:
            result = ExpectationResult(**data)
            expectations.append({"describe": result.describe(), "rows": result.rows, "success": result.success,
                                 "observed": result.observed()})
        except (TypeError, ValueError) as err:  # a result written by another version: show it, don't fail
            expectations.append({"describe": str(data.get("type")), "rows": str(data.get("rows", "")),
                                 "success": bool(data.get("success")), "observed": f"unreadable result ({err})"})
    return {"passed": bool(shadow.get("passed")), "reasons": list(shadow.get("reasons") or ()), "rows": rows,
            "expectations": expectations, "validated": fmt.count(shadow.get("outputs_validated")),
            "tests": [fmt.paired_test_cells(t) for t in shadow.get("tests") or ()],
            "notes": list(shadow.get("notes") or ())}


def _approvals(events: Sequence[RolloutEvent]) -> list[dict[str, Any]]:
    rows = []
    for event in events:
        if event.kind != "approval":
            continue
        d = event.data
        approved = d.get("approved")
        if approved is None and d.get("decision") is not None:
            approved = str(d.get("decision")).lower() in ("approve", "approved", "yes", "true")
        stage = d.get("stage")
        rows.append({"when": fmt.timestamp(event.at_s),
                     "who": str(d.get("user") or d.get("by") or d.get("responded_by") or "unknown"),
                     "stage": fmt.MISSING if stage is None else str(int(stage) + 1 if isinstance(stage, int) else stage),
                     "approved": bool(approved), "answer": str(d.get("decision") or ("approved" if approved
                                                                                    else "rejected")),
                     "comment": str(d.get("comment") or "")})
    return rows


def _spec_yaml(spec: Mapping[str, Any]) -> str:
    if not spec:
        return ""
    import json

    import yaml

    plain = json.loads(json.dumps(dict(spec), default=str))  # enums, tuples, paths: plain YAML values
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True)


def _refresh_s(record: RolloutRecord) -> int:
    analysis = record.spec.get("analysis") if isinstance(record.spec.get("analysis"), Mapping) else {}
    poll = (analysis or {}).get("poll_interval", (analysis or {}).get("poll_interval_s"))  # as written, or dumped
    try:
        from canary.spec.durations import parse_duration_s

        seconds = parse_duration_s(poll) if poll is not None else DEFAULT_REFRESH_S
    except ValueError:
        seconds = DEFAULT_REFRESH_S
    return max(int(round(seconds)), MIN_REFRESH_S)


def _live_facts(record: RolloutRecord, looks: Sequence[Look], now_s: float) -> list[tuple[str, str]]:
    if not looks:
        return [("stage", "not started"), ("looks so far", "0")]
    look = looks[-1]
    of = f" of {len(record.stages_planned)}" if record.stages_planned else ""
    stage_started = look.look_at_s - (look.elapsed_s or 0.0)
    return [("current stage", f"{look.stage_index + 1}{of} ({look.weight_pct}%)"),
            ("in this stage for", fmt.duration(max(now_s - stage_started, 0.0))),
            ("looks so far", fmt.count(len(looks))),
            ("time to decision", "about " + fmt.duration(look.eta_s) if look.eta_s is not None else "unknown"),
            ("latest look", f"{fmt.duration(max(now_s - look.look_at_s, 0.0))} ago")]


def render_html(record: RolloutRecord, looks: Sequence[Look], events: Sequence[RolloutEvent], *,
                report: Mapping[str, Any] | None = None, live: bool = False, now_s: float | None = None) -> str:
    """Render a rollout's page.

    :param record: the run's record (``outcome`` None while it runs).
    :param looks: its looks in time order; ``events``: its events (traffic, gate, approval, shadow...).
    :param report: the JSON report (:func:`canary.rollout.report.build_report`), for its shadow verdict (and,
        when ``looks`` is empty, its timeline: one look per stage).
    :param live: the page may be of a running rollout (the UI tab): while ``record.outcome`` is None it shows
        the current stage, looks so far and time to decision, and refreshes itself every poll interval
        (``<meta http-equiv="refresh">``); once the run has ended it is the final page.
    :param now_s: the time the page is rendered at (default: now), for "for how long" on a live page.
    """
    from markupsafe import Markup

    from canary.report import charts

    now = time.time() if now_s is None else now_s
    if not looks and report and report.get("timeline"):  # no journal: the report's last look per stage
        from canary.report.markdown import looks_from_report

        looks = looks_from_report(report)
    looks = sorted(looks, key=lambda look: look.look_at_s)
    events = sorted(events, key=lambda event: event.at_s)
    chart_now = now if live else None
    traffic = charts.traffic_chart(looks, started_at_s=record.started_at_s, now_s=chart_now)
    metrics = []
    for i, name in enumerate(charts.metric_names(looks)):
        latest = next((assessment(look, name) for look in reversed(looks) if assessment(look, name)), None) or {}
        svgs = [Markup(charts.to_svg(chart, prefix=f"m{i}{k}"))
                for k, chart in enumerate(charts.metric_charts(looks, name, started_at_s=record.started_at_s,
                                                               now_s=chart_now))]
        metrics.append({"name": name, "slug": _slug(name), "kind": str(latest.get("kind", "")), "svgs": svgs,
                        "decision": str(latest.get("decision", "")), "reason": metric_phrase(latest) if latest else ""})
    duration = (record.finished_at_s or now) - record.started_at_s
    started_by = record.started_by.value.replace("_", " ") + (f" ({record.started_by_detail})"
                                                             if record.started_by_detail else "")
    meta = [f"endpoint {record.endpoint}", f"started {fmt.timestamp(record.started_at_s)}",
            (f"took {fmt.duration(duration)}" if record.finished_at_s is not None
             else f"running for {fmt.duration(duration)}"), f"started by {started_by}"]
    if record.dry_run:
        meta.append("dry run")
    planned = " → ".join(f"{w}%" for w in record.stages_planned)
    run_rows = [("DAG / run", f"{record.dag_id} / {record.run_id}"), ("model", record.model),
                ("candidate / stable", f"{record.candidate} / {record.stable}"), ("endpoint", record.endpoint),
                ("stages planned", planned or fmt.MISSING),
                ("stages reached", f"{record.stages_reached} of {len(record.stages_planned)}"),
                ("started", fmt.timestamp(record.started_at_s)),
                ("finished", fmt.timestamp(record.finished_at_s) if record.finished_at_s else "running"),
                ("started by", started_by), ("reason given", record.reason or "none"),
                ("outcome", (record.outcome or "running").replace("_", " ")),
                ("outcome reason", record.outcome_reason or fmt.MISSING)]
    if record.report_location:
        run_rows.append(("report", record.report_location))
    is_live = live and record.outcome is None
    page = _environment().from_string(_TEMPLATE).render(
        title=f"{record.model} {record.candidate}: {_outcome_badge(record).lower()}", css=Markup(_CSS),
        refresh_s=_refresh_s(record) if is_live else None, record=record, tone=OUTCOME_STYLE.get(record.outcome, "bad"),
        badge=_outcome_badge(record), meta=meta, sentence=headline(record, looks, events, report=report, now_s=now),
        live_facts=_live_facts(record, looks, now) if is_live else [],
        traffic_svg=Markup(charts.to_svg(traffic, prefix="traffic")) if traffic else None, metrics=metrics,
        stages=_stage_rows(looks, events), planned=planned, srm=_srm_rows(looks), segments=_segment_rows(looks),
        shadow=_shadow_section(_shadow_verdict(events, report)), approvals=_approvals(events), run_rows=run_rows,
        spec_yaml=_spec_yaml(record.spec),
        footer=(f"{'Live page, refreshes every ' + fmt.duration(_refresh_s(record)) + '; ' if is_live else ''}"
                f"rendered {fmt.timestamp(now)}. Evidence: anytime-valid e-values and confidence sequences "
                "(a rollback needs the e-value at its threshold; an advance needs the bound within tolerance)."),
    )
    return page


__all__ = ["DEFAULT_REFRESH_S", "headline", "render_html"]
