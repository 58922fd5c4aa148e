"""``canary lock list|release``: inspect the endpoint leases, or break a stale one.

Reads the same store the rollouts use: ``--backend local`` (default; ``--path``, else the connection's
``extra.path``, else ``$CANARY_LOCK_PATH`` or ``$AIRFLOW_HOME/canary_locks.db``) or ``--backend postgres``
(the connection ``--conn-id``, default ``canary_lock_default``, read from ``$AIRFLOW_CONN_<ID>`` as JSON
or URI, or ``--dsn``). No Airflow import: it works where only the ``canary`` command is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from canary.backends import KNOWN_BACKENDS, build_backend
from canary.backends.base import ConnInfo, EndpointLock, Lease
from canary.errors import CanaryError
from canary.rollout.lease import endpoint_lease_key
from canary.spec import defaults


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lock", help="list endpoint leases or release a stale one",
                       description="One rollout per endpoint: inspect the leases, or break a stale one "
                                   "(e.g. left by a crashed Airflow) before its TTL frees it.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print every lease (holder, since, expiry)")
    listing.add_argument("--json", action="store_true", help="one JSON list instead of text lines")
    release = actions.add_parser("release", help="break the lease of one endpoint, whoever holds it")
    release.add_argument("--endpoint", required=True, help="the spec's endpoint, e.g. churn")
    release.add_argument("--serving", default="local", help="the spec's serving backend name (default local)")
    for action in (listing, release):
        action.add_argument("--backend", default="local", choices=sorted(KNOWN_BACKENDS["lock"]),
                            help="lock store (the spec's backends.lock.name; default local)")
        action.add_argument("--conn-id", default=defaults.DEFAULT_CONN_IDS["lock"],
                            help="connection read from $AIRFLOW_CONN_<ID> (default %(default)s)")
        action.add_argument("--path", help="local store: the SQLite file")
        action.add_argument("--dsn", help="postgres store: postgresql://user:password@host:port/database")
    p.set_defaults(func=run_lock)


def conn_from_uri(conn_id: str, uri: str) -> ConnInfo:
    """Parse an Airflow connection URI (``scheme://login:password@host:port/schema?extra``)."""
    parts = urlsplit(uri)
    extra: dict[str, Any] = {}
    for pair in filter(None, parts.query.split("&")):
        key, _, value = pair.partition("=")
        extra[unquote(key)] = unquote(value)
    return ConnInfo(conn_id=conn_id, host=parts.hostname, port=parts.port,
                    schema=unquote(parts.path.lstrip("/")) or None,
                    login=unquote(parts.username) if parts.username else None,
                    password=unquote(parts.password) if parts.password else None, extra=extra)


def conn_from_env(conn_id: str) -> ConnInfo | None:
    """Read ``$AIRFLOW_CONN_<ID>`` (JSON or URI), as Airflow's environment-variable backend does."""
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not raw:
        return None
    if raw.lstrip().startswith("{"):
        data = json.loads(raw)
        extra = data.get("extra") or {}
        return ConnInfo(conn_id=conn_id, host=data.get("host"), port=data.get("port"), schema=data.get("schema"),
                        login=data.get("login"), password=data.get("password"),
                        extra=json.loads(extra) if isinstance(extra, str) else extra)
    return conn_from_uri(conn_id, raw)


def open_store(args: argparse.Namespace) -> EndpointLock:
    conn = conn_from_uri(args.conn_id, args.dsn) if args.dsn else conn_from_env(args.conn_id)
    if args.backend == "local":
        return build_backend("lock", "local", conn or ConnInfo(conn_id=args.conn_id), path=args.path)
    if conn is None:
        raise CanaryError(f"the {args.backend} lock store needs a connection: set AIRFLOW_CONN_"
                          f"{args.conn_id.upper()} (JSON or URI) or pass --dsn")
    return build_backend("lock", args.backend, conn)


def describe(lease: Lease, now_s: float) -> str:
    state = "EXPIRED" if lease.expired(now_s) else "active"
    return f"{lease.key}: {state}, held by {lease.describe()}"


def run_lock(args: argparse.Namespace) -> int:
    try:
        store = open_store(args)
        now = time.time()
        if args.action == "list":
            leases = store.list_leases()
            if args.json:
                print(json.dumps([{**lease.to_dict(), "expired": lease.expired(now)} for lease in leases]))
            elif not leases:
                print("no endpoint leases")
            for lease in [] if args.json else leases:
                print(describe(lease, now))
            return 0
        key = endpoint_lease_key(args.serving, args.endpoint)
        dropped = store.break_lease(key)
    except (CanaryError, ValueError) as err:
        print(f"canary lock: {err}", file=sys.stderr)
        return 2
    if dropped is None:
        print(f"no lease on {key}")
    else:
        print(f"released {describe(dropped, now)}")
        if not dropped.expired(now):
            print(f"warning: that lease was active: if {dropped.holder} is still running, its next step takes "
                  "it back, unless another rollout took it first (then it stops without touching traffic)",
                  file=sys.stderr)
    return 0
