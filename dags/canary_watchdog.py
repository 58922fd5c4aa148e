"""The watchdog of running rollouts (``canary_watchdog``; cron from ``$CANARY_WATCHDOG_CRON``)."""

from __future__ import annotations

from canary_airflow.watchdog import build_watchdog_dag

canary_watchdog = build_watchdog_dag()
