"""Run notes: a verdict written into the DAG run's note, never failing the task that writes it.

The written note itself is checked against a real Airflow in ``tests/airflow_api/test_trigger_api.py``.
"""

from __future__ import annotations

import json
import logging

import pytest

from canary.devstack.processes import free_port
from canary_airflow.run_notes import MAX_NOTE_CHARS, clip_note, write_run_note


class _Dag:
    dag_id = "canary_rollout__m"


CONTEXT = {"dag": _Dag(), "run_id": "manual__1"}


def test_clip_note_keeps_short_notes_and_marks_a_cut():
    assert clip_note("PROMOTED v2") == "PROMOTED v2"
    cut = clip_note("x" * (MAX_NOTE_CHARS + 50))
    assert len(cut) == MAX_NOTE_CHARS and cut.endswith("…")


def test_without_the_connection_nothing_is_written_and_the_log_says_how(monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_CANARY_AIRFLOW_API_DEFAULT", raising=False)
    with caplog.at_level(logging.INFO):
        assert write_run_note(CONTEXT, "REFUSED", log=logging.getLogger("t")) is False
    assert "define connection 'canary_airflow_api_default'" in caplog.text


@pytest.mark.parametrize("conn", [
    lambda port: {"conn_type": "canary_airflow_api", "host": f"http://127.0.0.1:{port}", "login": "a",
                  "password": "b"},
    lambda port: {"conn_type": "canary_airflow_api"},  # no host
])
def test_an_unreachable_or_incomplete_api_is_a_warning_not_a_failure(monkeypatch, caplog, conn):
    monkeypatch.setenv("AIRFLOW_CONN_CANARY_AIRFLOW_API_DEFAULT", json.dumps(conn(free_port())))
    with caplog.at_level(logging.WARNING):
        assert write_run_note(CONTEXT, "ROLLED BACK", log=logging.getLogger("t")) is False
    assert "could not write the run note through canary_airflow_api_default" in caplog.text
    assert '"password": "b"' not in caplog.text and "b@" not in caplog.text
