"""Client side of a serving layer under test: admin calls, concurrent predictions and store reads."""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

TOKEN = "test-admin-token"
FEATURES = [0.3, -1.2, 0.8, 0.0, 1.5, -0.4, 0.2, 0.9]


@dataclass(frozen=True)
class Served:
    """Handle on a running server: admin calls, concurrent predictions and store reads."""

    url: str
    db_path: Path

    def admin(self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, f"{self.url}/admin{path}", headers=headers, timeout=10, **kwargs)

    def setup(self, endpoint: str, weights: dict[str, int]) -> None:
        """Deploy the versions of ``weights`` on ``endpoint`` and set the split."""
        for version in weights:
            self.admin("PUT", f"/endpoints/{endpoint}/versions/{version}").raise_for_status()
        self.admin("PUT", f"/endpoints/{endpoint}/weights", json={"weights": weights}).raise_for_status()

    def predict_many(self, endpoint: str, user_ids: Sequence[str], features: Sequence[float] = FEATURES,
                     *, workers: int = 16, attributes: Any = None) -> list[tuple[int, dict[str, Any]]]:
        """POST one prediction per user id, concurrently; return ``(status, body)`` in input order."""
        url = urlsplit(self.url)
        local = threading.local()
        opened: list[http.client.HTTPConnection] = []
        body = json.dumps({"features": list(features), **({"attributes": attributes} if attributes is not None else {})})

        def one(user_id: str) -> tuple[int, dict[str, Any]]:
            if not hasattr(local, "conn"):
                local.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
                opened.append(local.conn)
            local.conn.request("POST", f"/v1/endpoints/{endpoint}/predict", body=body,
                               headers={"Content-Type": "application/json", "X-User-Id": user_id})
            response = local.conn.getresponse()
            return response.status, json.loads(response.read())

        try:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(one, user_ids))
        finally:
            for conn in opened:
                conn.close()

    def flush(self) -> None:
        self.admin("POST", "/flush").raise_for_status()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Flush, then query the metrics store."""
        self.flush()
        with closing(sqlite3.connect(self.db_path)) as db:
            return db.execute(sql, params).fetchall()
