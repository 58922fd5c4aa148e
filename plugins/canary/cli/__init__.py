"""The ``canary`` command. Each subcommand lives in its own module, imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module with ``register(subparsers)``, one-line help). Modules are imported lazily
#: so that ``canary validate`` never pays for FastAPI, scipy or Airflow.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("canary.cli.validate", "check rollout specs; exit 1 with one line per problem"),
    "serve": ("canary.serving.cli", "run the embedded serving layer (model endpoints + admin API)"),
    "traffic": ("canary.serving.cli", "send synthetic prediction traffic to the embedded serving layer"),
    "plan": ("canary.cli.stats", "expected requests and time to a decision for each stage and metric"),
    "replay": ("canary.cli.stats", "backtest a spec's decision policy on recorded metrics (CSV)"),
    "trigger": ("canary.cli.trigger", "start a rollout through the Airflow REST API; --wait follows it"),
    "history": ("canary.cli.history", "list rollouts (newest first) or print one rollout's timeline"),
    "lock": ("canary.cli.lock", "list endpoint leases (one rollout per endpoint) or release a stale one"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only ``command``'s module is imported (all are listed in ``--help``)."""
    parser = argparse.ArgumentParser(prog="canary", description="Statistically gated canary rollouts of ML models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in SUBCOMMANDS:
        importlib.import_module(SUBCOMMANDS[command][0]).register(sub)
    else:
        for name, (_module, help_text) in SUBCOMMANDS.items():
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
