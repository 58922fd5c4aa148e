"""Synthetic prediction traffic: many users, feature vectors from the models' generator, at a target rate.

Requests go out from a pool of worker threads, each holding one keep-alive ``http.client`` connection:
on this workload that costs a fraction of the CPU of an async client, which matters when the generator,
the server and Airflow share a small machine.
"""

from __future__ import annotations

import heapq
import http.client
import json
import queue
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from canary.serving.model import sample_features, true_probability
from canary.serving.state import user_attributes
from canary.spec.defaults import OUTCOME_PATTERN

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
    #: Labels sent back (:class:`LabelFeedback`): accepted, refused or failed, and still waiting at the end.
    labels_sent: int = 0
    labels_refused: int = 0
    labels_pending: int = 0

    @property
    def achieved_rps(self) -> float:
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "ok": self.ok, "errors": self.errors, "unavailable": self.unavailable,
                "other": self.other, "failed": self.failed, "by_version": dict(self.by_version),
                "duration_s": round(self.duration_s, 3), "achieved_rps": round(self.achieved_rps, 1),
                "labels_sent": self.labels_sent, "labels_refused": self.labels_refused,
                "labels_pending": self.labels_pending}


@dataclass(frozen=True, kw_only=True)
class LabelFeedback:
    """Send the ground truth of answered requests back, late: ``share`` of them, ``delay_s`` after the answer.

    The label is drawn from the data generator's true probability for the request's features
    (:func:`canary.serving.model.true_probability`), whichever version answered, so a version that predicts
    worse is wrong more often on the same population.

    With ``outcome`` (e.g. ``conversion``), every answered request also converts with probability
    :data:`CONVERSION_BASE`, plus :data:`CONVERSION_LIFT` when its prediction was right (users act on good
    predictions), and a conversion is sent as that business outcome (value 1), as late as the label; a version
    that predicts worse converts less.
    """

    token: str
    share: float = 1.0
    delay_s: float = 0.0
    outcome: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0 or self.delay_s < 0 or not self.token:
            raise ValueError(f"label feedback: share must be in (0, 1], delay_s >= 0 and a token given, got "
                             f"share={self.share}, delay_s={self.delay_s}")
        if self.outcome is not None and not re.match(OUTCOME_PATTERN, self.outcome):
            raise ValueError(f"label feedback: outcome {self.outcome!r} must match {OUTCOME_PATTERN}")


#: Synthetic business outcome: P(conversion) = CONVERSION_BASE + CONVERSION_LIFT x (the prediction was right).
CONVERSION_BASE = 0.02
CONVERSION_LIFT = 0.2


