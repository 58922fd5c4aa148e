"""The Markdown rendering of the JSON report: the same sentence and number formats as the HTML page.

The JSON report (:func:`canary.rollout.report.build_report`) keeps each stage's last look in its
``timeline``; :func:`looks_from_report` turns those back into :class:`canary.history.Look` values so
that the sentence is worded by the same code as the page's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from canary.history.model import Look
from canary.policy.decisions import label_of
from canary.report import format as fmt
from canary.report.sentence import outcome_sentence


def looks_from_report(report: Mapping[str, Any]) -> list[Look]:
    """Return the report's stages as looks (one per stage: the look that ended it, or the last one)."""
    looks = []
    # Stages follow each other: place each stage's last look at the end of its elapsed time.
    at_s = float(report.get("started_at_s") or 0.0)
    for entry in report.get("timeline") or ():
        at_s += float(entry.get("elapsed_s") or 0.0)
        evidence = {k: entry.get(k) for k in ("canary_requests", "canary_errors", "stable_requests", "stable_errors")
                    if entry.get(k) is not None}
        evidence.update({"stage": int(entry["stage"]) - 1, "weight_pct": entry.get("weight_pct"),
                         "elapsed_s": entry.get("elapsed_s"), "metrics": list(entry.get("metrics") or ())})
        for key in ("error_rate", "latency_p99_ms", "limit"):  # a guardrail breach's numbers
            if key in entry:
                evidence[key] = entry[key]
        looks.append(Look(dag_id=str(report.get("dag_id", "")), run_id=str(report.get("run_id", "")),
                          stage_index=int(entry["stage"]) - 1, look_at_s=float(entry.get("look_at_s") or at_s),
                          weight_pct=int(entry.get("weight_pct") or 0), decision=str(entry.get("decision")),
                          reason=str(entry.get("reason", "")), metric=entry.get("metric"),
                          elapsed_s=entry.get("elapsed_s"), evidence=evidence))
    return looks


def report_sentence(report: Mapping[str, Any]) -> str:
    """Return the report's one sentence (outcome and why, with the deciding numbers)."""
    spec = report.get("spec") if isinstance(report.get("spec"), Mapping) else {}
    policy = report.get("policy") or (spec or {}).get("policy")
    return outcome_sentence(outcome=str(report["outcome"]), reason=str(report.get("reason", "")),
                            candidate=str(report.get("candidate", "")), looks=looks_from_report(report),
                            stages_planned=tuple(report.get("stages_planned") or ()), shadow=report.get("shadow"),
                            duration_s=report.get("duration_s"), dry_run=bool(report.get("dry_run")),
                            policy=policy if isinstance(policy, Mapping) else None)


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _requests(requests: Any, errors: Any) -> str:
    if requests is None:
        return fmt.MISSING
    rate = f", {fmt.pct(errors / requests)}" if errors is not None and requests else ""
    return f"{fmt.count(requests)} ({fmt.count(errors)} errors{rate})"


def _metric_numbers(item: Mapping[str, Any]) -> str:
    """Return a metric's key numbers: e-value vs threshold and its confidence bounds vs tolerance."""
    ev = item.get("evidence") or {}
    parts = []
    if "e_value" in ev or "log_e_value" in ev:
        parts.append(f"e-value {fmt.evalue(ev.get('e_value'))} (threshold {fmt.evalue(ev.get('threshold'))})")
    if ev.get("test") == "tv_confidence_sequence":
        parts.append(f"TV {fmt.sig(ev.get('tv_lower'), 2)}–{fmt.sig(ev.get('tv_upper'), 2)} "
                     f"(tolerance {fmt.sig(ev.get('tolerance'), 2)})")
    elif "ratio_lower" in ev or "ratio_upper" in ev:
        parts.append(f"ratio {fmt.ratio(ev.get('ratio_lower'))}–{fmt.ratio(ev.get('ratio_upper'))} "
                     f"(tolerance {fmt.ratio(ev.get('tolerance_ratio'))})")
    if ev.get("test") == "srm":
        parts.append(f"observed {fmt.pct_points(ev.get('observed_weight_pct'))} vs configured "
                     f"{fmt.pct_points(ev.get('configured_weight_pct'))}")
    return "; ".join(parts) or fmt.MISSING


