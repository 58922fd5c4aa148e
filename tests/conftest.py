"""Shared test setup: Airflow points at this checkout and a throwaway AIRFLOW_HOME."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from services import require_service  # noqa: F401 - re-exported for older imports

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "dags")]

# Before anything imports Airflow: a private home, this checkout's DAGs/plugins, no examples.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="canary-airflow-home-"))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")

SPECS_DIR = ROOT / "include" / "rollouts"


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _own_lock_store(monkeypatch, tmp_path_factory):
    """Each test gets its own local endpoint-lease store: a lease left by one test never blocks another."""
    monkeypatch.setenv("CANARY_LOCK_PATH", str(tmp_path_factory.mktemp("locks") / "canary_locks.db"))


def xdist_group_of(rel: Path) -> str:
    """Return the xdist group of a test file (``make test`` runs ``pytest -n 3 --dist loadgroup``).

    Everything under ``tests/airflow_api`` shares one session-scoped ``airflow standalone``, so it runs on
    one worker; every other file is one group, so its module-scoped servers start once.
    """
    return "airflow_api" if rel.parts[0] == "airflow_api" else rel.as_posix()


def pytest_collection_modifyitems(config, items):
    for item in items:
        rel = Path(str(item.path)).resolve().relative_to(ROOT / "tests")
        item.add_marker(pytest.mark.xdist_group(xdist_group_of(rel)))
