"""The "Rollout report" extra link of a rollout's tasks: the run's Rollout tab in the Airflow UI.

Declared on the operators themselves (``operator_extra_links``), so the worker computes it when the
task ends and stores it in XCom; no plugin registration is needed.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink

from canary.spec.defaults import rollout_tab_path

#: Airflow's own fallback for ``[api] base_url`` when building links from a worker (as ``ti.log_url``).
DEFAULT_BASE_URL = "http://localhost:8080/"


def rollout_tab_url(dag_id: str, run_id: str, *, base_url: str | None = None) -> str:
    """Return the absolute URL of a run's Rollout tab (``<base>/dags/<dag>/runs/<run>/plugin/rollout``).

    :param base_url: the Airflow UI's URL; default ``[api] base_url``, else Airflow's own fallback.
    """
    if base_url is None:
        from airflow.configuration import conf

        base_url = conf.get("api", "base_url", fallback=None) or DEFAULT_BASE_URL
    return f"{base_url.rstrip('/')}/{rollout_tab_path(dag_id, run_id)}"


class RolloutReportLink(BaseOperatorLink):
    """Link a rollout task to its run's Rollout tab (live while the run goes on, the report after)."""

    name = "Rollout report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return rollout_tab_url(ti_key.dag_id, ti_key.run_id)


__all__ = ["RolloutReportLink", "rollout_tab_url"]