def render_markdown(report: Mapping[str, Any]) -> str:
    """Render the JSON report for people, in Markdown."""
    stages_planned: Sequence[int] = report.get("stages_planned") or ()
    lines = [
        f"# Rollout of {report['model']} {report['candidate']}: {str(report['outcome']).replace('_', ' ').upper()}",
        "",
        f"**{report_sentence(report)}**",
        "",
        f"- stable: {report['stable']} · endpoint: {report['endpoint']} · run: `{report['run_id']}`",
        f"- stages planned: {' → '.join(f'{w}%' for w in stages_planned)} · alpha {fmt.sig(report.get('alpha'))}",
        f"- started {fmt.timestamp(report.get('started_at_s'))} · took {fmt.duration(report.get('duration_s'))}"
        + (" · DRY RUN" if report.get("dry_run") else ""),
        f"- reason: {report['reason']}",
        "",
    ]
    shadow = report.get("shadow")
    if shadow:
        lines += _shadow_lines(shadow)
    timeline = report.get("timeline") or []
    if timeline:
        lines += ["## Stages", "", "| stage | canary | time in stage | decision | canary requests | stable requests | why |",
                  "|---|---|---|---|---|---|---|"]
        for s in timeline:
            lines.append(f"| {s['stage']} | {s['weight_pct']}% | {fmt.duration(s.get('elapsed_s'))} | {s['decision']} "
                         f"| {_requests(s.get('canary_requests'), s.get('canary_errors'))} "
                         f"| {_requests(s.get('stable_requests'), s.get('stable_errors'))} | {_cell(s['reason'])} |")
        lines.append("")
        for s in timeline:
            if s.get("metrics"):
                lines += [f"### Stage {s['stage']} metrics", "", "| metric | verdict | numbers | why |",
                          "|---|---|---|---|"]
                lines += [f"| {label_of(m)} | {m['decision']} | {_cell(_metric_numbers(m))} | {_cell(m['reason'])} |"
                          for m in s["metrics"]]
                lines.append("")
    return "\n".join(lines)


def _shadow_lines(shadow: Mapping[str, Any]) -> list[str]:
    from canary.rollout.expectations import ExpectationResult

    summary = shadow.get("summary") or {}
    lines = ["## Shadow test", "", f"- {'passed' if shadow.get('passed') else '**failed**'}"]
    lines += [f"- {r}" for r in shadow.get("reasons", [])]
    if summary:
        pairs = summary.get("pairs")
        lines.append(f"- {fmt.count(pairs)} mirrored requests answered by both; errors: stable "
                     f"{fmt.count(summary.get('stable_errors'))}, candidate {fmt.count(summary.get('candidate_errors'))}; "
                     f"prediction agreement {fmt.pct(summary.get('prediction_agreement'), 3)}; mean |score difference| "
                     f"{fmt.sig(summary.get('mean_abs_score_diff'))}; p95 latency stable "
                     f"{fmt.sig(summary.get('stable_latency_p95_ms'))} ms, candidate "
                     f"{fmt.sig(summary.get('candidate_latency_p95_ms'))} ms")
    lines += [f"- note: {n}" for n in shadow.get("notes") or ()]
    lines.append("")
    tests = [fmt.paired_test_cells(t) for t in shadow.get("tests") or ()]
    if tests:
        lines += ["### Paired tests", "", "| test | pairs | evidence of harm | increase | verdict |", "|---|---|---|---|---|"]
        lines += [f"| {t['test']} | {t['pairs']} | {t['evidence']} | {t['bound']} | {t['verdict']} |" for t in tests]
        lines.append("")
    results = shadow.get("expectations") or []
    if results:
        lines += [f"### Output expectations ({shadow.get('outputs_validated')} mirrored answers of the candidate)", "",
                  "| expectation | rows | result | observed |", "|---|---|---|---|"]
        for data in results:
            result = ExpectationResult(**data)
            args = ", ".join(f"{k}={v}" for k, v in result.kwargs.items())
            lines.append(f"| `{result.type}({args})` | {result.rows} | {'pass' if result.success else '**FAIL**'} "
                         f"| {_cell(result.observed())} |")
        lines.append("")
    return lines


__all__ = ["looks_from_report", "render_markdown", "report_sentence"]
