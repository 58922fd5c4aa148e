"""The rollout page, rendered from recorded journals: self-contained, every metric charted, numbers for people."""

from __future__ import annotations

import re
from dataclasses import replace
from html.parser import HTMLParser

import journals
import pytest

from canary.history.model import RolloutEvent
from canary.policy.decisions import Outcome
from canary.report.html import render_html
from canary.report.markdown import render_markdown
from canary.rollout.plan import RolloutPlan
from canary.rollout.report import build_report
from canary.spec.model import parse_spec

FINISHED = ("promotion", "rollback", "guardrail", "srm_halt", "no_data_halt", "timeout", "shadow_failure",
            "segment_rollback")
#: Elements whose src/href load something, and the attributes that do.
LOADING = {"script", "link", "img", "use", "image", "iframe", "embed", "object", "source", "audio", "video",
           "input", "frame"}
URL_ATTRS = {"src", "href", "xlink:href", "data", "srcset", "poster", "background", "action"}


journal, page = journals.journal, journals.page


class Page(HTMLParser):
    """The parts of a page the tests look at: loaded URLs, tags, text outside <pre>/<svg>, sections."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.ids: dict[str, int] = {}
        self.metric_svgs: dict[str, int] = {}
        self.styles: list[str] = []
        self._stack: list[str] = []
        self._metric: str | None = None
        self._skip = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag in LOADING or any(k in URL_ATTRS for k in a):
            self.urls += [(tag, k, v or "") for k, v in attrs if k in URL_ATTRS]
        if "style" in a:
            self.styles.append(a["style"] or "")
        if a.get("id"):
            self.ids[a["id"]] = self.ids.get(a["id"], 0) + 1
        if tag == "section" and (a.get("id") or "").startswith("metric-"):
            self._metric = a["id"].removeprefix("metric-")
            self.metric_svgs[self._metric] = 0
        if tag == "svg" and self._metric is not None:
            self.metric_svgs[self._metric] += 1
        if tag in ("pre", "svg", "style"):
            self._skip += 1
        self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag in ("pre", "svg", "style"):
            self._skip -= 1
        if tag == "section":
            self._metric = None
        if self._stack and self._stack[-1] == tag:
            self._stack.pop()

    def handle_data(self, data):
        if self._stack and self._stack[-1] == "style":
            self.styles.append(data)
        if not self._skip:
            self.text.append(data)


def external(url: str) -> bool:
    return not (url.startswith("#") or url == "")


@pytest.mark.parametrize("name", [*FINISHED, "running"])
def test_the_page_is_self_contained(name):
    html = page(name)
    parsed = Page(html)
    assert [u for u in parsed.urls if external(u[2])] == []
    assert "script" not in parsed.tags and "iframe" not in parsed.tags
    css = "\n".join(parsed.styles)
    assert "@import" not in css and not re.search(r"url\((?!#)", css)
    assert not re.search(r"url\((?!#)", html)  # nor in the SVGs' attributes
    assert "<script" not in html.lower()
    duplicated = {k: n for k, n in parsed.ids.items() if n > 1}
    assert duplicated == {}  # inline SVGs must not share clip-path or gradient ids


@pytest.mark.parametrize("name", [*FINISHED, "running"])
def test_numbers_are_formatted_for_people(name):
    text = " ".join(Page(page(name)).text)
    assert not re.search(r"\d\.\d{6,}", text), re.findall(r".{40}\d\.\d{6,}.{10}", text)
    assert not re.search(r"\d{10,}", text), re.findall(r".{40}\d{10,}.{10}", text)


@pytest.mark.parametrize(("name", "metrics"), [
    ("promotion", {"error_rate": 3, "latency_tail": 3}),
    ("rollback", {"error_rate": 3, "latency_p99": 3, "conversion": 3, "prediction_drift": 2}),
    ("timeout", {"error_rate": 3}),
    ("running", {"error_rate": 3, "latency_tail": 3}),
])
def test_every_metric_has_its_charts(name, metrics):
    parsed = Page(page(name))
    assert parsed.metric_svgs == metrics
    assert parsed.ids.get("traffic") == 1
    html = page(name)
    traffic_svg = html[html.index('<section id="traffic">'):html.index("</section>", html.index('id="traffic"'))]
    assert traffic_svg.count("<svg") == 1 and "mark-line" in traffic_svg


def test_a_page_without_looks_has_no_charts_and_says_so():
    parsed = Page(page("shadow_failure"))
    assert "svg" not in parsed.tags and parsed.metric_svgs == {}
    text = " ".join(parsed.text)
    assert "No stage was observed (planned: 25% → 50% → 100%)." in text
    assert "Shadow test" in text and "failed" in text


def test_the_shadow_test_shows_the_paired_comparison_and_each_expectation():
    html = page("shadow_failure")
    parsed = Page(html)
    text = " ".join(" ".join(parsed.text).split())
    assert "predicted class agrees with stable 62%" in text
    assert "errors 1 (0.67%) 2 (1.3%)" in text
    assert "p95 latency 41.3 ms 44.9 ms" in text
    rows = re.findall(r"<tr><td><code>(.*?)</code></td><td>(\w+)</td>\s*<td class=\"(pass|fail)\">", html)
    assert [(r[1], r[2]) for r in rows] == [("answered", "pass"), ("all", "fail"), ("answered", "pass")]
    assert "12 of 150 values unexpected (8.0%), 2 null not checked, e.g. 1.2, 1.7" in text
    # The paired tests: counts, evidence against its threshold, bounds against the margin, verdict.
    assert parsed.ids.get("shadow-tests") == 1
    tests = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td class=\"num\">([^<]*)</td>\s*<td>([^<]*)</td>"
                       r"<td class=\"[a-z]*\">(\w+)</td></tr>", html)
    assert [(t[0], t[4]) for t in tests] == [("errors", "open"), ("latency above 46.3 ms", "open"),
                                             ("prediction agreement", "FAIL"), ("mean score difference", "open")], tests
    assert tests[0][1] == "2 candidate only, 1 stable only, of 150" and re.fullmatch(r"[\d.]+ of 300", tests[0][2])
    assert tests[2][1] == "148 answered, 37.8% disagree" and tests[2][3].endswith("(limit 20%)")
    # The mean score difference on the score scale, its confidence sequence against the band, no e-value.
    assert tests[3][1] == "148 answered, mean difference +0.020" and tests[3][2] == ""
    assert re.fullmatch(r"-0\.\d{3} to \+0\.\d{3} \(limit ±0\.05\)", tests[3][3]), tests[3]


def test_stage_srm_and_approval_tables():
    parsed = Page(page("promotion"))
    text = " ".join(" ".join(parsed.text).split())
    assert parsed.ids.get("stages") == parsed.ids.get("srm") == parsed.ids.get("approvals") == 1
    assert re.search(r"2026-12-02 10:\d\d:\d\dZ alice 3 approved looks fine", text), text
    assert "consistent" in text and "mismatch" not in text
    halted = " ".join(" ".join(Page(page("srm_halt")).text).split())
    assert re.search(r"50% 40% 240 / 360 [\d.,e]+ 10,000 mismatch", halted), halted


def test_the_frozen_spec_is_in_a_details_block():
    html = page("rollback")
    spec = html[html.index('<details id="spec">'):html.index("</details>")]
    assert "model: fraud-detector" in spec and "poll_interval: 30s" in spec


def test_a_live_page_refreshes_itself_and_shows_where_it_stands():
    html = page("running")
    assert re.search(r'<meta http-equiv="refresh" content="5">', html)  # the spec's poll interval
    text = " ".join(" ".join(Page(html).text).split())
    assert "current stage 2 of 3 (50%)" in text
    assert "looks so far 13" in text and "time to decision about 10s" in text and "latest look 3s ago" in text
    assert "RUNNING" in text
    final = page("promotion")
    assert "http-equiv" not in final and 'id="live"' not in final


def test_the_same_function_renders_a_finished_rollout_on_the_live_tab():
    j = journal("promotion")
    html = render_html(j.record, j.looks, j.events, report=j.report, live=True, now_s=j.record.finished_at_s)
    assert 'id="live"' not in html and "PROMOTED" in html  # finished: no live box, the final sentence
    assert "http-equiv" not in html  # and it stops refreshing


def test_without_a_journal_the_reports_timeline_is_drawn():
    j = journal("regression")
    html = render_html(j.record, [], j.events, report=markdown_report("regression"))
    assert Page(html).metric_svgs == {"error_rate": 3, "latency_tail": 3}
    assert "Rolled back at 50% after 20s and 2,550 canary requests: error rate 2.2% vs 1% on stable" in html


def test_everything_is_escaped():
    j = journal("guardrail")
    hostile = "<script>alert(1)</script>"
    record = replace(j.record, model=f"m{hostile}", candidate='v2"><img src=x>', reason=hostile,
                     outcome_reason=hostile, spec={**j.record.spec, "description": hostile})
    events = [*j.events, RolloutEvent(dag_id=j.record.dag_id, run_id=j.record.run_id, at_s=j.record.started_at_s + 5,
                                      kind="approval", key="x", data={"user": hostile, "approved": False,
                                                                      "comment": hostile})]
    looks = [replace(look, reason=hostile) for look in j.looks]
    html = render_html(record, looks, events)
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def markdown_report(name: str) -> dict:
    """Return the JSON report ``finalize`` would build from the journal's last look per stage."""
    j = journal(name)
    spec = parse_spec(j.record.spec)
    plan = RolloutPlan(spec=spec, candidate="v2", stable="v1", stages=tuple(spec.stages), run_id=j.record.run_id,
                       dry_run=False, reason="", started_at_s=j.record.started_at_s)
    stages = {}
    for look in j.looks:
        stages[look.stage_index] = {"stage_index": look.stage_index, "polls": 1,
                                    "result": {"decision": look.decision, "reason": look.reason,
                                               "metric": look.metric, "evidence": dict(look.evidence)}}
    return build_report(plan, outcome=Outcome(j.record.outcome), reason=j.record.outcome_reason,
                        shadow=journals.PASSED_SHADOW, stages=list(stages.values()),
                        finished_at_s=j.record.finished_at_s)


