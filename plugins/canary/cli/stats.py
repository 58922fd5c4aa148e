"""``canary plan`` and ``canary replay``: planning and backtesting the sequential tests."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``plan`` and ``replay`` subcommands."""
    p = subparsers.add_parser("plan", help="expected requests and time to a decision for each stage and metric",
                              description="Expected canary requests and wall-clock time to detect each metric's "
                                          "minimum detectable effect and to show non-inferiority on a healthy "
                                          "canary, per stage, with the fixed-horizon n (statsmodels) for "
                                          "comparison.")
    p.add_argument("spec", help="rollout spec (YAML)")
    p.add_argument("--rps", type=float, required=True, help="total requests per second on the endpoint")
    p.add_argument("--baseline-error-rate", type=float, default=0.01, help="stable's error rate (default 0.01)")
    p.add_argument("--baseline-kpi-rate", type=float, default=0.05, help="stable's KPI events per request")
    p.add_argument("--baseline-exceedance-rate", type=float, default=None,
                   help="share of stable requests above a latency threshold (default 1 - quantile)")
    p.add_argument("--log-latency-sd", type=float, default=0.5, help="sd of log-latency (mean-log test)")
    p.add_argument("--baseline-wrong-rate", type=float, default=0.2,
                   help="prediction_quality: stable's share of wrong predictions (default 0.2)")
    p.add_argument("--label-share", type=float, default=1.0,
                   help="prediction_quality: share of requests whose label arrives (default 1)")
    p.add_argument("--segment-share", action="append", default=[], metavar="VALUE=SHARE",
                   help="with analysis.segments: a segment's share of the traffic, e.g. web=0.2 (repeatable; "
                        "default: equal shares)")
    p.add_argument("--json", action="store_true", help="print one JSON object per row instead of a table")
    p.set_defaults(func=run_plan)

    r = subparsers.add_parser("replay", help="backtest a spec's decision policy on recorded metrics (CSV)",
                              description="Evaluate the spec's analysis at every row of DATA.csv; print one JSON "
                                          "line per run and a summary line. Exit 2 on bad input.")
    r.add_argument("spec", help="rollout spec (YAML)")
    r.add_argument("data", help="CSV: run,t,version,requests,errors[,weight][,latency_le_<ms>...]"
                                "[,pred_bin_<i>...][,kpi_events][,labelled,wrong][,segment] (labelled: requests "
                                "whose label arrived, at least label_delay old)")
    r.set_defaults(func=run_replay)


def _spec(path: str) -> Any:
    from canary.errors import SpecError
    from canary.spec.model import load_spec

    try:
        return load_spec(path)
    except SpecError as err:
        print(str(err), file=sys.stderr)
        return None


def run_plan(args: argparse.Namespace) -> int:
    from canary.stats.budget import error_budget
    from canary.stats.plan import plan

    spec = _spec(args.spec)
    if spec is None:
        return 2
    for name in ("baseline_error_rate", "baseline_kpi_rate", "baseline_exceedance_rate", "baseline_wrong_rate"):
        v = getattr(args, name)
        if v is not None and not 0.0 < v < 1.0:
            print(f"--{name.replace('_', '-')} must be in (0, 1), got {v}", file=sys.stderr)
            return 2
    if args.rps <= 0:
        print(f"--rps must be > 0, got {args.rps}", file=sys.stderr)
        return 2
    if not 0.0 < args.label_share <= 1.0:
        print(f"--label-share must be in (0, 1], got {args.label_share}", file=sys.stderr)
        return 2
    shares = _segment_shares(args.segment_share, spec)
    if isinstance(shares, str):
        print(shares, file=sys.stderr)
        return 2
    rows = plan(spec, rps=args.rps, baseline_error_rate=args.baseline_error_rate,
                baseline_kpi_rate=args.baseline_kpi_rate, baseline_exceedance_rate=args.baseline_exceedance_rate,
                log_latency_sd=args.log_latency_sd, segment_shares=shares,
                baseline_wrong_rate=args.baseline_wrong_rate, label_share=args.label_share)
    if args.json:
        for row in rows:
            print(json.dumps(row.to_dict()))
        return 0

    def n(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f}"

    def d(x: float | None) -> str:
        if x is None:
            return "never"
        return f"{x:.0f}s" if x < 120 else (f"{x / 60:.1f}m" if x < 7200 else f"{x / 3600:.1f}h")

    print(f"{spec.model}: {args.rps:g} req/s, alpha {spec.analysis.alpha:g}, baseline error rate "
          f"{args.baseline_error_rate:g}")
    print(f"error budget: {error_budget(spec.analysis).describe()}")
    segmented = spec.analysis.segments is not None
    header = ("stage", "weight", *(("segment", "share") if segmented else ()), "metric", "test", "detect n",
              "detect t", "promote n", "promote t", "fixed n", "stage decision")

    def segment_cells(r: Any) -> tuple[str, ...]:
        if not segmented:
            return ()
        if r.segment is None:
            return ("overall", "100%")
        return (r.segment, f"{100 * r.segment_share:.0f}%" + ("" if r.required else " (not required)"))

    table = [header] + [(str(r.stage), f"{r.weight_pct}%", *segment_cells(r), r.metric, r.test,
                         n(r.detect_requests), d(r.detect_s), n(r.promote_requests), d(r.promote_s),
                         n(r.fixed_horizon_requests), d(r.stage_decision_s)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("(n = canary requests; detect = mean to detect the MDE; promote = mean to show non-inferiority on a "
          "healthy canary; fixed = fixed-horizon n at power 0.9)")
    for r in rows:
        if r.warning:
            print(f"warning: {r.warning}")
    return 0


def _segment_shares(given: list[str], spec: Any) -> dict[str, float] | None | str:
    """Parse ``--segment-share VALUE=SHARE`` flags; a string is the problem to print."""
    if not given:
        return None
    segments = spec.analysis.segments
    if segments is None:
        return "--segment-share: the spec has no analysis.segments"
    shares: dict[str, float] = {}
    for item in given:
        value, eq, share = item.partition("=")
        try:
            shares[value] = float(share)
        except ValueError:
            shares[value] = -1.0
        if not eq or value not in segments.values or not 0.0 <= shares[value] <= 1.0:
            return (f"--segment-share {item!r}: give VALUE=SHARE with VALUE one of {segments.values} and SHARE in "
                    "[0, 1], e.g. web=0.2")
    if sum(shares.values()) > 1.0 + 1e-9:
        return f"--segment-share: the shares add up to {sum(shares.values()):g}, more than 1"
    return shares


def run_replay(args: argparse.Namespace) -> int:
    from canary.stats.replay import replay
    from canary.stats.replay_input import ReplayInputError, load_csv

    spec = _spec(args.spec)
    if spec is None:
        return 2
    started = time.monotonic()
    try:
        df, layout = load_csv(args.data, spec)
    except ReplayInputError as err:
        print(f"{args.data}: {err}", file=sys.stderr)
        return 2
    from canary.progress import track

    counts: Counter[str] = Counter()
    for result in track(replay(spec, df, layout), total=int(df["run"].nunique()), description="replaying runs"):
        counts[result["decision"]] += 1
        print(json.dumps(result, default=_json_default))
    summary = {"runs": sum(counts.values()),
               **{k: counts.get(k, 0) for k in ("rollback", "promote", "halt", "timeout", "continue")}}
    print(json.dumps(summary))
    print(f"replayed {len(df)} rows in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


def _json_default(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
