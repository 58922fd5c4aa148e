"""The history store on any SQLAlchemy database: SQLite by default, PostgreSQL for distributed executors.

Writes are single statements or one transaction each, and idempotent: a look is inserted with
``ON CONFLICT DO NOTHING`` on its key (a retried poll, or two copies of one trigger, record it once);
rollout rows, events and reports are upserts. JSON columns are stored as text so any database works.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from canary.errors import BackendError, ConfigError
from canary.history.model import LOOK_TIME_DECIMALS, Look, RolloutEvent, RolloutRecord, StartedBy
from canary.history.store import REPORT_KINDS

metadata = sa.MetaData()

rollouts = sa.Table(
    "canary_rollouts", metadata,
    sa.Column("dag_id", sa.String(250), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("model", sa.String(250), nullable=False, index=True),
    sa.Column("endpoint", sa.String(250), nullable=False),
    sa.Column("candidate", sa.String(250), nullable=False),
    sa.Column("stable", sa.String(250), nullable=False),
    sa.Column("started_by", sa.String(32), nullable=False),
    sa.Column("started_by_detail", sa.Text, nullable=False, default=""),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
    sa.Column("started_at_s", sa.Float, nullable=False, index=True),
    sa.Column("finished_at_s", sa.Float),
    sa.Column("stages_planned", sa.Text, nullable=False),
    sa.Column("stages_reached", sa.Integer, nullable=False, default=0),
    sa.Column("outcome", sa.String(32), index=True),
    sa.Column("outcome_reason", sa.Text),
    sa.Column("report_location", sa.Text),
    sa.Column("spec", sa.Text, nullable=False),
)

looks = sa.Table(
    "canary_looks", metadata,
    sa.Column("dag_id", sa.String(250), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("stage_index", sa.Integer, primary_key=True),
    # Milliseconds since the epoch: an exact key (floats are not), the look's identity.
    sa.Column("look_at_ms", sa.BigInteger, primary_key=True),
    sa.Column("look_at_s", sa.Float, nullable=False),
    sa.Column("weight_pct", sa.Integer, nullable=False),
    sa.Column("decision", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("metric", sa.String(250)),
    sa.Column("elapsed_s", sa.Float),
    sa.Column("eta_s", sa.Float),
    sa.Column("evidence", sa.Text, nullable=False),
)

events = sa.Table(
    "canary_events", metadata,
    sa.Column("dag_id", sa.String(250), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("kind", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("at_s", sa.Float, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)

reports = sa.Table(
    "canary_reports", metadata,
    sa.Column("dag_id", sa.String(250), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("content", sa.Text, nullable=False),
)

_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url: str) -> Engine:
    """Return one engine per URL per process (engines pool connections and are thread-safe)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            try:
                parsed = sa.make_url(url)
            except sa.exc.ArgumentError as err:
                raise ConfigError(f"history store URL {url!r} is not a SQLAlchemy URL (e.g. "
                                  "sqlite:////path/canary_history.db or postgresql+psycopg2://user@host/db); "
                                  "fix CANARY_HISTORY_URL") from err
            kwargs: dict[str, Any] = {"future": True}
            if parsed.get_backend_name() == "sqlite":
                if parsed.database and parsed.database != ":memory:":
                    folder = Path(parsed.database).expanduser().parent
                    try:
                        folder.mkdir(parents=True, exist_ok=True)
                    except OSError as err:
                        raise ConfigError(f"history store {url!r}: cannot create its folder {folder} ({err}); "
                                          "fix CANARY_HISTORY_URL") from err
                kwargs["connect_args"] = {"timeout": 30}
            else:
                kwargs["pool_pre_ping"] = True
            try:
                engine = sa.create_engine(url, **kwargs)
            except (sa.exc.ArgumentError, ImportError) as err:
                raise ConfigError(f"history store URL {safe_url(url)}: {err}") from err
            if parsed.get_backend_name() == "sqlite":
                sa.event.listen(engine, "connect", _sqlite_pragmas)
            _ENGINES[url] = engine
        return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API server read while the triggerer and workers write.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def safe_url(url: str) -> str:
    """Return the URL with any password hidden (for messages)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<invalid URL>"


def _json(value: Any) -> str:
    return json.dumps(value, default=str, allow_nan=True, sort_keys=True)


class SqlRolloutHistory:
    """:class:`~canary.history.store.RolloutHistory` on a SQLAlchemy URL."""

    backend = "history"

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        self._schema_ready = False

    def where(self) -> str:
        return safe_url(self.url)

    # -- writes ------------------------------------------------------------------------------

    def start(self, record: RolloutRecord) -> None:
        row = _record_row(record)
        with self._begin("record the start of", record.run_id) as conn:
            conn.execute(rollouts.delete().where(rollouts.c.dag_id == record.dag_id,
                                                 rollouts.c.run_id == record.run_id))
            conn.execute(rollouts.insert().values(**row))

    def finish(self, dag_id: str, run_id: str, *, outcome: str, reason: str, finished_at_s: float,
               stages_reached: int, report_location: str | None = None) -> None:
        with self._begin("record the outcome of", run_id) as conn:
            result = conn.execute(rollouts.update().where(rollouts.c.dag_id == dag_id, rollouts.c.run_id == run_id)
                                  .values(outcome=outcome, outcome_reason=reason, finished_at_s=finished_at_s,
                                          stages_reached=stages_reached, report_location=report_location))
            if result.rowcount == 0:
                raise KeyError(f"no rollout {dag_id}/{run_id} in the history store {self.where()}")

    def add_look(self, look: Look) -> bool:
        row = {"dag_id": look.dag_id, "run_id": look.run_id, "stage_index": look.stage_index,
               "look_at_ms": int(round(look.look_at_s * 10 ** LOOK_TIME_DECIMALS)), "look_at_s": look.look_at_s,
               "weight_pct": look.weight_pct, "decision": look.decision, "reason": look.reason,
               "metric": look.metric, "elapsed_s": look.elapsed_s, "eta_s": look.eta_s,
               "evidence": _json(dict(look.evidence))}
        with self._begin("record a look of", look.run_id) as conn:
            result = conn.execute(self._insert_ignoring_duplicates(looks, row))
            return bool(result.rowcount and result.rowcount > 0)

    def add_event(self, event: RolloutEvent) -> None:
        row = {"dag_id": event.dag_id, "run_id": event.run_id, "kind": event.kind, "key": event.key,
               "at_s": event.at_s, "data": _json(dict(event.data))}
        self._replace(events, row, ("dag_id", "run_id", "kind", "key"), f"record a {event.kind} event of",
                      event.run_id)

    def put_report(self, dag_id: str, run_id: str, kind: str, content: str) -> None:
        if kind not in REPORT_KINDS:
            raise ValueError(f"report kind {kind!r} is not one of {', '.join(REPORT_KINDS)}")
        self._replace(reports, {"dag_id": dag_id, "run_id": run_id, "kind": kind, "content": content},
                      ("dag_id", "run_id", "kind"), f"store the {kind} report of", run_id)

    # -- reads -------------------------------------------------------------------------------

    def rollout(self, dag_id: str, run_id: str) -> RolloutRecord | None:
        with self._connect("read", run_id) as conn:
            row = conn.execute(rollouts.select().where(rollouts.c.dag_id == dag_id,
                                                       rollouts.c.run_id == run_id)).mappings().first()
        return None if row is None else _record(row)

    def find_run(self, run_id: str) -> list[RolloutRecord]:
        with self._connect("read", run_id) as conn:
            rows = conn.execute(rollouts.select().where(rollouts.c.run_id == run_id)
                                .order_by(rollouts.c.started_at_s.desc())).mappings().all()
        return [_record(r) for r in rows]

    def rollouts(self, *, model: str | None = None, outcome: str | None = None,
                 limit: int = 100) -> list[RolloutRecord]:
        query = rollouts.select().order_by(rollouts.c.started_at_s.desc()).limit(max(1, int(limit)))
        if model:
            query = query.where(rollouts.c.model == model)
        if outcome == "running":
            query = query.where(rollouts.c.outcome.is_(None))
        elif outcome:
            query = query.where(rollouts.c.outcome == outcome)
        with self._connect("list", "*") as conn:
            rows = conn.execute(query).mappings().all()
        return [_record(r) for r in rows]

    def looks(self, dag_id: str, run_id: str) -> list[Look]:
        query = looks.select().where(looks.c.dag_id == dag_id, looks.c.run_id == run_id).order_by(
            looks.c.look_at_ms, looks.c.stage_index)
        with self._connect("read the looks of", run_id) as conn:
            rows = conn.execute(query).mappings().all()
        return [Look(dag_id=r["dag_id"], run_id=r["run_id"], stage_index=r["stage_index"], look_at_s=r["look_at_s"],
                     weight_pct=r["weight_pct"], decision=r["decision"], reason=r["reason"], metric=r["metric"],
                     elapsed_s=r["elapsed_s"], eta_s=r["eta_s"], evidence=json.loads(r["evidence"]))
                for r in rows]

    def events(self, dag_id: str, run_id: str) -> list[RolloutEvent]:
        query = events.select().where(events.c.dag_id == dag_id, events.c.run_id == run_id).order_by(
            events.c.at_s, events.c.kind, events.c.key)
        with self._connect("read the events of", run_id) as conn:
            rows = conn.execute(query).mappings().all()
        return [RolloutEvent(dag_id=r["dag_id"], run_id=r["run_id"], at_s=r["at_s"], kind=r["kind"], key=r["key"],
                             data=json.loads(r["data"])) for r in rows]

    def report(self, dag_id: str, run_id: str, kind: str) -> str | None:
        query = sa.select(reports.c.content).where(reports.c.dag_id == dag_id, reports.c.run_id == run_id,
                                                   reports.c.kind == kind)
        with self._connect("read the report of", run_id) as conn:
            return conn.execute(query).scalar_one_or_none()

    # -- internals ---------------------------------------------------------------------------

    def _insert_ignoring_duplicates(self, table: sa.Table, row: Mapping[str, Any]) -> Any:
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            raise ConfigError(f"history store {self.where()}: dialect {dialect!r} is not supported "
                              "(use SQLite or PostgreSQL)")
        return insert(table).values(**row).on_conflict_do_nothing()

    def _replace(self, table: sa.Table, row: Mapping[str, Any], keys: tuple[str, ...], what: str,
                 run_id: str) -> None:
        with self._begin(what, run_id) as conn:
            conn.execute(table.delete().where(*(table.c[k] == row[k] for k in keys)))
            conn.execute(table.insert().values(**row))

    def _ensure_schema(self, conn: Connection) -> None:
        if self._schema_ready:
            return
        try:
            metadata.create_all(conn, checkfirst=True)
        except sa.exc.DBAPIError:
            # Another process created the tables between the check and the create (PostgreSQL): fine if
            # they exist now.
            conn.rollback()
            missing = [t for t in metadata.sorted_tables if not sa.inspect(conn).has_table(t.name)]
            if missing:
                raise
        conn.commit()
        self._schema_ready = True

    @contextmanager
    def _begin(self, what: str, run_id: str) -> Iterator[Connection]:
        """One transaction with the schema ensured; database errors become :class:`BackendError`."""
        try:
            with self.engine.connect() as conn:
                self._ensure_schema(conn)
                with conn.begin():
                    yield conn
        except sa.exc.SQLAlchemyError as err:
            raise BackendError(self.backend, f"could not {what} run {run_id!r} in {self.where()}: "
                                             f"{type(err).__name__}: {str(err).splitlines()[0]}") from err

    _connect = _begin


def _record_row(record: RolloutRecord) -> dict[str, Any]:
    row = record.to_dict()
    row["stages_planned"] = _json(list(record.stages_planned))
    row["spec"] = _json(dict(record.spec))
    return row


def _record(row: Mapping[str, Any]) -> RolloutRecord:
    data = dict(row)
    data["stages_planned"] = json.loads(data["stages_planned"] or "[]")
    data["spec"] = json.loads(data["spec"] or "{}")
    data["started_by"] = StartedBy(data["started_by"]) if data["started_by"] in StartedBy._value2member_map_ \
        else StartedBy.UNKNOWN
    return RolloutRecord.from_dict(data)


__all__ = ["SqlRolloutHistory", "safe_url"]
