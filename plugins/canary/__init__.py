"""canary-rollouts core: specs, decisions, statistics and backends. Never imports Airflow."""

from __future__ import annotations

__version__ = "0.1.0"
