"""``canary history``: lists rollouts newest first and prints one rollout's timeline from the history store."""

from __future__ import annotations

import json

import pytest

from canary.cli import main
from canary.history import Look, RolloutEvent, RolloutRecord, StartedBy, open_history

T0 = 1_796_000_000.0


def _record(run_id: str, *, model: str = "churn", started_at_s: float = T0, dag_id: str = "canary_rollout__churn",
            **kw) -> RolloutRecord:
    return RolloutRecord(dag_id=dag_id, run_id=run_id, model=model, endpoint=model, candidate="2", stable="1",
                         started_by=StartedBy.API, started_at_s=started_at_s, stages_planned=(5, 50, 100), **kw)


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'history.db'}"
    store = open_history(url)
    store.start(_record("promoted-run"))
    store.finish("canary_rollout__churn", "promoted-run", outcome="promoted", reason="every metric within tolerance",
                 finished_at_s=T0 + 151, stages_reached=3)
    store.start(_record("rolled-back-run", started_at_s=T0 + 1000))
    store.add_look(Look(dag_id="canary_rollout__churn", run_id="rolled-back-run", stage_index=0, look_at_s=T0 + 1030,
                        weight_pct=5, decision="continue", reason="observing: 30s/1m", eta_s=95.0,
                        evidence={"canary_requests": 40, "canary_errors": 1, "stable_requests": 760,
                                  "stable_errors": 7}))
    store.add_look(Look(dag_id="canary_rollout__churn", run_id="rolled-back-run", stage_index=0, look_at_s=T0 + 1060,
                        weight_pct=5, decision="rollback", reason="error_rate: e-value 881 >= 200",
                        metric="error_rate", evidence={"canary_requests": 97, "canary_errors": 10,
                                                       "stable_requests": 1843, "stable_errors": 17}))
    store.add_event(RolloutEvent(dag_id="canary_rollout__churn", run_id="rolled-back-run", at_s=T0 + 1010,
                                 kind="traffic", key="stage_1", data={"canary_pct": 5}))
    store.finish("canary_rollout__churn", "rolled-back-run", outcome="rolled_back",
                 reason="error_rate: e-value 881 >= 200", finished_at_s=T0 + 1075, stages_reached=1,
                 report_location="/reports/churn/rolled-back-run.html")
    store.start(_record("other-model-run", model="fraud", dag_id="canary_rollout__fraud", started_at_s=T0 + 500))
    return url


def test_lists_rollouts_newest_first_with_outcome_and_reason(url, capsys):
    assert main(["history", "--url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("[")[-1].split()[1].rstrip(",") for line in lines] == [
        "rolled-back-run", "other-model-run", "promoted-run"]
    assert "ROLLED BACK after 1m15s, stage 1/3: error_rate: e-value 881 >= 200" in lines[0]
    assert "RUNNING" in lines[1] and "started by api" in lines[1]


def test_filters_by_model_and_outcome(url, capsys):
    assert main(["history", "churn", "--outcome", "promoted", "--url", url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listed] == ["promoted-run"]
    assert "spec" not in listed[0] and listed[0]["outcome_reason"] == "every metric within tolerance"
    assert main(["history", "fraud", "--outcome", "running", "--url", url, "--json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == ["other-model-run"]


def test_show_prints_the_timeline_in_time_order(url, capsys):
    assert main(["history", "show", "rolled-back-run", "--url", url]) == 0
    out = capsys.readouterr().out.splitlines()
    body = [line.strip() for line in out[2:]]
    assert body[0].startswith("+10s") and "traffic stage_1: canary_pct=5" in body[0]
    assert body[1].startswith("+30s") and "canary 40 req (1 err), stable 760 req (7 err); decision in ~1m35s;" in body[1]
    assert body[2].startswith("+1m") and "rollback: error_rate: e-value 881 >= 200" in body[2]
    assert body[3] == ("+1m15s  outcome rolled_back: error_rate: e-value 881 >= 200 "
                       "(report /reports/churn/rolled-back-run.html)")


def test_show_json_has_record_looks_and_events(url, capsys):
    assert main(["history", "show", "rolled-back-run", "--url", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rollout"]["outcome"] == "rolled_back"
    assert [look["decision"] for look in data["looks"]] == ["continue", "rollback"]
    assert [event["kind"] for event in data["events"]] == ["traffic"]


def test_show_an_unknown_run_or_an_ambiguous_one_says_what_to_do(url, capsys):
    assert main(["history", "show", "nope", "--url", url]) == 1
    assert "no rollout run 'nope'" in capsys.readouterr().err
    open_history(url).start(_record("promoted-run", model="fraud", dag_id="canary_rollout__fraud"))
    assert main(["history", "show", "promoted-run", "--url", url]) == 2
    assert "exists in several DAGs (canary_rollout__churn, canary_rollout__fraud): pass --dag" in \
        capsys.readouterr().err
    assert main(["history", "show", "promoted-run", "--dag", "canary_rollout__fraud", "--url", url]) == 0


def test_an_empty_store_and_a_bad_url(tmp_path, capsys):
    assert main(["history", "--url", f"sqlite:///{tmp_path / 'empty.db'}"]) == 0
    assert capsys.readouterr().out.strip() == "no rollouts in the history store"
    assert main(["history", "--url", "not a url"]) == 2
    assert "is not a SQLAlchemy URL" in capsys.readouterr().err
