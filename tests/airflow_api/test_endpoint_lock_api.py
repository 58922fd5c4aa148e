"""One rollout per endpoint on a real Airflow: two models sharing endpoint ``api`` never overlap.

The module adds three specs to the session's Airflow for its own duration (and removes them again, so
the other tests see the specs they expect), all on the fixture's endpoint ``api`` and its local serving
layer: ``api-lock-a`` and ``api-lock-b`` wait for the endpoint (``on_busy: wait``), ``api-lock-c``
refuses (``on_busy: refuse``). Their candidates fail 20% of requests, so each rollout ends rolled back
at its first stage and the endpoint is left as it was found (all traffic on its stable version).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from urllib.parse import quote

import pytest
import yaml
from fast_spec import fast_spec

from canary.backends import build_backend
from canary.backends.base import ConnInfo

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ENDPOINT = "api"  # the endpoint of tests/airflow_api/conftest.py
FIRST, SECOND, REFUSER = "api-lock-a", "api-lock-b", "api-lock-c"
CANDIDATES = {FIRST: "lk-a", SECOND: "lk-b", REFUSER: "lk-c"}
WAIT_S = 180.0


def dag(model: str) -> str:
    return f"canary_rollout__{model}"


def spec_for(model: str, on_busy: str) -> dict:
    spec = fast_spec(model, ENDPOINT, owner="api-tests", shadow={"enabled": False},
                     concurrency={"on_busy": on_busy, "max_wait": "5m", "poll_interval": "1s"})
    if model == FIRST:
        # The first rollout holds the endpoint at least this long: the others are started meanwhile.
        spec["analysis"] = {**copy.deepcopy(spec["analysis"]), "warmup": "12s"}
    return spec


def wait_for(what: str, check, timeout_s: float = WAIT_S, interval_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def reparse(client, dag_id: str) -> None:
    """Ask the DAG processor to parse the file of ``dag_id`` now (the specs are read at parse time)."""
    token = client.request("GET", f"/api/v2/dags/{dag_id}")["file_token"]
    client.request("PUT", f"/api/v2/parseDagFile/{token}")


def when(ti: dict, field: str) -> float:
    return datetime.fromisoformat(ti[field].replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def lock_dags(airflow_server) -> Iterator[dict]:
    server, client = airflow_server, airflow_server.client()
    specs = server.home.parent / "specs"  # CANARY_SPECS_DIR of the session's Airflow
    (stable,) = [v for v, w in server.stack.weights().items() if w == 100]
    router = build_backend("serving", "local", ConnInfo(host="127.0.0.1", port=server.stack.port,
                                                        password=server.stack.token), endpoint=ENDPOINT)
    registry = server.registry()
    for model, candidate in CANDIDATES.items():
        router.set_faults(candidate, error_rate=0.2)
        for version in (stable, candidate):
            registry.register_version(model, version)
        registry.set_alias(model, "champion", stable)
    for model, on_busy in ((FIRST, "wait"), (SECOND, "wait"), (REFUSER, "refuse")):
        (specs / f"{model}.yaml").write_text(yaml.safe_dump(spec_for(model, on_busy)))
    try:
        reparse(client, "canary_rollout__api-model")
        for model in CANDIDATES:
            wait_for(f"DAG {dag(model)}", lambda m=model: server.has_dag(dag(m)))
            server.set_paused(dag(model), False)
        yield {"server": server, "client": client, "stable": stable}
    finally:
        # The specs go first, whatever happens to the runs: the other modules expect the session's DAGs only.
        for model in CANDIDATES:
            (specs / f"{model}.yaml").unlink(missing_ok=True)
        try:
            for model in CANDIDATES:
                for run in server.runs(dag(model)):
                    path = f"/api/v2/dags/{dag(model)}/dagRuns/{quote(run['dag_run_id'], safe='')}"
                    if run["state"] not in ("success", "failed"):  # a run cut short: Airflow deletes no live run
                        client.request("PATCH", path, json_body={"state": "failed"})
                    client.request("DELETE", path)
        finally:
            reparse(client, "canary_rollout__api-model")


class SplitRecorder:
    """Reads the serving layer's split every 0.2 s while the rollouts run: (time, deployed versions)."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.seen: list[tuple[float, frozenset[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.seen.append((time.time(), frozenset(self.stack.weights())))
            except Exception:  # a read during a restart of nothing: keep sampling
                pass
            self._stop.wait(0.2)

    def __enter__(self) -> SplitRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def test_two_models_sharing_an_endpoint_never_overlap_and_refuse_mode_names_the_holder(lock_dags):
    server, client, stable = lock_dags["server"], lock_dags["client"], lock_dags["stable"]
    with SplitRecorder(server.stack) as split:
        first = client.trigger(dag(FIRST), {"version": CANDIDATES[FIRST], "reason": "lock test: first"})["dag_run_id"]
        wait_for(f"{FIRST} to take the endpoint", lambda: client.task_instance(
            dag(FIRST), first, "validate_request")["state"] == "success")
        second = client.trigger(dag(SECOND), {"version": CANDIDATES[SECOND]})["dag_run_id"]
        refused_at = time.time()
        refused = client.trigger(dag(REFUSER), {"version": CANDIDATES[REFUSER]})["dag_run_id"]

        # refuse: fails at once, naming the running rollout; nothing of it reaches the endpoint.
        assert server.wait_run(dag(REFUSER), refused, timeout_s=WAIT_S) == "failed"
        refused_after_s = time.time() - refused_at
        log = client.task_log(dag(REFUSER), refused, "validate_request", 1)
        assert (f"rollout refused: concurrency.on_busy: endpoint local/{ENDPOINT} is busy: held by "
                f"{dag(FIRST)} run {first} (since ") in log, log[-3000:]
        assert client.task_instance(dag(REFUSER), refused, "deploy_canary")["state"] != "success"
        assert client.dag_run(dag(FIRST), first)["state"] == "running"  # refused while the first still ran

        # wait: the second rollout starts moving traffic only after the first one finished.
        assert server.wait_run(dag(FIRST), first, timeout_s=WAIT_S) == "failed"  # rolled back
        assert server.wait_run(dag(SECOND), second, timeout_s=WAIT_S) == "failed"  # rolled back too
    print(f"\nrefuse mode failed {refused_after_s:.1f}s after the trigger")

    for model, run in ((FIRST, first), (SECOND, second)):
        report = client.xcom(dag(model), run, "finalize")
        assert report["outcome"] == "rolled_back" and report["candidate"] == CANDIDATES[model], report
        assert report["timeline"][0]["decision"] == "rollback"
    first_rollback = client.task_instance(dag(FIRST), first, "stage_1.rollback")
    first_finalize = client.task_instance(dag(FIRST), first, "finalize")
    second_validate = client.task_instance(dag(SECOND), second, "validate_request")
    second_deploy = client.task_instance(dag(SECOND), second, "deploy_canary")
    # The second took the endpoint only once the first had put all traffic back on stable and released it.
    assert when(second_validate, "end_date") > when(first_rollback, "end_date")
    assert when(second_deploy, "start_date") >= when(first_finalize, "start_date")
    waited = client.task_log(dag(SECOND), second, "validate_request", 1)
    assert f"waiting for endpoint local/{ENDPOINT}: held by {dag(FIRST)} run {first}" in waited, waited[-3000:]
    assert f"took the lease on endpoint local/{ENDPOINT} after waiting" in waited

    # The serving layer never had both candidates deployed, and the second came after the first was gone.
    a, b = CANDIDATES[FIRST], CANDIDATES[SECOND]
    with_a = [t for t, versions in split.seen if a in versions]
    with_b = [t for t, versions in split.seen if b in versions]
    assert with_a and with_b, split.seen[-5:]
    assert not [v for _t, v in split.seen if a in v and b in v]
    assert max(with_a) < min(with_b)
    assert CANDIDATES[REFUSER] not in {v for _t, versions in split.seen for v in versions}
    assert server.stack.weights() == {stable: 100}

    # Both leases were released by finalize; the refused run never held one.
    leases = build_backend("lock", "local", ConnInfo(), path=server.home / "canary_locks.db").list_leases()
    assert leases == [], leases
