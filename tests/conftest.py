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


@pytest.fixture(autouse=True)
def _own_history_store(monkeypatch, tmp_path_factory):
    """Each test gets its own rollout history (SQLite): looks recorded by one test never show in another."""
    path = tmp_path_factory.mktemp("history") / "canary_history.db"
    monkeypatch.setenv("CANARY_HISTORY_URL", f"sqlite:///{path}")


def xdist_scope_of(nodeid: str) -> str:
    """Return the scheduling unit of a test for ``make test`` (``pytest -n 3``): one worker runs a unit.

    Everything under ``tests/airflow_api`` shares one session-scoped ``airflow standalone``, so it is one
    unit; every other test file is one unit, so its module-scoped servers start once.
    """
    path = nodeid.split("::", 1)[0]
    return "tests/airflow_api" if path.startswith("tests/airflow_api/") else path


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope_of(nodeid)

    return FileScheduling(config, log)


#: Scheduling units that take minutes, started first so the many short ones fill the gaps around them.
LONG_UNITS_FIRST = ("tests/airflow_api/", "tests/distributed/", "tests/e2e/")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        return next((i for i, prefix in enumerate(LONG_UNITS_FIRST) if item.nodeid.startswith(prefix)),
                    len(LONG_UNITS_FIRST))

    items.sort(key=rank)  # stable: the order within a unit is kept
