"""A real serving layer on a free loopback port, with a temporary metrics store, for each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_harness import TOKEN, Served

from canary.serving.app import serving_in_thread


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    db_path = tmp_path / "metrics.db"
    with serving_in_thread(db_path, TOKEN, seed=7) as url:
        yield Served(url=url, db_path=db_path)
