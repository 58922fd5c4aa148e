"""``canary history [MODEL]`` and ``canary history show RUN_ID``: past and running rollouts, from the history store.

Reads the store the rollouts write (``--url``, else ``$CANARY_HISTORY_URL``, else the SQLite file under
``$AIRFLOW_HOME``). No Airflow import: it works wherever the ``canary`` command is installed and the store
is reachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from canary.errors import CanaryError
from canary.history.model import Look, RolloutEvent, RolloutRecord
from canary.history.store import RolloutHistory, default_history_url, open_history
from canary.spec.durations import format_duration


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("history", help="list rollouts, or print one rollout's timeline",
                       description="Rollouts newest first (optionally of one model), or with `show RUN_ID` one "
                                   "rollout's timeline: every look, the gate's decisions, traffic changes, "
                                   "approvals and the outcome.")
    p.add_argument("model", nargs="?", help="only this model's rollouts (or `show` to print one rollout)")
    p.add_argument("run_id", nargs="?", help="with `show`: the run id")
    p.add_argument("--dag", help="with `show`: the DAG id, when two DAGs have runs with the same id")
    p.add_argument("--outcome", help="only rollouts with this outcome (promoted, rolled_back, failed, dry_run, "
                                     "running)")
    p.add_argument("--limit", type=int, default=50, help="at most this many rollouts (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--url", help=f"history store SQLAlchemy URL (default: $CANARY_HISTORY_URL, else "
                                 f"{default_history_url()})")
    p.set_defaults(func=run_history)


def run_history(args: argparse.Namespace) -> int:
    try:
        store = open_history(args.url)
        if args.model == "show":
            if not args.run_id:
                print("canary history show: give the run id (`canary history` lists them)", file=sys.stderr)
                return 2
            return show(store, args.run_id, dag_id=args.dag, as_json=args.json)
        if args.run_id:
            print(f"canary history: unexpected argument {args.run_id!r} (did you mean `canary history show "
                  f"{args.run_id}`?)", file=sys.stderr)
            return 2
        records = store.rollouts(model=args.model, outcome=args.outcome, limit=args.limit)
    except CanaryError as err:
        print(f"canary history: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([_listed(r) for r in records], default=str))
        return 0
    if not records:
        what = " of " + args.model if args.model else ""
        print(f"no rollouts{what} in the history store")
        return 0
    for record in records:
        print(summary_line(record))
    return 0


def _listed(record: RolloutRecord) -> dict:
    data = record.to_dict()
    data.pop("spec")
    return data


def _when(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def summary_line(record: RolloutRecord) -> str:
    """Return one line per rollout: when, model, versions, outcome, how long, why."""
    outcome = "RUNNING" if record.running else str(record.outcome).upper().replace("_", " ")
    took = "" if record.finished_at_s is None else f" after {format_duration(record.finished_at_s - record.started_at_s)}"
    reached = f", stage {record.stages_reached}/{len(record.stages_planned)}" if record.stages_planned else ""
    why = f": {record.outcome_reason}" if record.outcome_reason else ""
    dry = " [dry run]" if record.dry_run else ""
    return (f"{_when(record.started_at_s)}  {record.model} {record.candidate} (stable {record.stable})  "
            f"{outcome}{took}{reached}{dry}{why}  [{record.dag_id} {record.run_id}, started by "
            f"{record.started_by.value}]")


def show(store: RolloutHistory, run_id: str, *, dag_id: str | None, as_json: bool) -> int:
    if dag_id:
        found = [r for r in [store.rollout(dag_id, run_id)] if r is not None]
    else:
        found = store.find_run(run_id)
    if not found:
        print(f"canary history: no rollout run {run_id!r}" + (f" of DAG {dag_id}" if dag_id else "")
              + " in the history store", file=sys.stderr)
        return 1
    if len(found) > 1:
        print(f"canary history: run id {run_id!r} exists in several DAGs ({', '.join(sorted(r.dag_id for r in found))}): "
              "pass --dag", file=sys.stderr)
        return 2
    record = found[0]
    looks, events = store.looks(record.dag_id, run_id), store.events(record.dag_id, run_id)
    if as_json:
        print(json.dumps({"rollout": record.to_dict(), "looks": [look.to_dict() for look in looks],
                          "events": [event.to_dict() for event in events]}, default=str))
        return 0
    for line in timeline(record, looks, events):
        print(line)
    return 0


def _offset(seconds: float) -> str:
    return f"+{format_duration(max(0.0, seconds))}".rjust(9)


def timeline(record: RolloutRecord, looks: list[Look], events: list[RolloutEvent]) -> list[str]:
    """Return the rollout as text lines: start, looks and events in time order, outcome."""
    t0 = record.started_at_s
    planned = " -> ".join(f"{w}%" for w in record.stages_planned)
    lines = [summary_line(record), f"  stages {planned}; endpoint {record.endpoint}"
             + (f"; reason: {record.reason}" if record.reason else "")]
    entries: list[tuple[float, int, str]] = []
    for look in looks:
        ev = look.evidence
        counts = ""
        if "canary_requests" in ev:
            counts = (f" canary {ev['canary_requests']} req ({ev.get('canary_errors', 0)} err), "
                      f"stable {ev['stable_requests']} req ({ev.get('stable_errors', 0)} err);")
        eta = f" decision in ~{format_duration(look.eta_s)};" if look.eta_s is not None and \
            look.decision == "continue" else ""
        entries.append((look.look_at_s, 1, f"stage {look.stage_index + 1} ({look.weight_pct}%) look:{counts}{eta} "
                                           f"{look.decision}: {look.reason}"))
    for event in events:
        details = ", ".join(f"{k}={v}" for k, v in event.data.items() if not isinstance(v, dict | list))
        entries.append((event.at_s, 0, f"{event.kind} {event.key}: {details}".rstrip(": ")))
    for at_s, _order, text in sorted(entries, key=lambda e: (e[0], e[1])):
        lines.append(f"  {_offset(at_s - t0)}  {text}")
    if not record.running and record.finished_at_s is not None:
        lines.append(f"  {_offset(record.finished_at_s - t0)}  outcome {record.outcome}: "
                     f"{record.outcome_reason or ''}" + (f" (report {record.report_location})"
                                                         if record.report_location else ""))
    return lines
