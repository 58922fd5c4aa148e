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
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import requests

from canary import defaults
from canary.durations import parse_duration_s

DEFAULT_URL = "http://localhost:8080"
#: The task whose XCom ``return_value`` is the rollout report (``FinalizeRolloutOperator``).
REPORT_TASK_ID = "finalize"
#: The first task; when it fails the rollout was refused before any traffic moved.
VALIDATE_TASK_ID = "validate_request"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
EXIT_OK, EXIT_NOT_PROMOTED, EXIT_REFUSED = 0, 1, 2


class AirflowApiError(Exception):
    """The Airflow API answered with an error; ``status`` is the HTTP status (None if unreachable)."""

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        self.status = status
        self.detail = detail
        super().__init__(message)


def _detail_text(detail: Any) -> str:
    """Flatten FastAPI's ``detail`` (a string, or a list of ``{loc, msg}``) into one line."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, Mapping):
        return json.dumps(detail, default=str)
    # Airflow's param errors append the whole JSON schema after a blank line: keep the first line.
    return str(detail).strip().splitlines()[0] if str(detail).strip() else ""


_PARAM_FIELD = re.compile(r"[Ii]nvalid input for param (\w+)")


def refused_field(detail: Any) -> str | None:
    """Return the conf field an API 400 names, if it names one (Airflow's param validation message)."""
    if isinstance(detail, list):
        for item in detail:
            if isinstance(item, Mapping):
                loc = [str(p) for p in item.get("loc", ()) if p not in ("body", "conf")]
                if loc:
                    return ".".join(loc)
        return None
    match = _PARAM_FIELD.search(str(detail))
    return match.group(1) if match else None


class AirflowClient:
    """A minimal client of the Airflow REST API v2 for starting and following rollout runs.

    :param base_url: Airflow API server, e.g. ``http://localhost:8080``.
    :param token: a bearer token; if None, one is requested with ``username``/``password``.
    """

    def __init__(self, base_url: str, *, token: str | None = None, username: str | None = None,
                 password: str | None = None, timeout_s: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._username = username
        self._password = password
        self.timeout_s = timeout_s
        self.session = session or requests.Session()

    def __repr__(self) -> str:  # never show credentials
        return f"AirflowClient({self.base_url!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AirflowClient:
        env = os.environ if env is None else env
        return cls(env.get("CANARY_AIRFLOW_URL") or DEFAULT_URL, token=env.get("CANARY_AIRFLOW_TOKEN") or None,
                   username=env.get("CANARY_AIRFLOW_USERNAME") or None,
                   password=env.get("CANARY_AIRFLOW_PASSWORD") or None)

    # -- transport -----------------------------------------------------------------------------------

    def _fetch_token(self) -> str:
        if not (self._username and self._password):
            raise AirflowApiError("no credentials: set CANARY_AIRFLOW_TOKEN, or CANARY_AIRFLOW_USERNAME and "
                                  "CANARY_AIRFLOW_PASSWORD")
        url = f"{self.base_url}/auth/token"
        try:
            resp = self.session.post(url, json={"username": self._username, "password": self._password},
                                     timeout=self.timeout_s)
        except requests.RequestException as err:
            raise AirflowApiError(f"cannot reach Airflow at {self.base_url}: {type(err).__name__}") from err
        if resp.status_code not in (200, 201):
            raise AirflowApiError(f"POST /auth/token: HTTP {resp.status_code} (username or password rejected?)",
                                  status=resp.status_code)
        token = resp.json().get("access_token")
        if not token:
            raise AirflowApiError("POST /auth/token: the answer holds no access_token", status=resp.status_code)
        return str(token)

    def request(self, method: str, path: str, *, json_body: Any = None,
                params: Mapping[str, Any] | None = None) -> Any:
        """Call the API; return the decoded JSON body; raise :class:`AirflowApiError` on an error status."""
        if self._token is None:
            self._token = self._fetch_token()
        for attempt in (1, 2):
            try:
                resp = self.session.request(method, f"{self.base_url}{path}", json=json_body, params=params,
                                            headers={"Authorization": f"Bearer {self._token}"},
                                            timeout=self.timeout_s)
            except requests.RequestException as err:
                raise AirflowApiError(f"cannot reach Airflow at {self.base_url}: {type(err).__name__}") from err
            # An expired token is renewed once when credentials are configured.
            if resp.status_code == 401 and attempt == 1 and self._username and self._password:
                self._token = self._fetch_token()
                continue
            break
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text[:500]
            raise AirflowApiError(f"{method} {path}: HTTP {resp.status_code}: {_detail_text(detail)}",
                                  status=resp.status_code, detail=detail)
        return resp.json() if resp.content else None

    # -- the calls we need ---------------------------------------------------------------------------

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/api/v2/dags/{quote(dag_id)}/dagRuns",
                            json_body={"logical_date": None, "conf": dict(conf)})

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}")

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}"
                                   f"/taskInstances/{quote(task_id)}")

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """Return the deserialised XCom value, or None if there is none."""
        try:
            entry = self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}"
                                        f"/taskInstances/{quote(task_id)}/xcomEntries/{quote(key)}",
                                 params={"deserialize": "true", "stringify": "false"})
        except AirflowApiError as err:
            if err.status == 404:
                return None
            raise
        value = entry.get("value") if isinstance(entry, Mapping) else None
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """Return a task try's log as text (empty if unavailable)."""
        try:
            body = self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}"
                                       f"/taskInstances/{quote(task_id)}/logs/{try_number}",
                                params={"full_content": "true"})
        except AirflowApiError:
            return ""
        content = body.get("content") if isinstance(body, Mapping) else body
        if not isinstance(content, list):
            return str(content or "")
        lines = []
        for entry in content:  # structured log events; a task's exception is in ``error_detail``
            if not isinstance(entry, Mapping):
                lines.append(str(entry))
                continue
            lines.append(str(entry.get("event", "")))
            for exc in entry.get("error_detail") or ():
                if isinstance(exc, Mapping):
                    lines.append(f"{exc.get('exc_type', '')}: {exc.get('exc_value', '')}")
        return "\n".join(lines)


def build_conf(args: argparse.Namespace) -> dict[str, Any]:
    """Return the run conf; only what was given, so the DAG's params supply the rest."""
    conf: dict[str, Any] = {"version": args.version}
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
            _say(f"refused by Airflow: {where} is invalid: {_detail_text(err.detail)}")
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


__all__ = ["AirflowApiError", "AirflowClient", "build_conf", "refused_field", "register", "run_trigger",
           "wait_for_outcome"]
