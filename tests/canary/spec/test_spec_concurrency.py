"""The ``concurrency`` section and ``backends.lock`` of a spec: defaults and validation naming the field."""

from __future__ import annotations

import pytest

from canary.errors import SpecError
from canary.spec import defaults
from canary.spec.model import OnBusy, parse_spec

BASE = {"model": "m", "endpoint": "e", "stages": [{"weight": 100}]}


def test_defaults_wait_up_to_an_hour_on_the_local_lock():
    spec = parse_spec(BASE)
    assert spec.concurrency.on_busy is OnBusy.WAIT
    assert spec.concurrency.max_wait_s == defaults.LOCK_MAX_WAIT_S == 3600.0
    assert spec.concurrency.lease_ttl_s == defaults.LEASE_TTL_S
    assert spec.backends.lock.name == "local" and spec.backends.conn_id("lock") == "canary_lock_default"


def test_options_parse_durations():
    spec = parse_spec({**BASE, "concurrency": {"on_busy": "refuse", "max_wait": "10m", "poll_interval": "5s",
                                               "lease_ttl": "2h"},
                       "backends": {"lock": {"name": "postgres", "conn_id": "canary_lock_pg"}}})
    c = spec.concurrency
    assert (c.on_busy, c.max_wait_s, c.poll_interval_s, c.lease_ttl_s) == (OnBusy.REFUSE, 600.0, 5.0, 7200.0)
    assert spec.backends.conn_id("lock") == "canary_lock_pg"


@pytest.mark.parametrize(("patch", "field", "message"), [
    ({"backends": {"lock": {"name": "redis"}}}, "backends.lock.name", "unknown lock backend 'redis'; known: local, postgres"),
    ({"concurrency": {"on_busy": "skip"}}, "concurrency.on_busy", "must be one of 'wait' or 'refuse'"),
    ({"concurrency": {"lease_ttl": "10s"}}, "concurrency.lease_ttl", "greater than or equal to 60"),
    ({"concurrency": {"max_wait": "30d"}}, "concurrency.max_wait", "less than or equal to"),
    ({"concurrency": {"lease_ttl": "1m"}, "analysis": {"poll_interval": "30s"}}, "concurrency.lease_ttl",
     "at least 3 x analysis.poll_interval (90s)"),
    ({"concurrency": {"max_wait": "1m", "poll_interval": "2m"}}, "concurrency.poll_interval",
     "must not exceed concurrency.max_wait"),
    ({"concurrency": {"wait": True}}, "concurrency.wait", "unknown key"),
])
def test_bad_options_name_the_field(patch, field, message):
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE, **patch}, source="m.yaml")
    problems = dict(err.value.problems)
    assert field in problems, err.value
    assert message in problems[field], problems[field]


def test_specs_sharing_an_endpoint_must_share_the_lock_store(tmp_path, capsys):
    import yaml

    from canary.cli import main
    from canary.rollout.lease import lock_store_conflicts

    a = parse_spec({**BASE, "model": "a"})
    b = parse_spec({**BASE, "model": "b", "backends": {"lock": {"name": "postgres", "conn_id": "pg"}}})
    c = parse_spec({**BASE, "model": "c", "endpoint": "other", "backends": {"lock": {"name": "postgres"}}})
    same = parse_spec({**BASE, "model": "d", "backends": {"lock": {"conn_id": "canary_lock_default"}}})
    problems = lock_store_conflicts([("a.yaml", a), ("b.yaml", b), ("c.yaml", c), ("d.yaml", same)])
    assert [(src, field) for src, field, _ in problems] == [("a.yaml", "backends.lock"), ("b.yaml", "backends.lock"),
                                                          ("d.yaml", "backends.lock")]
    assert problems[1][2].startswith("endpoint local/e is shared with specs whose lock store differs "
                                     "(a: local (connection canary_lock_default); d: local (connection "
                                     "canary_lock_default); this one: postgres (connection pg))")
    assert lock_store_conflicts([("a.yaml", a), ("d.yaml", same), ("c.yaml", c)]) == []

    for name, data in (("a", {**BASE, "model": "a"}),
                       ("b", {**BASE, "model": "b", "backends": {"lock": {"name": "postgres"}}})):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    assert main(["validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a.yaml'}: backends.lock: endpoint local/e is shared with specs" in err
    assert f"{tmp_path / 'b.yaml'}: backends.lock: endpoint local/e is shared with specs" in err
