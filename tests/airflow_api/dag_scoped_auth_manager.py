"""A test-only auth manager: Airflow's simple one, with some DAGs hidden from some users.

Airflow's ``SimpleAuthManager`` grants by role alone (a viewer reads every DAG), so it cannot show that
the rollout pages honour per-DAG permissions. This subclass denies the users and DAGs named in
``$CANARY_TEST_DENIED_DAGS`` (``user:dag_id[,user:dag_id...]``) every access to those DAGs, exactly as
a real auth manager (FAB, Keycloak) with per-DAG roles would; everything else is the simple manager's.
It is loaded by an ``airflow api-server`` started with ``AIRFLOW__CORE__AUTH_MANAGER`` naming it and this
folder on ``PYTHONPATH`` (tests/airflow_api/test_ui_auth_api.py).
"""

from __future__ import annotations

import os

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

DENIED_ENV = "CANARY_TEST_DENIED_DAGS"


def denied_pairs(value: str | None) -> set[tuple[str, str]]:
    """Return the ``(user, dag_id)`` pairs of a ``user:dag_id,...`` list (empty entries ignored)."""
    pairs = set()
    for item in (value or "").split(","):
        if item.strip():
            user, _, dag_id = item.strip().partition(":")
            if not user or not dag_id:
                raise ValueError(f"{DENIED_ENV}: {item!r} is not user:dag_id")
            pairs.add((user, dag_id))
    return pairs


class DagScopedAuthManager(SimpleAuthManager):
    """``SimpleAuthManager`` that also refuses the ``(user, dag_id)`` pairs of ``$CANARY_TEST_DENIED_DAGS``."""

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        if details is not None and details.id and (user.get_name(), details.id) in denied_pairs(
                os.environ.get(DENIED_ENV)):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
