"""The Rollouts page and the notices, for people: one sentence first, numbers rounded, units shown."""

from __future__ import annotations

import pytest

from canary.history import RolloutRecord, StartedBy
from canary.report.pages import duration_of, format_time_utc, notice_page, outcome_label, rollouts_page

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def rec(run_id: str, outcome: str | None, *, model: str = "churn", finished_after_s: float | None = 151.0,
        dry_run: bool = False) -> RolloutRecord:
    return RolloutRecord(dag_id=f"canary_rollout__{model}", run_id=run_id, model=model, endpoint="e",
                         candidate="v<2>", stable="v1", started_by=StartedBy.REGISTRY_EVENT,
                         started_by_detail="new version", started_at_s=T0, dry_run=dry_run,
                         finished_at_s=None if outcome is None else T0 + finished_after_s,
                         stages_planned=(25, 50, 100), stages_reached=2, outcome=outcome,
                         outcome_reason="error rate 3.1x stable" if outcome == "rolled_back" else None)


@pytest.mark.parametrize(("records", "sentence"), [
    ([rec("a", "promoted"), rec("b", "rolled_back"), rec("c", None)],
     "3 rollouts, newest first: 1 promoted, 1 running, 1 not promoted."),
    ([rec("a", "promoted")], "1 rollout, newest first: 1 promoted, 0 running, 0 not promoted."),
    ([], "No rollouts yet that you may read."),
])
def test_the_page_opens_with_one_sentence(records, sentence):
    page = rollouts_page(records, models=["churn"], run_href=lambda r: f"../x/{r.run_id}", now_s=T0 + 60)
    assert f'<p class="summary" id="summary">{sentence}</p>' in page


def test_filters_are_named_in_the_sentence_and_kept_in_the_form():
    page = rollouts_page([], models=["churn", "fraud"], run_href=str, model="fraud", outcome="rolled_back")
    assert "No rollouts with model fraud and outcome rolled back yet that you may read." in page
    assert '<option value="fraud" selected>fraud</option>' in page
    assert '<option value="rolled_back" selected>rolled back</option>' in page


def test_rows_read_for_people_and_link_out_of_the_iframe():
    page = rollouts_page([rec("run<1>", "rolled_back", dry_run=True), rec("r2", None)], models=["churn"],
                         run_href=lambda r: f"../dags/{r.dag_id}/runs/{r.run_id}", now_s=T0 + 3725)
    assert '<a data-top target="_top" href="../dags/canary_rollout__churn/runs/run&lt;1&gt;">v&lt;2&gt;</a> (dry run)' in page
    assert "<td>registry event (new version)</td>" in page and "error rate 3.1x stable" in page
    assert '<td class="num">2/3</td>' in page and '<td class="num">2m31s</td>' in page
    assert '<td class="num">1h2m5s</td>' in page  # the running one counts up to now
    assert 'http-equiv="refresh"' in page  # something is running: the page keeps itself current


@pytest.mark.parametrize(("value", "expected"), [
    (lambda: format_time_utc(T0), "2027-01-15 08:00 UTC"), (lambda: format_time_utc(None), "-"),
    (lambda: outcome_label("rolled_back"), "rolled back"), (lambda: outcome_label(None), "running"),
    (lambda: duration_of(rec("a", "promoted", finished_after_s=0.4), T0), "400ms"),
])
def test_formatting(value, expected):
    assert value() == expected


def test_a_notice_says_one_thing_escaped():
    page = notice_page("Not a canary rollout", "This run is not a canary rollout: DAG <etl> ...")
    assert "<h1>Not a canary rollout</h1>" in page and "DAG &lt;etl&gt;" in page and "refresh" not in page