def test_markdown_uses_the_same_sentence_and_formats():
    j = journal("rollback")
    report = markdown_report("rollback")
    markdown = render_markdown(report)
    html = render_html(j.record, j.looks, j.events, report=j.report)
    sentence = re.search(r'<p class="sentence bad" id="sentence">(.*?)</p>', html).group(1)
    assert f"**{sentence}**" in markdown
    assert not re.search(r"\d\.\d{6,}", markdown), re.findall(r".{30}\d\.\d{6,}", markdown)
    assert "| error_rate | rollback | e-value " in markdown
    assert "prediction agreement 97.3%" in markdown
    assert re.search(r"\| mean score difference \| 148 answered, mean difference \+0\.020 \|  \| "
                     r"-0\.\d{3} to \+0\.\d{3} \(limit ±0\.05\) \| open \|", markdown), markdown


def test_a_spec_dumped_from_the_model_renders_too():
    """``record.spec`` may be the parsed model's dump (enums, seconds) rather than the YAML as written."""
    j = journal("running")
    dumped = parse_spec(j.record.spec).model_dump()
    html = render_html(replace(j.record, spec=dumped), j.looks, j.events, live=True, now_s=j.looks[-1].look_at_s)
    assert '<meta http-equiv="refresh" content="5">' in html
    assert "on_timeout: rollback" in html


def test_the_segments_table_shows_each_segment_and_the_one_that_stopped_the_rollout_is_charted():
    text = page("segment_rollback")
    parsed = Page(text)
    assert parsed.ids.get("segments") == 1
    rows = re.findall(r"<tr><td>1</td><td>(device=\w+)</td><td>(\w+)</td><td class=\"num\">([^<]+)</td>\s*"
                      r"<td>(yes|no)</td><td class=\"d-(\w+)\">", text)
    assert [(seg, test, req, d) for seg, test, _, req, d in rows if test == "error_rate"] == [
        # churn-segments has require_each: false: segments only roll back, an undecided one says advance.
        ("device=android", "error_rate", "no", "undecided"), ("device=ios", "error_rate", "no", "undecided"),
        ("device=web", "error_rate", "no", "rollback")]
    assert dict((seg, share) for seg, test, share, _, _ in rows if test == "error_rate")["device=web"] == "20%"
    # Charts: every overall metric, and of the segments only the test that stopped the rollout.
    assert set(parsed.metric_svgs) == {"error_rate", "latency_tail", "error_rate-in-segment-device-web"}
