"""The factory refuses specs that share an endpoint but not the lock store (they could overlap)."""

from __future__ import annotations

import yaml
from fast_spec import fast_spec

from canary_airflow.factory import build_all


def test_specs_on_one_endpoint_with_different_lock_stores_become_import_errors(tmp_path):
    specs = {"a": fast_spec("a", "shared"),
             "b": fast_spec("b", "shared", backends={"lock": {"name": "postgres", "conn_id": "pg"}}),
             "c": fast_spec("c", "alone", backends={"lock": {"name": "postgres", "conn_id": "pg"}})}
    for model, spec in specs.items():
        (tmp_path / f"{model}.yaml").write_text(yaml.safe_dump(spec))
    dags, errors = build_all(tmp_path)
    assert sorted(dags) == ["canary_rollout__c"]
    assert sorted(e.path for e in errors) == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    assert all(e.problems[0][0] == "backends.lock" and "endpoint local/shared" in e.problems[0][1] for e in errors)
