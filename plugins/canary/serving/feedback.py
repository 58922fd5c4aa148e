"""Late feedback on served requests: ground-truth labels and business outcomes, joined to who served them.

``POST /v1/endpoints/{endpoint}/feedback`` (``Authorization: Bearer <feedback token>``) takes::

    {"request_id": "...", "label": 1}                                 the true class of the request
    {"request_id": "...", "outcome": "conversion", "value": 1.0}      a business outcome (click, chargeback...)
    {"request_id": "...", "label": 0, "outcome": "refund", "value": 12.5}

and stores one row per label or outcome in table ``feedback`` of the metrics store, with the version and
segment that *served* the request (never a mirrored answer) and the request's arrival time::

    ts          REAL     when the feedback arrived, epoch seconds
    request_ts  REAL     the request's arrival time
    endpoint, version, segment, request_id   TEXT
    kind        TEXT     ``label`` or ``outcome``
    name        TEXT     ``label``, or the outcome's name
    value       REAL     the label (0 or 1) or the outcome's value

Answers: 200 with the stored rows; 401 without the token; 404 for a request this endpoint never served;
409 for a label (or a named outcome) already given for that request; 410 past the retention window;
413 for a body over :data:`MAX_BODY_BYTES`; 422 for a malformed body, naming the field; 429 above the
rate limit (with ``Retry-After``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from canary.serving.state import AdminError
from canary.serving.store import TABLE
from canary.spec import defaults
from canary.spec.durations import format_duration

FEEDBACK_TABLE = "feedback"
FEEDBACK_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_ts REAL NOT NULL,
    endpoint TEXT NOT NULL,
    version TEXT NOT NULL,
    segment TEXT NOT NULL,
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    UNIQUE (endpoint, request_id, kind, name)
);
CREATE INDEX IF NOT EXISTS {FEEDBACK_TABLE}_endpoint_version_request_ts ON {FEEDBACK_TABLE} (endpoint, version, request_ts);
"""
#: The largest feedback body accepted (one request's label and outcome fit in a few hundred bytes).
MAX_BODY_BYTES = 4096
#: Feedback for a request older than this is refused (410): the rollouts that could use it are over.
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
#: Sustained feedback requests per second, and the burst above it, before 429.
DEFAULT_RATE_PER_S = 500.0
DEFAULT_BURST = 1000
#: Served requests remembered in memory (their answers may still be on their way to the store).
RECENT_REQUESTS = 200_000
OUTCOME_PATTERN = defaults.OUTCOME_PATTERN


class FeedbackBody(BaseModel):
    """One request's late feedback: a label, an outcome, or both."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    label: int | None = Field(None, ge=0, le=1, description="the true class (the models are binary)")
    outcome: str | None = Field(None, pattern=OUTCOME_PATTERN, description="a business outcome's name")
    value: FiniteFloat | None = Field(None, description="the outcome's value (1 for an event that happened)")

    @model_validator(mode="after")
    def _something_to_say(self) -> FeedbackBody:
        if self.label is None and self.outcome is None:
            raise ValueError("give a label, or an outcome with its value (or both)")
        if (self.outcome is None) != (self.value is None):
            raise ValueError("outcome and value go together")
        return self

    def rows(self) -> list[tuple[str, str, float]]:
        """Return ``(kind, name, value)`` per piece of feedback."""
        rows = [("label", "label", float(self.label))] if self.label is not None else []
        if self.outcome is not None and self.value is not None:
            rows.append(("outcome", self.outcome, float(self.value)))
        return rows


@dataclass(frozen=True, slots=True)
class Served:
    """Who served a request, and when it arrived."""

    version: str
    segment: str
    ts: float


class RateLimiter:
    """A token bucket: ``rate_per_s`` sustained, ``burst`` at once. Thread-safe."""

    def __init__(self, rate_per_s: float, burst: int, clock=time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate limit needs rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.rate_per_s, self.burst, self._clock = rate_per_s, burst, clock
        self._tokens, self._at = float(burst), clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take one token; return 0, or the seconds until one is available (nothing taken)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate_per_s)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate_per_s


class FeedbackLedger:
    """Remembers who served recent requests and stores their feedback (table ``feedback`` of the store)."""

    def __init__(self, path: str | Path, *, retention_s: float = DEFAULT_RETENTION_S,
                 recent: int = RECENT_REQUESTS, clock=time.time) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self._clock = clock
        self._recent: OrderedDict[tuple[str, str], Served] = OrderedDict()
        self._recent_max = recent
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(FEEDBACK_SCHEMA)

    def served(self, endpoint: str, request_id: str, served: Served) -> None:
        """Remember that ``served.version`` answered ``request_id`` (called on the request path)."""
        with self._lock:
            self._recent[(endpoint, request_id)] = served
            if len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)

    def _lookup(self, endpoint: str, request_id: str) -> Served | None:
        with self._lock:
            found = self._recent.get((endpoint, request_id))
            if found is not None:
                return found
            row = self._conn.execute(f"SELECT version, segment, ts FROM {TABLE} WHERE request_id = ? AND endpoint = ? "
                                     "AND mirrored = 0 LIMIT 1", (request_id, endpoint)).fetchone()
        return Served(*row) if row else None

    def add(self, endpoint: str, body: FeedbackBody) -> list[dict[str, object]]:
        """Store ``body``'s feedback on ``endpoint``; raise :class:`AdminError` (404, 409, 410) otherwise."""
        served = self._lookup(endpoint, body.request_id)
        if served is None:
            raise AdminError(404, f"request_id: endpoint {endpoint!r} served no request {body.request_id!r}")
        now = self._clock()
        age_s = now - served.ts
        if age_s > self.retention_s:
            raise AdminError(410, f"request_id: request {body.request_id!r} arrived {format_duration(age_s)} ago, "
                                  f"beyond the feedback retention of {format_duration(self.retention_s)}")
        rows = [(now, served.ts, endpoint, served.version, served.segment, body.request_id, kind, name, value)
                for kind, name, value in body.rows()]
        try:
            with self._lock, self._conn:
                self._conn.executemany(
                    f"INSERT INTO {FEEDBACK_TABLE} (ts, request_ts, endpoint, version, segment, request_id, kind, "
                    "name, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError as err:
            given = ", ".join(name for _kind, name, _value in body.rows())
            raise AdminError(409, f"request {body.request_id!r} already has feedback {given!r}: feedback is "
                                  "given once per request and name (nothing of this body was stored)") from err
        return [{"request_id": body.request_id, "version": served.version, "segment": served.segment,
                 "kind": kind, "name": name, "value": value} for kind, name, value in body.rows()]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def read_feedback(path: str | Path, endpoint: str) -> list[tuple[object, ...]]:
    """Return every feedback row of ``endpoint`` (tests and tools; the metrics backend reads in SQL)."""
    from canary.serving.store import open_readonly

    with closing(open_readonly(path)) as conn:
        return conn.execute(f"SELECT request_id, version, segment, kind, name, value FROM {FEEDBACK_TABLE} "
                            "WHERE endpoint = ? ORDER BY id", (endpoint,)).fetchall()


__all__ = ["DEFAULT_BURST", "DEFAULT_RATE_PER_S", "DEFAULT_RETENTION_S", "FEEDBACK_TABLE", "MAX_BODY_BYTES",
           "FeedbackBody", "FeedbackLedger", "RateLimiter", "Served", "read_feedback"]
