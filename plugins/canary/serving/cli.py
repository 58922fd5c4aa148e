"""``canary serve`` and ``canary traffic``: run the embedded serving layer and feed it synthetic traffic.

Environment: ``CANARY_ADMIN_TOKEN`` (default of ``serve --token``), ``CANARY_METRICS_DB`` (default of
``serve --db``), ``CANARY_SERVING_URL`` (default of ``traffic --url``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from canary.serving.state import Faults

def parse_duration(text: str) -> float:
    """Parse a duration (``500ms``, ``30s``, ``2m``, ``1h``, ``1d``) or a bare number of seconds."""
    from canary.spec.durations import parse_duration_s

    stripped = text.strip()
    try:
        return parse_duration_s(float(stripped) if stripped.replace(".", "", 1).isdigit() else stripped)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: {err}") from err


def parse_fault(text: str) -> tuple[str, Faults]:
    """Parse ``VERSION:key=value,...`` into ``(version, Faults)``."""
    from pydantic import ValidationError

    from canary.serving.state import Faults

    version, sep, assignments = text.partition(":")
    if not sep or not version or not assignments:
        raise argparse.ArgumentTypeError(f"invalid fault {text!r}; use VERSION:key=value,... "
                                         f"with keys {', '.join(Faults.model_fields)}")
    values: dict[str, Any] = {}
    for item in assignments.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"invalid fault {text!r}: {item!r} is not key=value")
        key = key.strip()
        if key.startswith("when."):  # when.device=android: only requests with that attribute
            values.setdefault("when", {})[key.removeprefix("when.")] = value.strip()
        else:
            values[key] = value.strip()
    try:
        return version, Faults(**values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise argparse.ArgumentTypeError(f"invalid fault {text!r}: {problems} "
                                         f"(keys: {', '.join(Faults.model_fields)})") from err


def register(subparsers: Any) -> None:
    """Add the ``serve`` and ``traffic`` subcommands."""
    serve = subparsers.add_parser(
        "serve", help="run the embedded serving layer (model endpoints + admin API)",
        description="Serve model endpoints with weighted sticky splits, mirroring and fault injection; "
                    "record every request in the local metrics store. Stops cleanly on SIGINT/SIGTERM.")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8790)
    serve.add_argument("--db", default=os.environ.get("CANARY_METRICS_DB"),
                       help="SQLite metrics store (default: $CANARY_METRICS_DB)")
    serve.add_argument("--token", default=os.environ.get("CANARY_ADMIN_TOKEN"),
                       help="admin API bearer token (default: $CANARY_ADMIN_TOKEN)")
    serve.add_argument("--feedback-token", default=os.environ.get("CANARY_FEEDBACK_TOKEN"),
                       help="bearer token of POST /v1/endpoints/{endpoint}/feedback (default: "
                            "$CANARY_FEEDBACK_TOKEN, else the admin token)")
    serve.add_argument("--endpoint", help="endpoint to create at start-up (with --version)")
    serve.add_argument("--version", action="append", default=[], dest="versions", metavar="VERSION",
                       help="version to deploy on --endpoint; the first gets 100%%, later ones 0%% (repeatable)")
    serve.add_argument("--fault", action="append", default=[], type=parse_fault, dest="faults",
                       metavar="VERSION:key=value,...",
                       help="inject faults into a version, e.g. v2:error_rate=0.05,latency_ms=40, or only into "
                            "requests with an attribute: v2:error_rate=0.1,when.device=android (repeatable; a "
                            "version's faults all apply)")
    serve.add_argument("--seed", type=int, default=None, help="seed of jitter, errors and KPI draws")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=_serve, parser=serve)

    traffic = subparsers.add_parser(
        "traffic", help="send synthetic prediction traffic to the embedded serving layer",
        description="Send requests from many synthetic users at a target rate; print counts as JSON. "
                    "Runs for --duration, or until SIGINT/SIGTERM.")
    traffic.add_argument("--url", default=os.environ.get("CANARY_SERVING_URL", "http://127.0.0.1:8790"),
                         help="serving layer base URL (default: $CANARY_SERVING_URL or http://127.0.0.1:8790)")
    traffic.add_argument("--endpoint", required=True)
    traffic.add_argument("--rps", type=float, required=True, help="target requests per second")
    traffic.add_argument("--duration", type=parse_duration, default=None, help="e.g. 30s, 5m (default: until stopped)")
    traffic.add_argument("--users", type=int, default=5000, help="number of distinct user ids")
    traffic.add_argument("--seed", type=int, default=0)
    traffic.add_argument("--labels", type=float, default=0.0, metavar="SHARE",
                         help="send the true label of this share of answered requests back (POST .../feedback), "
                              "e.g. 0.5 (default 0: none)")
    traffic.add_argument("--outcome", default=None, metavar="NAME",
                         help="also send conversions as this business outcome (e.g. conversion), as late as the "
                              "labels: more likely when the prediction was right (needs --labels)")
    traffic.add_argument("--label-delay", type=parse_duration, default=0.0,
                         help="how long after its answer a request's label is sent, e.g. 10s (default 0)")
    traffic.add_argument("--feedback-token", default=os.environ.get("CANARY_FEEDBACK_TOKEN"),
                         help="bearer token of the feedback route (default: $CANARY_FEEDBACK_TOKEN)")
    traffic.set_defaults(func=_traffic, parser=traffic)


def _serve(args: argparse.Namespace) -> int:
    from canary.serving.app import run_server

    if not args.db:
        args.parser.error("--db is required (or set CANARY_METRICS_DB)")
    if not args.token:
        args.parser.error("--token is required (or set CANARY_ADMIN_TOKEN)")
    if bool(args.endpoint) != bool(args.versions):
        args.parser.error("--endpoint and --version go together")
    deployments = {args.endpoint: args.versions} if args.endpoint else None
    faults: dict[str, list[Any]] = {}
    for version, version_faults in args.faults:  # a version's --fault flags all apply
        faults.setdefault(version, []).append(version_faults)
    run_server(args.host, args.port, args.db, args.token, deployments=deployments, faults=faults,
               seed=args.seed, log_level=args.log_level, feedback_token=args.feedback_token)
    return 0


def _traffic(args: argparse.Namespace) -> int:
    from canary.serving.traffic import LabelFeedback, run_traffic

    feedback = None
    if args.outcome and not args.labels:
        args.parser.error("--outcome needs --labels (the share of answers whose label is sent; the outcomes of "
                          "every answer are sent)")
    if args.labels:
        if not 0.0 < args.labels <= 1.0:
            args.parser.error(f"--labels must be a share in (0, 1], got {args.labels:g}")
        if not args.feedback_token:
            args.parser.error("--labels needs --feedback-token (or $CANARY_FEEDBACK_TOKEN)")
        try:
            feedback = LabelFeedback(token=args.feedback_token, share=args.labels, delay_s=args.label_delay,
                                     outcome=args.outcome)
        except ValueError as err:
            args.parser.error(f"--outcome: {err}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stats = run_traffic(args.url, args.endpoint, args.rps, duration_s=args.duration, stop_event=stop,
                        seed=args.seed, users=args.users, feedback=feedback)
    print(json.dumps(stats.to_dict(), sort_keys=True))
    # Nothing answered at all means a wrong URL or a server down: say so in the exit status.
    return 1 if stats.sent and stats.failed == stats.sent else 0
