"""The evidence report of a rollout: a JSON document and a Markdown rendering of it.

The rendering for people (sentence, number formats, the HTML page) lives in :mod:`canary.report`; this
module assembles the JSON from the run's XCom and writes the files.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from canary.policy.decisions import Outcome
from canary.rollout.plan import RolloutPlan

#: Where reports go unless ``CANARY_REPORTS_DIR`` says otherwise.
DEFAULT_REPORTS_DIR = "canary_reports"


def reports_dir() -> Path:
    """Return the reports directory: ``$CANARY_REPORTS_DIR``, else ``$AIRFLOW_HOME/canary_reports``."""
    explicit = os.environ.get("CANARY_REPORTS_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("AIRFLOW_HOME", ".")) / DEFAULT_REPORTS_DIR


def build_report(plan: RolloutPlan, *, outcome: Outcome, reason: str, shadow: Mapping[str, Any] | None,
                 stages: Sequence[Mapping[str, Any]], finished_at_s: float | None = None) -> dict[str, Any]:
    """Assemble the report from the plan and the stages' observed decisions (XCom payloads)."""
    finished = time.time() if finished_at_s is None else finished_at_s
    timeline = []
    for observed in stages:
        result = observed["result"]
        ev = result.get("evidence", {})
        idx = int(observed["stage_index"])
        timeline.append({
            "stage": idx + 1, "weight_pct": plan.stages[idx].weight, "decision": result["decision"],
            "reason": result["reason"], "metric": result.get("metric"), "polls": observed.get("polls"),
            "elapsed_s": ev.get("elapsed_s"), "canary_requests": ev.get("canary_requests"),
            "stable_requests": ev.get("stable_requests"), "canary_errors": ev.get("canary_errors"),
            "stable_errors": ev.get("stable_errors"), "metrics": ev.get("metrics", []),
            # a guardrail breach's numbers (the one sentence quotes them)
            **{k: ev[k] for k in ("error_rate", "latency_p99_ms", "limit") if k in ev},
        })
    return {
        "model": plan.model, "endpoint": plan.spec.endpoint, "candidate": plan.candidate, "stable": plan.stable,
        "run_id": plan.run_id, "dry_run": plan.dry_run, "request_reason": plan.reason,
        "outcome": outcome.value, "reason": reason,
        "started_at_s": plan.started_at_s, "finished_at_s": finished,
        "duration_s": round(finished - plan.started_at_s, 3),
        "stages_planned": [s.weight for s in plan.stages],
        "alpha": plan.spec.analysis.alpha, "shadow": dict(shadow) if shadow else None, "timeline": timeline,
    }


def render_markdown(report: Mapping[str, Any]) -> str:
    """Render the report for people (:func:`canary.report.markdown.render_markdown`: sentence first, numbers rounded)."""
    from canary.report.markdown import render_markdown as render

    return render(report)


def write_report(report: Mapping[str, Any], directory: Path | None = None) -> tuple[Path, Path]:
    """Write ``<model>/<run_id>.json`` and ``.md`` atomically; return both paths."""
    base = (directory or reports_dir()) / str(report["model"])
    base.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(report["run_id"]))
    out = []
    for suffix, text in ((".json", json.dumps(report, indent=2, default=str)), (".md", render_markdown(report))):
        path = base / f"{stem}{suffix}"
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        out.append(path)
    return out[0], out[1]
