"""The serving HTTP API, and two ways to run it: :func:`run_server` (blocking) and :func:`serving_in_thread`.

Prediction (no auth)::

    POST /v1/endpoints/{endpoint}/predict   {"features": [8 floats], "attributes": {"device": "ios"}}, header X-User-Id
         (attributes may also come as headers: X-Attribute-Plan: internal is the attribute plan)
         200 {"version", "score", "label", "request_id"}; 500 injected error; 404 unknown endpoint;
         503 no version holds traffic
    GET  /metrics                           Prometheus text (see canary.serving.exposition)
    GET  /healthz

Feedback (``Authorization: Bearer <feedback token>``; see canary.serving.feedback)::

    POST /v1/endpoints/{endpoint}/feedback  {"request_id", "label"} and/or {"request_id", "outcome", "value"}
         200 the stored rows; 401; 404 unknown request; 409 given already; 410 too old; 413; 422; 429

Admin (``Authorization: Bearer <token>``; every call is idempotent; errors are ``{"detail": "field: why"}``)::

    GET    /admin/state                                    endpoints, weights, mirrors, faults
    GET    /admin/endpoints/{endpoint}
    PUT    /admin/endpoints/{endpoint}/versions/{version}  deploy at 0% (creates the endpoint)
    DELETE /admin/endpoints/{endpoint}/versions/{version}  remove; 409 while it holds traffic or is mirrored
    PUT    /admin/endpoints/{endpoint}/weights             {"weights": {"v1": 90, "v2": 10}} (whole split)
    PUT    /admin/endpoints/{endpoint}/mirror              {"version": "v2", "percent": 100}
    DELETE /admin/endpoints/{endpoint}/mirror
    PUT    /admin/endpoints/{endpoint}/targeting           {"version": "v2", "match": {"region": ["eu-west"]}}
    DELETE /admin/endpoints/{endpoint}/targeting           (everyone may be routed to every version again)
    PUT    /admin/faults/{version}                         Faults fields, or a list of them (replaces; all zero clears)
    DELETE /admin/faults/{version}
    POST   /admin/flush                                    return once every answer so far is in the store

Every request body is bounded: above :data:`MAX_REQUEST_BYTES` (64 KiB) the answer is 413 before the body is
read further (the feedback route's own bound is smaller, :data:`canary.serving.feedback.MAX_BODY_BYTES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from canary.serving.exposition import CONTENT_TYPE, PrometheusCounters
from canary.serving.feedback import (
    DEFAULT_BURST,
    DEFAULT_RATE_PER_S,
    DEFAULT_RETENTION_S,
    MAX_BODY_BYTES,
    FeedbackBody,
    FeedbackLedger,
    RateLimiter,
    Served,
)
from canary.serving.model import N_FEATURES
from canary.serving.state import (
    AdminError,
    Faults,
    Mirror,
    ServingState,
    Targeting,
    combine_faults,
    user_bucket,
    user_segment,
)
from canary.serving.store import MetricsStore, RequestRecord
from canary.spec import defaults

#: Synthetic KPI: P(event) = (KPI_BASE + KPI_SLOPE * model score) * (1 - kpi_drop), about 0.1 on average.
KPI_BASE = 0.05
KPI_SLOPE = 0.1
_FAULT_LIST: TypeAdapter[list[Faults]] = TypeAdapter(list[Faults])
#: Attributes per prediction request, at most.
MAX_ATTRIBUTES = 8
#: The largest request body of any route (a prediction or an admin call is a few hundred bytes): 413 above.
MAX_REQUEST_BYTES = 64 * 1024
#: A request header ``X-Attribute-Plan: internal`` is the attribute ``plan`` (dashes read as underscores), for
#: clients that cannot change the body; an attribute both in a header and in the body is refused (422).
ATTRIBUTE_HEADER_PREFIX = "x-attribute-"


AttributeName = Annotated[str, StringConstraints(pattern=defaults.ATTRIBUTE_PATTERN)]
AttributeValue = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features: list[FiniteFloat] = Field(min_length=N_FEATURES, max_length=N_FEATURES)
    #: What the client says about the request (device, region, plan...): recorded with every answer, so that
    #: the gate can test each segment (``analysis.segments``).
    attributes: dict[AttributeName, AttributeValue] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)

    @field_validator("attributes")
    @classmethod
    def _not_derived(cls, attributes: dict[str, str]) -> dict[str, str]:
        if defaults.USER_SEGMENT_ATTRIBUTE in attributes:
            raise ValueError(f"{defaults.USER_SEGMENT_ATTRIBUTE!r} is reserved: the serving layer derives it from "
                             "X-User-Id (new or returning); send another name")
        return attributes


class WeightsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[str, int]


@dataclass(frozen=True, slots=True)
class _Request:
    endpoint: str
    features: list[float]
    request_id: str
    ts: float
    segment: str
    attributes: Mapping[str, str]

    def matches(self, faults: Faults) -> bool:
        """Whether ``faults`` apply to this request (its attributes and its derived segment)."""
        return not faults.when or faults.applies_to({**self.attributes, defaults.USER_SEGMENT_ATTRIBUTE: self.segment})


@dataclass(frozen=True, slots=True)
class _Answer:
    version: str
    request_id: str
    score: float | None
    label: int | None
    error: bool


class _Service:
    """Answers predictions against the state and records every answer."""

    def __init__(self, state: ServingState, store_path: Path, *, seed: int | None, jitter_ms: tuple[float, float],
                 flush_interval_s: float, feedback_retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.state = state
        self.feedback_retention_s = feedback_retention_s
        self._ledger: FeedbackLedger | None = None
        self.store_path = store_path
        self.flush_interval_s = flush_interval_s
        self.rng = random.Random(seed)
        self.jitter_ms = jitter_ms
        self.counters = PrometheusCounters(store_path=store_path)
        self._store: MetricsStore | None = None
        self._mirror_tasks: set[asyncio.Task[_Answer]] = set()

    async def predict(self, endpoint: str, features: list[float], user_id: str | None,
                      attributes: Mapping[str, str] | None = None) -> _Answer:
        """Route one request, start its mirror if any, and answer it."""
        ep = self.state.endpoint(endpoint)
        segment = user_segment(user_id) if user_id else "anonymous"
        attributes = dict(attributes or {})
        version = ep.route(user_bucket(user_id) if user_id else self.rng.randrange(100),
                           {**attributes, defaults.USER_SEGMENT_ATTRIBUTE: segment})
        if version is None:
            raise AdminError(503, f"endpoint {endpoint!r} has no version with traffic (weights: {ep.weights})")
        request = _Request(endpoint=endpoint, features=features, request_id=uuid.uuid4().hex, ts=time.time(),
                           segment=segment, attributes=attributes)
        self.ledger.served(endpoint, request.request_id, Served(version=version, segment=request.segment, ts=request.ts))
        mirror = ep.mirror
        if mirror is not None and mirror.version != version and self.rng.random() * 100 < mirror.percent:
            task = asyncio.create_task(self.answer(request, mirror.version, mirrored=True))
            self._mirror_tasks.add(task)
            task.add_done_callback(self._mirror_tasks.discard)
        return await self.answer(request, version, mirrored=False)

    async def answer(self, request: _Request, version: str, *, mirrored: bool) -> _Answer:
        """Compute one version's answer with its faults applied, and record it."""
        started = time.perf_counter()
        faults = combine_faults([f for f in self.state.faults.get(version, ()) if request.matches(f)])
        raw_score = self.state.models[version].score(request.features)
        delay_ms = self.rng.uniform(*self.jitter_ms) + faults.latency_ms
        if self.rng.random() < faults.tail_fraction:
            delay_ms += faults.tail_latency_ms
        await asyncio.sleep(delay_ms / 1000.0)
        error = self.rng.random() < faults.error_rate
        score = None if error else min(1.0, max(0.0, raw_score + faults.prediction_shift))
        if score is not None and faults.score_flip and self.rng.random() < faults.score_flip:
            score = 1.0 - score
        label = None if score is None else int(score >= 0.5)
        # Guarded, so that a version without the fault draws the same random numbers as before.
        if score is not None and faults.score_out_of_range and self.rng.random() < faults.score_out_of_range:
            score += 1.0
        # The KPI follows the user's true propensity (the unshifted score), not what the model reports.
        kpi_event = not error and self.rng.random() < (KPI_BASE + KPI_SLOPE * raw_score) * (1.0 - faults.kpi_drop)
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.counters.observe(endpoint=request.endpoint, version=version, mirrored=mirrored, latency_ms=latency_ms,
                              error=error, score=score, kpi_event=kpi_event,
                              attributes={**request.attributes, defaults.USER_SEGMENT_ATTRIBUTE: request.segment})
        self.store.append(RequestRecord(ts=request.ts, endpoint=request.endpoint, version=version,
                                        latency_ms=latency_ms, status=500 if error else 200, error=error, score=score,
                                        label=label, kpi_event=kpi_event, segment=request.segment,
                                        attributes=request.attributes, request_id=request.request_id,
                                        mirrored=mirrored))
        return _Answer(version=version, request_id=request.request_id, score=score, label=label, error=error)

    @property
    def ledger(self) -> FeedbackLedger:
        if self._ledger is None:
            raise RuntimeError(f"feedback ledger {self.store_path} is not open: run the app with its lifespan")
        return self._ledger

    @property
    def store(self) -> MetricsStore:
        if self._store is None:
            raise RuntimeError(f"metrics store {self.store_path} is not open: run the app with its lifespan")
        return self._store

    async def drain_mirrors(self) -> None:
        """Wait for the mirrored answers in flight."""
        while self._mirror_tasks:
            await asyncio.gather(*self._mirror_tasks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        self._store = MetricsStore(self.store_path, flush_interval_s=self.flush_interval_s)
        self._ledger = FeedbackLedger(self.store_path, retention_s=self.feedback_retention_s)
        try:
            yield
        finally:
            await self.drain_mirrors()
            self._store.close()
            self._ledger.close()


def header_attributes(headers: Mapping[str, str]) -> dict[str, str]:
    """Return the request attributes given as ``X-Attribute-<name>`` headers (names lower-cased, ``-`` as ``_``)."""
    return {key.lower()[len(ATTRIBUTE_HEADER_PREFIX):].replace("-", "_"): value for key, value in headers.items()
            if key.lower().startswith(ATTRIBUTE_HEADER_PREFIX)}


class BodyLimit:
    """ASGI middleware: answer 413 to a request whose body is over ``max_bytes`` (declared or streamed).

    A declared ``Content-Length`` over the limit is refused before the route runs; a chunked body is counted
    as it is received and refused once it passes the limit, so no route ever holds more than that in memory.
    """

    def __init__(self, app: Any, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            reply = JSONResponse({"detail": f"body: {int(declared)} bytes, at most {self.max_bytes}"},
                                 status_code=413)
            await reply(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> Any:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"body: more than {self.max_bytes} bytes")
            return message

        await self.app(scope, bounded_receive, send)


def _bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (compared in constant time)."""
    return secrets.compare_digest((authorization or "").encode(), f"Bearer {token}".encode())


def _validation_detail(err: RequestValidationError | ValidationError, *, skip: int = 1) -> str:
    """Render pydantic errors as ``field.path: message`` (the first ``skip`` parts, e.g. ``body``, dropped)."""
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e.get("loc", ())][skip:]
        parts.append(f"{'.'.join(loc) or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(db_path: str | Path, token: str, *, deployments: Mapping[str, Sequence[str]] | None = None,
               faults: Mapping[str, Faults | Sequence[Faults]] | None = None, seed: int | None = None,
               jitter_ms: tuple[float, float] = (0.5, 3.0), flush_interval_s: float = 0.25,
               feedback_token: str | None = None, feedback_retention_s: float = DEFAULT_RETENTION_S,
               feedback_rate_per_s: float = DEFAULT_RATE_PER_S, feedback_burst: int = DEFAULT_BURST) -> FastAPI:
    """Build the serving app; the metrics store at ``db_path`` is opened by the app's lifespan.

    :param token: bearer token of the admin API (required: the admin API is never open).
    :param deployments: endpoint -> versions deployed at start-up; the first version gets 100%.
    :param faults: version -> faults (one, or several) injected from start-up.
    :param seed: seed of jitter, injected errors, mirroring and KPI draws (None: nondeterministic).
    :param jitter_ms: range of the uniform random base latency added to every answer.
    :param feedback_token: bearer token of the feedback route (default: the admin token).
    :param feedback_retention_s, feedback_rate_per_s, feedback_burst: see :mod:`canary.serving.feedback`.
    """
    if not token:
        raise ValueError("an admin token is required (--token or CANARY_ADMIN_TOKEN)")
    state = ServingState()
    for endpoint, versions in (deployments or {}).items():
        for version in versions:
            state.deploy(endpoint, version)
        if versions:
            state.set_weights(endpoint, {versions[0]: 100})
    for version, version_faults in (faults or {}).items():
        state.set_faults(version, version_faults)
    service = _Service(state, Path(db_path), seed=seed, jitter_ms=jitter_ms, flush_interval_s=flush_interval_s,
                       feedback_retention_s=feedback_retention_s)
    feedback_limit = RateLimiter(feedback_rate_per_s, feedback_burst)
    feedback_secret = feedback_token or token
    app = FastAPI(title="canary serving", lifespan=service.lifespan)
    app.add_middleware(BodyLimit, max_bytes=MAX_REQUEST_BYTES)

    @app.exception_handler(AdminError)
    async def _admin_error(_request: Request, err: AdminError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse({"detail": err.detail}, status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(err)}, status_code=422)

    @app.post("/v1/endpoints/{endpoint}/predict")
    async def predict(endpoint: str, body: PredictBody, request: Request,
                      x_user_id: Annotated[str | None, Header()] = None) -> JSONResponse:
        attributes = body.attributes
        from_headers = header_attributes(request.headers)
        if from_headers:
            both = sorted(set(from_headers) & set(attributes))
            if both:
                raise AdminError(422, f"attributes.{both[0]}: given both in the body and as header "
                                      f"X-Attribute-{both[0].replace('_', '-')}; give it once")
            try:
                attributes = PredictBody(features=body.features, attributes={**attributes, **from_headers}).attributes
            except ValidationError as err:
                return JSONResponse({"detail": _validation_detail(err, skip=0) + " (from X-Attribute-* headers)"},
                                    status_code=422)
        answer = await service.predict(endpoint, body.features, x_user_id, attributes)
        if answer.error:
            return JSONResponse({"detail": "injected error", "version": answer.version,
                                 "request_id": answer.request_id}, status_code=500)
        return JSONResponse({"version": answer.version, "score": answer.score, "label": answer.label,
                             "request_id": answer.request_id})

    @app.post("/v1/endpoints/{endpoint}/feedback")
    async def feedback(endpoint: str, request: Request,
                       authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
        if not _bearer_matches(authorization, feedback_secret):
            raise AdminError(401, "feedback API: missing or wrong bearer token")
        wait_s = feedback_limit.take()
        if wait_s:
            return JSONResponse({"detail": f"feedback API: more than {feedback_rate_per_s:g} requests/s; retry in "
                                           f"{wait_s:.2f}s"}, status_code=429,
                                headers={"Retry-After": str(max(1, math.ceil(wait_s)))})
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise AdminError(413, f"body: {declared} bytes, at most {MAX_BODY_BYTES}")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise AdminError(413, f"body: {len(raw)} bytes, at most {MAX_BODY_BYTES}")
        try:
            body = FeedbackBody.model_validate_json(raw)
        except ValidationError as err:
            return JSONResponse({"detail": _validation_detail(err, skip=0)}, status_code=422)
        stored = await asyncio.to_thread(service.ledger.add, endpoint, body)
        for row in stored:
            service.counters.observe_feedback(endpoint=endpoint, version=str(row["version"]),
                                              segment=str(row["segment"]), kind=str(row["kind"]),
                                              name=str(row["name"]), value=float(str(row["value"])))
        return JSONResponse({"stored": stored})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        # The feedback families aggregate the store: read it in a worker thread, never on the event loop.
        per_request = await asyncio.to_thread(service.counters.feedback_series)
        return PlainTextResponse(service.counters.render(per_request), media_type=CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if not _bearer_matches(authorization, token):
            raise AdminError(401, "admin API: missing or wrong bearer token")

    admin = APIRouter(prefix="/admin", dependencies=[Depends(require_token)])

    @admin.get("/state")
    async def get_state() -> dict[str, Any]:
        return state.to_dict()

    @admin.get("/endpoints/{endpoint}")
    async def get_endpoint(endpoint: str) -> dict[str, Any]:
        return state.endpoint(endpoint).to_dict()

    @admin.put("/endpoints/{endpoint}/versions/{version}")
    async def deploy(endpoint: str, version: str) -> dict[str, Any]:
        return state.deploy(endpoint, version).to_dict()

    @admin.delete("/endpoints/{endpoint}/versions/{version}")
    async def remove(endpoint: str, version: str) -> dict[str, Any]:
        return state.remove(endpoint, version).to_dict()

    @admin.put("/endpoints/{endpoint}/weights")
    async def set_weights(endpoint: str, body: WeightsBody) -> dict[str, Any]:
        return state.set_weights(endpoint, body.weights).to_dict()

    @admin.put("/endpoints/{endpoint}/mirror")
    async def set_mirror(endpoint: str, body: Mirror) -> dict[str, Any]:
        return state.set_mirror(endpoint, body).to_dict()

    @admin.delete("/endpoints/{endpoint}/mirror")
    async def clear_mirror(endpoint: str) -> dict[str, Any]:
        return state.set_mirror(endpoint, None).to_dict()

    @admin.put("/endpoints/{endpoint}/targeting")
    async def set_targeting(endpoint: str, body: Targeting) -> dict[str, Any]:
        return state.set_targeting(endpoint, body).to_dict()

    @admin.delete("/endpoints/{endpoint}/targeting")
    async def clear_targeting(endpoint: str) -> dict[str, Any]:
        return state.set_targeting(endpoint, None).to_dict()

    @admin.put("/faults/{version}")
    async def set_faults(version: str, request: Request) -> Any:
        raw = await request.body()
        try:
            parsed = json.loads(raw or b"null")
        except ValueError:
            raise AdminError(422, "body: not JSON: give the Faults fields, or a list of them") from None
        try:
            body = _FAULT_LIST.validate_python(parsed) if isinstance(parsed, list) else Faults.model_validate(parsed)
        except ValidationError as err:
            return JSONResponse({"detail": _validation_detail(err, skip=0)}, status_code=422)
        state.set_faults(version, body)
        return {"version": version, "faults": state.faults_of(version)}

    @admin.delete("/faults/{version}")
    async def clear_faults(version: str) -> dict[str, Any]:
        state.set_faults(version, None)
        return {"version": version, "faults": state.faults_of(version)}

    @admin.post("/flush")
    async def flush() -> dict[str, bool]:
        await service.drain_mirrors()
        await asyncio.to_thread(service.store.flush)
        return {"flushed": True}

    app.include_router(admin)
    return app


class _Server(uvicorn.Server):
    """A uvicorn server whose SIGINT/SIGTERM only trigger the graceful shutdown.

    uvicorn re-raises the signal after shutting down, which turns a clean stop into exit status 130/143;
    the store is already flushed by then, so the process should simply return.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _config(app: FastAPI, log_level: str, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=5,
                          **kwargs)


def run_server(host: str, port: int, db_path: str | Path, token: str, *, log_level: str = "info",
               **app_options: Any) -> None:
    """Serve on ``host:port`` until SIGINT/SIGTERM, then flush the metrics store and return.

    ``app_options`` are passed to :func:`create_app`.
    """
    _Server(_config(create_app(db_path, token, **app_options), log_level, host=host, port=port)).run()


@contextlib.contextmanager
def serving_in_thread(db_path: str | Path, token: str, *, host: str = "127.0.0.1", port: int = 0,
                      startup_timeout_s: float = 10.0, **app_options: Any) -> Iterator[str]:
    """Run the server in a daemon thread and yield its base URL; stop it and free the port on exit.

    ``port=0`` picks a free port. ``host`` must be an IPv4 address. ``app_options`` go to :func:`create_app`.
    """
    app = create_app(db_path, token, **app_options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = _Server(_config(app, "warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="canary-serving", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"serving layer did not start at {url} (store {db_path}); see the log above")
            time.sleep(0.01)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout_s + 10.0)
        sock.close()
