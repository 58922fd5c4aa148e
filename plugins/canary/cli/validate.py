"""``canary validate PATH...``: check rollout specs before they reach Airflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from canary.errors import SpecError
from canary.rollout.lease import lock_store_conflicts
from canary.spec.model import load_spec, spec_files


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check rollout specs; exit 1 with one line per problem",
                       description="Validate rollout spec files (or every spec in a directory).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="spec file or directory of specs")
    p.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    files: list[Path] = []
    for raw in args.paths:
        path = Path(raw)
        files.extend(spec_files(path) if path.is_dir() else [path])
    if not files:
        print(f"no spec files under {', '.join(args.paths)}", file=sys.stderr)
        return 1
    bad = 0
    valid = []
    for path in files:
        try:
            spec = load_spec(path)
        except SpecError as err:
            bad += 1
            print(err, file=sys.stderr)
        else:
            valid.append((str(path), spec))
            weights = " -> ".join(str(s.weight) for s in spec.stages)
            print(f"{path}: ok ({spec.dag_id}, stages {weights})")
    for source, field, message in lock_store_conflicts(valid):  # across files: one endpoint, one lock store
        bad += 1
        print(SpecError(source, [(field, message)]), file=sys.stderr)
    return 1 if bad else 0
