"""``canary trigger MODEL --version V``: start a rollout through the Airflow REST API (v2), optionally wait.

Configuration (environment): ``CANARY_AIRFLOW_URL`` (default ``http://localhost:8080``), and either
``CANARY_AIRFLOW_TOKEN`` (a ready bearer token) or ``CANARY_AIRFLOW_USERNAME`` + ``CANARY_AIRFLOW_PASSWORD``
(exchanged for a token at ``POST /auth/token``). Credentials and tokens are never printed.

Exit codes: 0 the run started (with ``--wait``: the candidate was promoted, or the dry run completed);
1 the rollout was rolled back, failed, or did not finish within ``--timeout``; 2 the rollout did not
start or was refused (usage error, unknown model, conf refused by the API, refused by the run's first
task, Airflow unreachable or credentials rejected).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from canary.airflow_api import AirflowApiError, AirflowClient, detail_text, refused_field
from canary.history.model import StartedBy
from canary.history.started_by import STARTED_BY_KEY
from canary.spec import defaults
from canary.spec.durations import parse_duration_s

#: The task whose XCom ``return_value`` is the rollout report (``FinalizeRolloutOperator``).
REPORT_TASK_ID = "finalize"
#: The first task; when it fails the rollout was refused before any traffic moved.
VALIDATE_TASK_ID = "validate_request"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
EXIT_OK, EXIT_NOT_PROMOTED, EXIT_REFUSED = 0, 1, 2


def build_conf(args: argparse.Namespace) -> dict[str, Any]:
    """Return the run conf; only what was given, so the DAG's params supply the rest.

    It also says who starts the run (``started_by: api``, for the rollout history): a run's tasks
    cannot tell a REST call from the trigger form otherwise.
    """
    conf: dict[str, Any] = {"version": args.version, STARTED_BY_KEY: StartedBy.API.value}
    if args.stages is not None:
        conf["stages"] = args.stages
    if args.dry_run:
        conf["dry_run"] = True
    if getattr(args, "approval", None):
        conf["approval"] = args.approval
    if args.reason:
        conf["reason"] = args.reason
    return conf


def _stages(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 5,25,50,100, got {text!r}") from None


def _duration(text: str) -> float:
    try:
        return parse_duration_s(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trigger", help="start a rollout through the Airflow REST API (and optionally wait)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model name (DAG canary_rollout__<model>)")
    p.add_argument("--version", required=True, help="candidate version or registry alias")
    p.add_argument("--stages", type=_stages, default=None, metavar="W1,W2,...",
                   help="override the spec's stage weights (same count, increasing, ending at 100)")
    p.add_argument("--dry-run", action="store_true", help="decide everything, change no traffic or registry")
    p.add_argument("--approval", choices=("none", "before_promote", "every_stage"), default=None,
                   help="human approvals for this run (the spec's or stricter; default: the spec's)")
    p.add_argument("--reason", default="", help="why this rollout (audit trail)")
    p.add_argument("--wait", action="store_true", help="follow the run to its outcome; exit 1 unless promoted")
    p.add_argument("--timeout", type=_duration, default=7200.0, metavar="DURATION",
                   help="with --wait: give up after this long (default 2h; e.g. 30m, 1h30m)")
    p.add_argument("--poll-interval", type=_duration, default=5.0, metavar="DURATION",
                   help="with --wait: how often to read the run state (default 5s)")
    p.set_defaults(func=run_trigger)


def _say(message: str) -> None:
    print(f"canary trigger: {message}", file=sys.stderr, flush=True)


def run_trigger(args: argparse.Namespace, *, client: AirflowClient | None = None,
                sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> int:
    client = client or AirflowClient.from_env()
    dag_id = defaults.rollout_dag_id(args.model)
    conf = build_conf(args)
    try:
        run = client.trigger(dag_id, conf)
    except AirflowApiError as err:
        if err.status == 404:
            _say(f"unknown model {args.model!r}: Airflow has no DAG {dag_id!r} (no spec, or not parsed yet)")
        elif err.status in (400, 422):
            field = refused_field(err.detail)
            where = f"field {field!r}" if field else "the conf"
            _say(f"refused by Airflow: {where} is invalid: {detail_text(err.detail)}")
        else:
            _say(str(err))
        return EXIT_REFUSED
    run_id = run["dag_run_id"]
    _say(f"started {dag_id} run {run_id} (version {args.version}{', dry run' if args.dry_run else ''}); "
         f"{client.base_url}/dags/{dag_id}/runs/{quote(run_id, safe='')}")
    if not args.wait:
        print(json.dumps({"dag_id": dag_id, "run_id": run_id, "state": run.get("state")}))
        return EXIT_OK
    return wait_for_outcome(client, dag_id, run_id, timeout_s=args.timeout, poll_interval_s=args.poll_interval,
                            sleep=sleep, clock=clock)


def wait_for_outcome(client: AirflowClient, dag_id: str, run_id: str, *, timeout_s: float, poll_interval_s: float,
                     sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> int:
    """Poll the run until it ends; print a summary line and the report; return the exit code."""
    deadline = clock() + timeout_s
    state, last = None, None
    while True:
        try:
            state = client.dag_run(dag_id, run_id).get("state")
        except AirflowApiError as err:
            if err.status is not None and err.status < 500:
                _say(f"cannot read run {run_id}: {err}")
                return EXIT_NOT_PROMOTED
            _say(f"Airflow API unavailable, retrying: {err}")  # a restarting API server is not an outcome
        if state in TERMINAL_RUN_STATES:
            break
        if state != last:
            _say(f"run {run_id} is {state}")
            last = state
        if clock() >= deadline:
            _say(f"run {run_id} still {state} after {timeout_s:.0f}s; it keeps running in Airflow")
            return EXIT_NOT_PROMOTED
        sleep(poll_interval_s)
    report = client.xcom(dag_id, run_id, REPORT_TASK_ID)
    if isinstance(report, Mapping) and report.get("outcome"):
        outcome, reason = str(report["outcome"]), str(report.get("reason", ""))
        print(f"{dag_id} {run_id}: {outcome.upper()} - {reason}")
        print(json.dumps(report, default=str))
        return EXIT_OK if outcome in ("promoted", "dry_run") and state == "success" else EXIT_NOT_PROMOTED
    # No report: the rollout stopped before a plan existed (its first task refused it; finalize skipped).
    refusal = _refusal(client, dag_id, run_id)
    if refusal is not None:
        print(f"{dag_id} {run_id}: REFUSED - {refusal}")
        print(json.dumps({"outcome": "refused", "reason": refusal, "run_state": state}))
        return EXIT_REFUSED
    print(f"{dag_id} {run_id}: {str(state).upper()} - no rollout report (see the run in Airflow)")
    print(json.dumps({"outcome": "failed" if state == "failed" else str(state), "reason": "no report",
                      "run_state": state}))
    return EXIT_OK if state == "success" else EXIT_NOT_PROMOTED


_REFUSED = re.compile(r"rollout refused: (.+)")


def _refusal(client: AirflowClient, dag_id: str, run_id: str) -> str | None:
    """Return the first task's refusal message if it failed, else None."""
    try:
        ti = client.task_instance(dag_id, run_id, VALIDATE_TASK_ID)
    except AirflowApiError:
        return None
    if ti.get("state") != "failed":
        return None
    text = client.task_log(dag_id, run_id, VALIDATE_TASK_ID, int(ti.get("try_number") or 1))
    match = _REFUSED.search(text)
    return match.group(1).strip() if match else f"task {VALIDATE_TASK_ID} failed (see its log)"


__all__ = ["build_conf", "register", "run_trigger",
           "wait_for_outcome"]
