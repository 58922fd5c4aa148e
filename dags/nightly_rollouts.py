"""The nightly pick-up of new candidate versions (``nightly_rollouts``; cron from ``$CANARY_NIGHTLY_CRON``)."""

from __future__ import annotations

from canary_airflow.nightly import build_nightly_dag

nightly_rollouts = build_nightly_dag()
