"""Who or what started a rollout run, read from what Airflow tells the run's tasks.

A task sees its run's ``run_type``, ``conf`` and ``triggering_user_name``, not how it was triggered
(Airflow records UI vs REST API as ``triggered_by``, which the task context does not carry). So the
starters of this project say who they are in the conf (:data:`STARTED_BY_KEY`, with an optional
:data:`STARTED_BY_DETAIL_KEY`): ``canary trigger`` (REST API), the nightly DAG and the registry-event
dispatcher. A manual run without the marker was started by a person with the trigger form (or a
REST client that did not say; Airflow's own ``airflow dags trigger`` CLI looks the same); a run of
``airflow dags test`` has the user ``dag_test``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canary.history.model import StartedBy

#: Conf key with which this project's starters name themselves (a :class:`StartedBy` value).
STARTED_BY_KEY = "started_by"
#: Optional conf key with the starter's detail (e.g. which nightly run).
STARTED_BY_DETAIL_KEY = "started_by_detail"
#: The triggering user Airflow records for ``airflow dags test`` (``DAG.test``).
DAG_TEST_USER = "dag_test"


def started_by(run_type: str | None, conf: Mapping[str, Any] | None,
               triggering_user: str | None) -> tuple[StartedBy, str]:
    """Return who or what started a run, and a detail for people (a user, a DAG run, an event).

    :param run_type: the DAG run's ``run_type`` (``manual``, ``scheduled``, ``asset_triggered``, ...).
    :param conf: the run's conf (may carry :data:`STARTED_BY_KEY`).
    :param triggering_user: the run's ``triggering_user_name`` (None for scheduled and asset runs).
    """
    conf = conf or {}
    run_type = str(getattr(run_type, "value", run_type) or "")
    user = triggering_user or ""
    marker = conf.get(STARTED_BY_KEY)
    detail = str(conf.get(STARTED_BY_DETAIL_KEY) or "")
    if isinstance(marker, str) and marker in StartedBy._value2member_map_:
        return StartedBy(marker), detail or (f"user {user}" if user else "")
    if user == DAG_TEST_USER:
        return StartedBy.CLI, "airflow dags test"
    if run_type == "asset_triggered":
        return StartedBy.REGISTRY_EVENT, detail or "an asset event"
    if run_type == "manual":
        return (StartedBy.UI, f"user {user}") if user else (StartedBy.CLI, "a manual run without a user")
    if run_type == "operator_triggered":
        return StartedBy.UNKNOWN, "another DAG" + (f" (run by user {user})" if user else "")
    if run_type:
        return StartedBy.UNKNOWN, f"a {run_type} run"
    return StartedBy.UNKNOWN, ""


__all__ = ["DAG_TEST_USER", "STARTED_BY_DETAIL_KEY", "STARTED_BY_KEY", "started_by"]
