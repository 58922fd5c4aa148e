"""Synthetic prediction traffic: many users, feature vectors from the models' generator, at a target rate.

Requests go out from a pool of worker threads, each holding one keep-alive ``http.client`` connection:
on this workload that costs a fraction of the CPU of an async client, which matters when the generator,
the server and Airflow share a small machine.
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from canary.serving.model import sample_features
from canary.serving.state import user_attributes

#: Failures of a reused keep-alive connection that the server closed while it was idle.
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True, kw_only=True)
class TrafficStats:
    """What a traffic run sent and got back.

    :param errors: HTTP 500 answers (injected errors); ``unavailable``: HTTP 503 (no version with traffic);
        ``other``: any other status; ``failed``: no HTTP answer at all (connection error, timeout).
    :param by_version: answers (200 or 500) per version that gave them.
    """

    sent: int
    ok: int
    errors: int
    unavailable: int
    other: int
    failed: int
    by_version: Mapping[str, int] = field(default_factory=dict)
    duration_s: float

    @property
    def achieved_rps(self) -> float:
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "ok": self.ok, "errors": self.errors, "unavailable": self.unavailable,
                "other": self.other, "failed": self.failed, "by_version": dict(self.by_version),
                "duration_s": round(self.duration_s, 3), "achieved_rps": round(self.achieved_rps, 1)}


class _Worker(threading.Thread):
    """Send the requests of a job queue over one keep-alive connection; count the outcomes."""

    def __init__(self, base_url: str, path: str, jobs: queue.Queue[tuple[str, str] | None], timeout_s: float) -> None:
        super().__init__(name="canary-traffic", daemon=True)
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base URL must be http(s)://host[:port], got {base_url!r}")
        self._connection_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        self._address = (url.hostname, url.port)
        self._path = url.path.rstrip("/") + path
        self._jobs = jobs
        self._timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self.outcomes: Counter[str] = Counter()
        self.by_version: Counter[str] = Counter()

    def run(self) -> None:
        while (job := self._jobs.get()) is not None:
            user_id, body = job
            try:
                status, payload = self._send(user_id, body)
            except (OSError, http.client.HTTPException):
                self.outcomes["failed"] += 1
                continue
            kind = {200: "ok", 500: "errors", 503: "unavailable"}.get(status, "other")
            self.outcomes[kind] += 1
            if kind in ("ok", "errors"):
                self.by_version[json.loads(payload).get("version", "?")] += 1
        if self._conn is not None:
            self._conn.close()

    def _send(self, user_id: str, body: str) -> tuple[int, bytes]:
        reused = self._conn is not None
        try:
            return self._request(user_id, body)
        except _STALE_CONNECTION:
            if not reused:
                raise
            return self._request(user_id, body)  # the request never reached the server: once more, fresh

    def _request(self, user_id: str, body: str) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = self._connection_class(*self._address, timeout=self._timeout_s)
        try:
            self._conn.request("POST", self._path, body=body,
                               headers={"Content-Type": "application/json", "X-User-Id": user_id})
            response = self._conn.getresponse()
            return response.status, response.read()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise


def run_traffic(base_url: str, endpoint: str, rps: float, duration_s: float | None = None,
                stop_event: threading.Event | None = None, *, seed: int = 0, users: int = 5000,
                max_in_flight: int = 32, timeout_s: float = 10.0) -> TrafficStats:
    """Send prediction requests at ``rps`` until ``duration_s`` has passed or ``stop_event`` is set.

    Each request comes from one of ``users`` user ids drawn at random (``X-User-Id``), so sticky routing
    sees a realistic population, with that user's attributes (device, region: see
    :func:`canary.serving.state.user_attributes`). At most ``max_in_flight`` requests are outstanding: when the server is
    slower than that, the achieved rate drops instead of a backlog growing. 5xx answers and connection
    errors are counted, never raised.
    """
    if rps <= 0:
        raise ValueError(f"rps must be > 0, got {rps}")
    if duration_s is None and stop_event is None:
        raise ValueError("give duration_s or stop_event: traffic must be bounded")
    rng = np.random.default_rng(seed)
    jobs: queue.Queue[tuple[str, str] | None] = queue.Queue(maxsize=max_in_flight)
    path = f"/v1/endpoints/{quote(endpoint, safe='')}/predict"
    workers = [_Worker(base_url, path, jobs, timeout_s) for _ in range(max_in_flight)]
    for worker in workers:
        worker.start()
    start = time.monotonic()
    sent = 0
    try:
        while stop_event is None or not stop_event.is_set():
            if duration_s is not None and sent / rps >= duration_s:
                break
            wait_s = start + sent / rps - time.monotonic()
            if wait_s > 0:
                if stop_event is None:
                    time.sleep(wait_s)
                else:
                    stop_event.wait(wait_s)
                continue
            user_id = f"user-{int(rng.integers(users)):05d}"
            jobs.put((user_id, json.dumps({"features": sample_features(rng, 1)[0].tolist(),
                                           "attributes": user_attributes(user_id)})))
            sent += 1
    finally:
        for _ in workers:
            jobs.put(None)
        for worker in workers:
            worker.join()
    outcomes = sum((w.outcomes for w in workers), Counter())
    by_version = sum((w.by_version for w in workers), Counter())
    return TrafficStats(sent=sent, ok=outcomes["ok"], errors=outcomes["errors"], unavailable=outcomes["unavailable"],
                        other=outcomes["other"], failed=outcomes["failed"], by_version=dict(by_version),
                        duration_s=time.monotonic() - start)
