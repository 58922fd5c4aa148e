"""Write a rollout's verdict into its DAG run's note, where the Airflow UI shows it next to the run.

A task cannot edit its own run's note through the execution API, so this goes through the public REST
API with a connection of its own (``canary_airflow_api_default``: host = the API server's URL, login and
password of a user allowed to edit DAG runs, or ``extra.token``). Without that connection nothing is
written and the verdict stays in the task log, XCom and the report. A note that cannot be written never
fails the task: the note is a convenience, the verdict is decided elsewhere.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

#: Airflow caps a DAG run note at 1,000 characters.
MAX_NOTE_CHARS = 1000


def clip_note(text: str) -> str:
    """Return ``text`` cut to Airflow's note limit, marking the cut."""
    return text if len(text) <= MAX_NOTE_CHARS else text[:MAX_NOTE_CHARS - 1] + "…"


class CanaryAirflowApiHook(BaseHook):
    """The Airflow REST API (v2), used to write rollout verdicts into run notes.

    :param conn_id: connection with the API server's URL in ``host`` and credentials.
    """

    conn_name_attr = "conn_id"
    default_conn_name = "canary_airflow_api_default"
    conn_type = "canary_airflow_api"
    hook_name = "Canary: Airflow REST API (run notes)"

    def __init__(self, conn_id: str | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name

    @cached_property
    def client(self) -> Any:
        return api_client(self.get_connection(self.conn_id), self.conn_id)

    def set_run_note(self, dag_id: str, run_id: str, note: str) -> None:
        """Replace the note of one DAG run (raises :class:`canary.cli.trigger.AirflowApiError`)."""
        self.client.request("PATCH", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}",
                            json_body={"note": clip_note(note)})


def api_client(conn: Any, conn_id: str) -> Any:
    """Return a :class:`canary.cli.trigger.AirflowClient` for an Airflow API connection.

    ``host`` (and ``port``, ``schema``) is the API server's URL; ``login``/``password`` or ``extra.token``
    authenticate; ``extra.timeout_s`` (default 10) bounds each request.
    """
    from canary.airflow_api import AirflowClient
    from canary.backends.base import ConnInfo

    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    info = ConnInfo(conn_id=conn_id, host=conn.host, port=conn.port, schema=conn.schema)
    return AirflowClient(info.base_url(), token=extra.get("token") or None, username=conn.login or None,
                         password=conn.password or None, timeout_s=float(extra.get("timeout_s", 10)))


def write_run_note(context: Any, note: str, *, log: Any, conn_id: str | None = None) -> bool:
    """Write ``note`` on the current DAG run; return whether it was written (never raises)."""
    from canary.airflow_api import AirflowApiError

    hook = CanaryAirflowApiHook(conn_id)
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    try:
        hook.set_run_note(dag_id, run_id, note)
    except AirflowNotFoundException:
        log.info("run note not written: define connection %r (Airflow API URL and a user allowed to edit "
                 "DAG runs) to have rollout verdicts written into run notes", hook.conn_id)
        return False
    except (AirflowApiError, ValueError) as err:  # ValueError: a connection without host
        log.warning("could not write the run note through %s: %s", hook.conn_id, err)
        return False
    log.info("run note: %s", clip_note(note))
    return True


__all__ = ["MAX_NOTE_CHARS", "CanaryAirflowApiHook", "api_client", "clip_note", "write_run_note"]
