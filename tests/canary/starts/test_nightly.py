"""Nightly candidate selection, table-tested with a registry faked at the interface."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from canary.errors import BackendError
from canary.starts.nightly import candidates, choose, is_due, nightly_time_choice, rollout_run_id, summarize

RESULT = "rollout.result"


class Registry:
    """Versions oldest first, a champion, tags per version."""

    def __init__(self, versions, champion, tags=None, fail=False):
        self.versions, self._champion, self.tags, self.fail = list(versions), champion, tags or {}, fail

    def list_versions(self, model):
        if self.fail:
            raise BackendError("registry", "HTTP 503")
        return list(self.versions)

    def champion(self, model):
        return self._champion

    def get_tags(self, model, version):
        return dict(self.tags.get(version, {}))

    def resolve(self, model, ref):
        return ref

    def promote(self, *a, **k):
        raise AssertionError("selection must not write")

    record_rollback = promote


@pytest.mark.parametrize(("versions", "champion", "tags", "force", "expected"), [
    (["1", "2", "3"], "1", {}, False, ["2", "3"]),
    (["1", "2", "3"], "2", {}, False, ["3"]),
    (["1", "2", "3"], "3", {}, False, []),                                       # champion is the newest
    (["1", "2", "3"], "1", {"3": {RESULT: "rolled_back"}}, False, ["2"]),        # 3 was tried
    (["1", "2", "3"], "1", {"2": {RESULT: "promoted"}, "3": {RESULT: "rolled_back"}}, False, []),
    (["1", "2", "3"], "1", {"3": {RESULT: "rolled_back"}}, True, ["2", "3"]),    # force re-rolls
    (["1", "2", "3"], "1", {"3": {"other": "x"}}, False, ["2", "3"]),            # other tags do not count
])
def test_candidates(versions, champion, tags, force, expected):
    assert candidates(Registry(versions, champion, tags), "m", force=force) == expected


@pytest.mark.parametrize(("registry", "active", "force", "action", "version", "reason"), [
    (Registry(["1", "2", "3"], "1"), 0, False, "start", "3", "3 registered after champion 1, not rolled out yet"
                                                              " (newest of 2, 3)"),
    (Registry(["1", "2"], "1"), 0, False, "start", "2", "2 registered after champion 1, not rolled out yet"),
    (Registry(["1", "2"], "1"), 1, False, "skip", None, "1 rollout run(s) of canary_rollout__m already queued"),
    (Registry(["1"], "1"), 0, False, "skip", None, "no version after champion 1 that was not rolled out yet"),
    (Registry(["1", "2"], "1", {"2": {RESULT: "rolled_back"}}), 0, False, "skip", None, "no version after"),
    (Registry(["1", "2"], "1", {"2": {RESULT: "rolled_back"}}), 0, True, "start", "2", "forced re-roll"),
    (Registry(["1", "2"], None), 0, False, "skip", None, "model 'm' has no champion"),
    (Registry(["1", "2"], "9"), 0, False, "skip", None, "champion '9' of model 'm' is not among its versions"),
    (Registry(["1", "2"], "1", fail=True), 0, False, "error", None, "registry: registry: HTTP 503"),
])
def test_choose(registry, active, force, action, version, reason):
    choice = choose("m", "canary_rollout__m", registry, active_runs=active, force=force)
    assert (choice.action, choice.version) == (action, version)
    assert reason in choice.reason, choice.reason


def test_rollout_run_id_is_stable_and_safe():
    rid = rollout_run_id("scheduled__2026-01-01T02:00:00+00:00", "models:/x 1")
    assert rid == rollout_run_id("scheduled__2026-01-01T02:00:00+00:00", "models:/x 1")
    assert rid == "nightly__models:_x_1__scheduled__2026-01-01T02:00:00+00:00"


def test_summarize_groups_by_action():
    choices = [c.to_dict() for c in (choose("a", "d_a", Registry(["1", "2"], "1"), active_runs=0),
                                     choose("b", "d_b", Registry(["1"], "1"), active_runs=0))]
    report = summarize(choices)
    assert [c["model"] for c in report["started"]] == ["a"] and [c["model"] for c in report["skipped"]] == ["b"]
    assert report["errors"] == []


AT_0200 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(("cron", "at", "due"), [
    ("0 2 * * *", AT_0200, True),
    ("0 2 * * *", AT_0200 + timedelta(seconds=30), True),          # same minute
    ("0 2 * * *", AT_0200 + timedelta(minutes=1), False),
    ("0 14 * * *", AT_0200, False),
    ("0 2 * * 1-5", AT_0200, True),                                  # 2026-12-01 is a Tuesday
    ("0 2 * * 6", AT_0200, False),
    ("0 3 * * *", AT_0200.astimezone(timezone(timedelta(hours=-1))), False),  # compared in UTC
])
def test_is_due_matches_the_minute_in_utc(cron, at, due):
    assert is_due(cron, at) is due


@pytest.mark.parametrize(("own", "run_at", "skipped", "fragment"), [
    (None, AT_0200, False, ""),                                       # nightly: true, default time
    ("0 14 * * *", AT_0200, True, "its time: '0 14 * * *' from schedule.nightly_cron"),
    ("0 14 * * *", AT_0200.replace(hour=14), False, ""),
    (None, AT_0200.replace(hour=14), True, "its time: '0 2 * * *' from $CANARY_NIGHTLY_CRON"),
    ("0 14 * * *", None, False, ""),                                  # a manual run checks everyone
])
def test_nightly_time_choice(own, run_at, skipped, fragment):
    choice = nightly_time_choice("m", "canary_rollout__m", own_cron=own, default_cron="0 2 * * *", run_at=run_at)
    assert (choice is not None) is skipped
    if skipped:
        assert choice.action == "skip" and fragment in choice.reason and "not due at" in choice.reason
