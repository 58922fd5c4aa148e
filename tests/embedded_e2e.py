"""Helpers shared by the end-to-end modules that run whole rollouts on the embedded stack."""

from __future__ import annotations

from canary.backends.base import ConnInfo
from canary.devstack.demo import seed_registry


def registry(stack):
    from canary.backends.local_registry import LocalModelRegistry

    return LocalModelRegistry(ConnInfo(conn_id="t", extra={"path": str(stack.registry_file)}))


def register_against_the_serving_version(stack, model: str, candidate: str) -> str:
    """Register ``model`` with the version serving the endpoint now as its champion, and ``candidate``."""
    (serving,) = [v for v, w in stack.weights().items() if w == 100]
    seed_registry(stack, (serving, candidate), model=model)
    return serving


def journal(report, model: str):
    """Return the run's record, looks and events from the rollout history the run wrote (this test's store)."""
    from canary.history import open_history
    from canary.spec import defaults

    history = open_history()  # CANARY_HISTORY_URL: the test's own store, inherited by `airflow dags test`
    dag_id = defaults.rollout_dag_id(model)
    record = history.rollout(dag_id, report["run_id"])
    assert record is not None, f"no history of {dag_id}/{report['run_id']} in {history.where()}"
    events = {(e.kind, e.key): e.data for e in history.events(dag_id, report["run_id"])}
    return history, record, history.looks(dag_id, report["run_id"]), events


def invariant_violations_of(stack, report, model: str) -> list[str]:
    """Run the fail-safe invariant checker on a finished run of the embedded stack (read directly, never through
    a fault proxy)."""
    from canary.backends.local_lock import LocalEndpointLock
    from canary.backends.local_serving import LocalTrafficRouter
    from canary.history import open_history
    from canary.rollout.invariant import invariant_violations, observe_state
    from canary.rollout.lease import endpoint_lease_key
    from canary.spec import defaults

    dag_id = defaults.rollout_dag_id(model)
    router = LocalTrafficRouter(ConnInfo(host="127.0.0.1", port=stack.port, password=stack.token),
                                endpoint=stack.endpoint)
    state = observe_state(router=router, registry=registry(stack), lock=LocalEndpointLock(), history=open_history(),
                          model=model, candidate=report["candidate"],
                          lease_key=endpoint_lease_key("local", stack.endpoint), dag_id=dag_id, run_id=report["run_id"])
    return invariant_violations(state, dag_id=dag_id, run_id=report["run_id"], stable=report["stable"],
                                candidate=report["candidate"])


def roll_out(stack, home, env, model: str, candidate: str) -> tuple[str, dict]:
    """Register ``model`` against the serving version, run the rollout of ``candidate`` and check that it failed
    safe (the invariant holds whatever the outcome); return the version serving before, and the report."""
    from canary.devstack.demo import run_rollout

    before = register_against_the_serving_version(stack, model, candidate)
    report = run_rollout(stack, home, candidate, extra_env=env, model=model)
    assert invariant_violations_of(stack, report, model) == [], report
    return before, report