class _LabelSender(threading.Thread):
    """Post labels when they are due, over one keep-alive connection (``POST .../feedback``)."""

    def __init__(self, base_url: str, endpoint: str, feedback: LabelFeedback, timeout_s: float) -> None:
        super().__init__(name="canary-labels", daemon=True)
        url = urlsplit(base_url)
        self._address = (url.hostname, url.port)
        self._https = url.scheme == "https"
        self._path = url.path.rstrip("/") + f"/v1/endpoints/{quote(endpoint, safe='')}/feedback"
        self._headers = {"Content-Type": "application/json", "Authorization": f"Bearer {feedback.token}"}
        self._timeout_s = timeout_s
        self._due: list[tuple[float, str, int | None, str | None]] = []
        self._cond = threading.Condition()
        self._closing = False
        self.sent = self.refused = self.pending = 0

    def add(self, due_s: float, request_id: str, label: int | None, outcome: str | None = None) -> None:
        """Send ``label`` and/or ``outcome`` (value 1) of ``request_id`` at ``due_s`` (monotonic seconds)."""
        with self._cond:
            heapq.heappush(self._due, (due_s, request_id, label, outcome))
            self._cond.notify()

    def close(self) -> None:
        """Send what is due, drop what is not (counted as pending), and stop."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self.join()

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while True:
            with self._cond:
                while not self._closing and (not self._due or self._due[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._due else max(self._due[0][0] - time.monotonic(), 0.0))
                if self._closing and (not self._due or self._due[0][0] > time.monotonic()):
                    self.pending = len(self._due)
                    break
                _, request_id, label, outcome = heapq.heappop(self._due)
            body = json.dumps({"request_id": request_id, **({"label": label} if label is not None else {}),
                               **({"outcome": outcome, "value": 1.0} if outcome is not None else {})})
            try:
                if conn is None:
                    cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                    conn = cls(*self._address, timeout=self._timeout_s)
                conn.request("POST", self._path, body=body, headers=self._headers)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    self.sent += 1
                else:
                    self.refused += 1
            except (OSError, http.client.HTTPException):
                self.refused += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


class _Worker(threading.Thread):
    """Send the requests of a job queue over one keep-alive connection; count the outcomes."""

    def __init__(self, base_url: str, path: str, jobs: queue.Queue[tuple[str, str, float] | None], timeout_s: float,
                 labels: _LabelSender | None = None, feedback: LabelFeedback | None = None, seed: int = 0) -> None:
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
        self._labels, self._feedback = labels, feedback
        self._rng = random.Random(seed)

    def run(self) -> None:
        while (job := self._jobs.get()) is not None:
            user_id, body, p_true = job
            try:
                status, payload = self._send(user_id, body)
            except (OSError, http.client.HTTPException):
                self.outcomes["failed"] += 1
                continue
            kind = {200: "ok", 500: "errors", 503: "unavailable"}.get(status, "other")
            self.outcomes[kind] += 1
            if kind in ("ok", "errors"):
                answer = json.loads(payload)
                self.by_version[answer.get("version", "?")] += 1
                if kind == "ok" and self._labels is not None and self._feedback is not None:
                    self._give_feedback(answer, p_true, self._labels, self._feedback)
        if self._conn is not None:
            self._conn.close()

    def _give_feedback(self, answer: dict[str, Any], p_true: float, labels: _LabelSender,
                       feedback: LabelFeedback) -> None:
        truth = int(self._rng.random() < p_true)
        label = truth if self._rng.random() < feedback.share else None
        outcome = None
        if feedback.outcome is not None:
            right = answer.get("label") == truth
            if self._rng.random() < CONVERSION_BASE + (CONVERSION_LIFT if right else 0.0):
                outcome = feedback.outcome
        if label is not None or outcome is not None:
            labels.add(time.monotonic() + feedback.delay_s, answer["request_id"], label, outcome)

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
                max_in_flight: int = 32, timeout_s: float = 10.0,
                feedback: LabelFeedback | None = None) -> TrafficStats:
    """Send prediction requests at ``rps`` until ``duration_s`` has passed or ``stop_event`` is set.

    Each request comes from one of ``users`` user ids drawn at random (``X-User-Id``), so sticky routing
    sees a realistic population, with that user's attributes (device, region: see
    :func:`canary.serving.state.user_attributes`). At most ``max_in_flight`` requests are outstanding: when the server is
    slower than that, the achieved rate drops instead of a backlog growing. 5xx answers and connection
    errors are counted, never raised. With ``feedback``, answered requests' true labels are sent back late
    (:class:`LabelFeedback`); labels not yet due when the traffic stops are dropped (``labels_pending``).
    """
    if rps <= 0:
        raise ValueError(f"rps must be > 0, got {rps}")
    if duration_s is None and stop_event is None:
        raise ValueError("give duration_s or stop_event: traffic must be bounded")
    rng = np.random.default_rng(seed)
    jobs: queue.Queue[tuple[str, str, float] | None] = queue.Queue(maxsize=max_in_flight)
    path = f"/v1/endpoints/{quote(endpoint, safe='')}/predict"
    labels = _LabelSender(base_url, endpoint, feedback, timeout_s) if feedback is not None else None
    if labels is not None:
        labels.start()
    workers = [_Worker(base_url, path, jobs, timeout_s, labels, feedback, seed=seed * 1000 + i)
               for i in range(max_in_flight)]
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
            features = sample_features(rng, 1)[0]
            jobs.put((user_id, json.dumps({"features": features.tolist(), "attributes": user_attributes(user_id)}),
                      float(true_probability(features))))
            sent += 1
    finally:
        for _ in workers:
            jobs.put(None)
        for worker in workers:
            worker.join()
        if labels is not None:
            labels.close()
    outcomes = sum((w.outcomes for w in workers), Counter())
    by_version = sum((w.by_version for w in workers), Counter())
    return TrafficStats(sent=sent, ok=outcomes["ok"], errors=outcomes["errors"], unavailable=outcomes["unavailable"],
                        other=outcomes["other"], failed=outcomes["failed"], by_version=dict(by_version),
                        duration_s=time.monotonic() - start, labels_sent=labels.sent if labels else 0,
                        labels_refused=labels.refused if labels else 0, labels_pending=labels.pending if labels else 0)
