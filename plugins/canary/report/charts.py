"""The report's charts: Vega-Lite specs built with Altair, rendered offline to inline SVG by vl-convert.

* traffic: the configured canary share per stage and the share observed, stage boundaries, decisions;
* per metric: canary vs stable over time, the e-value's path against its rollback threshold (log scale),
  and the confidence sequence on the canary/stable ratio (or the prediction shift) against the tolerance.

Building a spec (:func:`traffic_chart`, :func:`metric_charts`) is cheap and pure given the looks; Altair
and vl-convert are imported inside the functions only (never when a DAG file is parsed). The SVG that
vl-convert writes references nothing outside itself (text uses the viewer's sans-serif font); ids are
prefixed per chart so that several charts can share one page.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from canary.history.model import Look
from canary.policy.decisions import label_of
from canary.report.sentence import assessment

CANARY_COLOR = "#d9480f"
STABLE_COLOR = "#1c7ed6"
THRESHOLD_COLOR = "#c92a2a"
TOLERANCE_COLOR = "#2b8a3e"
FONT = "Liberation Sans, Arial, Helvetica, sans-serif"
#: e-values are drawn within these bounds (log scale): the path matters, not 1e-40 or 1e300.
E_VALUE_FLOOR, E_VALUE_CEILING = 1e-3, 1e12


@dataclass(frozen=True)
class TimeAxis:
    """Time since the rollout started in a unit that suits its length."""

    start_s: float
    unit_s: float
    title: str

    @classmethod
    def for_span(cls, start_s: float, end_s: float) -> TimeAxis:
        span = max(end_s - start_s, 0.0)
        if span <= 180:
            return cls(start_s, 1.0, "seconds since start")
        if span <= 3 * 3600:
            return cls(start_s, 60.0, "minutes since start")
        return cls(start_s, 3600.0, "hours since start")

    def at(self, epoch_s: float) -> float:
        return round((epoch_s - self.start_s) / self.unit_s, 4)


@dataclass(frozen=True, kw_only=True)
class Chart:
    """One chart: what it shows (for the page and for people who cannot see it) and its Vega-Lite spec."""

    key: str
    title: str
    description: str
    spec: dict[str, Any]


def time_axis(looks: Sequence[Look], started_at_s: float, now_s: float | None = None) -> TimeAxis:
    end = max([look.look_at_s for look in looks] + [now_s or started_at_s])
    return TimeAxis.for_span(started_at_s, end)


def _stage_starts(looks: Sequence[Look]) -> list[dict[str, Any]]:
    """Return each stage's start (its first look's time minus its elapsed time) with its weight."""
    out: dict[int, dict[str, Any]] = {}
    for look in looks:
        if look.stage_index not in out:
            start = look.look_at_s - (look.elapsed_s or 0.0)
            out[look.stage_index] = {"stage": look.stage_index + 1, "start_s": start, "weight_pct": look.weight_pct}
    return [out[k] for k in sorted(out)]


def _base_config(chart: Any) -> Any:
    return (chart.configure(font=FONT, background="white")
            .configure_view(strokeWidth=0)
            .configure_axis(labelFontSize=11, titleFontSize=11, titleFontWeight="normal", gridColor="#eee")
            .configure_legend(labelFontSize=11, titleFontSize=11, orient="bottom")
            .configure_title(fontSize=13, anchor="start", fontWeight="bold"))


def traffic_chart(looks: Sequence[Look], *, started_at_s: float, now_s: float | None = None,
                  width: int = 960) -> Chart | None:
    """Chart the configured canary share and the observed one over time, stage starts and decisions."""
    import altair as alt

    if not looks:
        return None
    axis = time_axis(looks, started_at_s, now_s)
    stages = _stage_starts(looks)
    rows: list[dict[str, Any]] = []
    for i, stage in enumerate(stages):
        end = stages[i + 1]["start_s"] if i + 1 < len(stages) else max(
            look.look_at_s for look in looks if look.stage_index + 1 == stage["stage"])
        for t in (stage["start_s"], end):
            rows.append({"t": axis.at(t), "share": stage["weight_pct"], "series": "configured canary %"})
    for look in looks:
        ev = look.evidence
        c, s = ev.get("canary_requests"), ev.get("stable_requests")
        if c is not None and s is not None and c + s > 0:
            rows.append({"t": axis.at(look.look_at_s), "share": round(100.0 * c / (c + s), 2),
                         "series": "observed canary %"})
    # a decision's label sits above its mark, or below it near the top (where the stage labels are)
    decisions = [{"t": axis.at(look.look_at_s), "share": look.weight_pct, "decision": look.decision,
                  "label_at": look.weight_pct - 10 if look.weight_pct >= 85 else look.weight_pct + 7}
                 for look in looks if look.decision != "continue"]
    boundaries = [{"t": axis.at(s["start_s"]), "label": f"stage {s['stage']}: {s['weight_pct']}%"} for s in stages]
    x = alt.X("t:Q", title=axis.title, scale=_x_scale(alt, looks, axis, now_s), axis=alt.Axis(tickCount=12))
    color = alt.Color("series:N", title=None, scale=alt.Scale(domain=["configured canary %", "observed canary %"],
                                                              range=["#495057", CANARY_COLOR]))
    lines = alt.Chart(alt.Data(values=rows)).mark_line(interpolate="linear", point=alt.OverlayMarkDef(size=10)).encode(
        x=x, y=alt.Y("share:Q", title="canary share of requests (%)", scale=alt.Scale(domain=[0, 100])),
        color=color, strokeDash=alt.StrokeDash("series:N", legend=None,
                                               scale=alt.Scale(domain=["configured canary %", "observed canary %"],
                                                               range=[[1, 0], [4, 2]])))
    rules = alt.Chart(alt.Data(values=boundaries)).mark_rule(color="#adb5bd", strokeDash=[2, 2]).encode(x=x)
    labels = alt.Chart(alt.Data(values=boundaries)).mark_text(align="left", dx=4, dy=-4, fontSize=11,
                                                              color="#495057").encode(
        x="t:Q", y=alt.datum(100), text="label:N")
    layers = [rules, labels, lines]
    if decisions:
        colors = {"advance": TOLERANCE_COLOR, "rollback": THRESHOLD_COLOR, "halt": "#e67700", "timeout": "#862e9c"}
        present = [d for d in colors if any(row["decision"] == d for row in decisions)]
        palette = alt.Scale(domain=present, range=[colors[d] for d in present])
        layers += [
            alt.Chart(alt.Data(values=decisions)).mark_point(filled=True, size=90, shape="diamond").encode(
                x="t:Q", y="share:Q", color=alt.Color("decision:N", scale=palette, legend=None)),
            alt.Chart(alt.Data(values=decisions)).mark_text(fontSize=11, fontWeight="bold").encode(
                x="t:Q", y="label_at:Q", text="decision:N",
                color=alt.Color("decision:N", scale=palette, legend=None)),
        ]
    chart = alt.layer(*layers).resolve_scale(color="independent").properties(
        width=width, height=170, title="Traffic: canary share configured and observed")
    return Chart(key="traffic", title="Traffic", spec=_base_config(chart).to_dict(),
                 description="configured canary share per stage (solid), observed share (dashed), gate decisions")


def _series(looks: Sequence[Look], metric: str, axis: TimeAxis) -> list[tuple[float, Look, Mapping[str, Any]]]:
    out = []
    for look in looks:
        item = assessment(look, metric)
        if item is not None:
            out.append((axis.at(look.look_at_s), look, item.get("evidence") or {}))
    return out


def _x_scale(alt: Any, looks: Sequence[Look], axis: TimeAxis, now_s: float | None) -> Any:
    """Time from the first stage's start (a shadow test before it carries no traffic) to the last look."""
    first = _stage_starts(looks)[0]["start_s"]
    last = max([look.look_at_s for look in looks] + [now_s or first])
    return alt.Scale(domain=[axis.at(first), axis.at(last)], nice=False, zero=False)


def _rate_title(kind: str, ev: Mapping[str, Any]) -> str:
    """Name the per-version rate of a label test for the axis."""
    if ev.get("threshold_ms") is not None:
        return f"slower than {ev['threshold_ms']:g} ms (%)"
    return "error rate (%)" if kind == "error_rate" else "events per request (%)"


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _e_value(ev: Mapping[str, Any]) -> float | None:
    log_e = _num(ev.get("log_e_value"))
    e = math.exp(min(log_e, 700.0)) if log_e is not None else _num(ev.get("e_value"))
    if e is None:
        return None
    return min(max(e, E_VALUE_FLOOR), E_VALUE_CEILING)


def metric_charts(looks: Sequence[Look], metric: str, *, started_at_s: float, now_s: float | None = None,
                  width: int = 250) -> list[Chart]:
    """Return the charts of one metric: per-version rates, the e-value path, the confidence sequence."""
    import altair as alt

    axis = time_axis(looks, started_at_s, now_s)
    points = _series(looks, metric, axis)
    if not points:
        return []
    test = next((ev.get("test") for _, _, ev in reversed(points) if ev.get("test")), None)
    kind = str((assessment(points[-1][1], metric) or {}).get("kind", ""))
    x = alt.X("t:Q", title=axis.title, scale=_x_scale(alt, looks, axis, now_s), axis=alt.Axis(tickCount=5))
    stages = [{"t": axis.at(s["start_s"])} for s in _stage_starts(looks)[1:]]
    boundary = alt.Chart(alt.Data(values=stages)).mark_rule(color="#ced4da", strokeDash=[2, 2]).encode(x="t:Q")
    charts: list[Chart] = []

    def finish(key: str, title: str, description: str, *layers: Any) -> None:
        chart = alt.layer(boundary, *layers).properties(width=width, height=150, title=title)
        charts.append(Chart(key=f"{metric}.{key}", title=title, description=description,
                            spec=_base_config(chart).to_dict()))

    versions = alt.Color("version:N", title=None, scale=alt.Scale(domain=["canary", "stable"],
                                                                  range=[CANARY_COLOR, STABLE_COLOR]))
    if test == "label":
        rows = []
        for t, _, ev in points:
            for version in ("canary", "stable"):
                events, exposure = _num(ev.get(f"{version}_events")), _num(ev.get(f"{version}_exposure"))
                if events is not None and exposure:
                    rows.append({"t": t, "version": version, "rate": 100.0 * events / exposure})
        finish("versions", f"{metric}: canary vs stable", f"{metric} per version over time, in %",
               alt.Chart(alt.Data(values=rows)).mark_line(point=alt.OverlayMarkDef(size=18)).encode(
                   x=x, y=alt.Y("rate:Q", title=_rate_title(kind, points[-1][2])), color=versions))
    elif test == "tv_confidence_sequence":
        rows = [{"t": t, "tv": _num(ev.get("tv_estimate"))} for t, _, ev in points if _num(ev.get("tv_estimate")) is not None]
        finish("versions", f"{metric}: prediction shift", "total-variation distance between the versions' "
               "prediction distributions",
               alt.Chart(alt.Data(values=rows)).mark_line(color=CANARY_COLOR, point=alt.OverlayMarkDef(size=18))
               .encode(x=x, y=alt.Y("tv:Q", title="TV distance (estimate)")))
    elif test == "msprt_mean_log_latency":
        rows = [{"t": t, "ratio": _num(ev.get("ratio_estimate"))} for t, _, ev in points
                if _num(ev.get("ratio_estimate")) is not None]
        finish("versions", f"{metric}: canary vs stable", "geometric-mean latency of canary over stable's",
               alt.Chart(alt.Data(values=rows)).mark_line(color=CANARY_COLOR, point=alt.OverlayMarkDef(size=18))
               .encode(x=x, y=alt.Y("ratio:Q", title="latency ratio canary/stable (x)",
                                    scale=alt.Scale(zero=False))))

    e_rows = [{"t": t, "e": _e_value(ev)} for t, _, ev in points if _e_value(ev) is not None]
    threshold = next((_num(ev.get("threshold")) for _, _, ev in reversed(points) if _num(ev.get("threshold"))), None)
    if e_rows and threshold is not None:
        top = max([r["e"] for r in e_rows] + [threshold * 10])
        bottom = min([r["e"] for r in e_rows] + [0.1])
        low, high = math.floor(math.log10(bottom)), math.ceil(math.log10(top))
        step = max(1, math.ceil((high - low) / 5))
        scale = alt.Scale(type="log", domain=[10.0 ** low, 10.0 ** high])
        ticks = alt.Axis(values=[10.0 ** k for k in range(low, high + 1, step)], format=",~g", grid=True)
        rule = alt.Chart(alt.Data(values=[{"y": threshold, "label": "rollback threshold"}]))
        finish("evalue", f"{metric}: evidence of a regression", "the e-value over time against its rollback "
               "threshold (log scale)",
               rule.mark_rule(color=THRESHOLD_COLOR, strokeDash=[6, 3]).encode(y="y:Q"),
               rule.mark_text(align="left", x=4, dy=-6, color=THRESHOLD_COLOR, fontSize=11).encode(y="y:Q",
                                                                                                 text="label:N"),
               alt.Chart(alt.Data(values=e_rows)).mark_line(color="#343a40", point=alt.OverlayMarkDef(size=18))
               .encode(x=x, y=alt.Y("e:Q", title="e-value (log scale)", scale=scale, axis=ticks)))

    if test in ("label", "msprt_mean_log_latency"):
        rows = [{"t": t, "lower": _num(ev.get("ratio_lower")), "upper": _num(ev.get("ratio_upper")),
                 "estimate": _num(ev.get("ratio_estimate"))} for t, _, ev in points]
        rows = [r for r in rows if r["lower"] is not None and r["upper"] is not None]
        tolerance = next((_num(ev.get("tolerance_ratio")) for _, _, ev in reversed(points)), None)
        if rows and tolerance is not None:
            # wide early bounds would flatten the picture: show up to ~3x the tolerance's distance
            recent = max(r["upper"] for r in rows[len(rows) // 2:])
            hi = max(tolerance * 1.6, min(recent * 1.1, 1.0 + (tolerance - 1.0) * 3.0 if tolerance > 1 else 2.0))
            lo = min(min(r["lower"] for r in rows), 1.0, tolerance) * 0.9
            charts_layers = _band_layers(alt, rows, x, tolerance, "canary/stable ratio (x)", (lo, hi),
                                         reference=1.0)
            finish("cs", f"{metric}: confidence sequence", "bounds on the canary/stable ratio over time against "
                   "the tolerance", *charts_layers)
    elif test == "tv_confidence_sequence":
        rows = [{"t": t, "lower": _num(ev.get("tv_lower")), "upper": _num(ev.get("tv_upper")),
                 "estimate": _num(ev.get("tv_estimate"))} for t, _, ev in points]
        rows = [r for r in rows if r["lower"] is not None and r["upper"] is not None]
        tolerance = next((_num(ev.get("tolerance")) for _, _, ev in reversed(points)), None)
        if rows and tolerance is not None:
            hi = min(max(max(r["upper"] for r in rows[len(rows) // 3:]), tolerance) * 1.15, 1.0)
            finish("cs", f"{metric}: confidence sequence", "bounds on the total-variation distance over time "
                   "against the tolerance", *_band_layers(alt, rows, x, tolerance, "TV distance", (0.0, hi)))
    return charts


def _band_layers(alt: Any, rows: list[dict[str, Any]], x: Any, tolerance: float, title: str,
                 domain: tuple[float, float], reference: float | None = None) -> list[Any]:
    scale = alt.Scale(domain=list(domain), clamp=True)
    data = alt.Chart(alt.Data(values=rows))
    layers = [
        data.mark_area(color=CANARY_COLOR, opacity=0.18).encode(x=x, y=alt.Y("lower:Q", title=title, scale=scale),
                                                                y2="upper:Q"),
        data.mark_line(color=CANARY_COLOR, strokeWidth=1).encode(x=x, y=alt.Y("upper:Q", scale=scale)),
        data.mark_line(color=CANARY_COLOR, strokeWidth=1).encode(x=x, y=alt.Y("lower:Q", scale=scale)),
    ]
    if any(r["estimate"] is not None for r in rows):
        layers.append(data.transform_filter("datum.estimate != null").mark_line(
            color=CANARY_COLOR, strokeDash=[3, 2]).encode(x=x, y=alt.Y("estimate:Q", scale=scale)))
    marks = [{"y": tolerance, "label": "tolerance"}]
    if reference is not None:
        marks.append({"y": reference, "label": "no difference"})
    ref = alt.Chart(alt.Data(values=marks))
    colors = alt.Scale(domain=["tolerance", "no difference"], range=[TOLERANCE_COLOR, "#868e96"])
    layers += [ref.mark_rule(strokeDash=[6, 3]).encode(y="y:Q", color=alt.Color("label:N", scale=colors, legend=None)),
               ref.mark_text(align="right", x="width", dx=-2, dy=-6, fontSize=11).encode(
                   y="y:Q", text="label:N", color=alt.Color("label:N", scale=colors, legend=None))]
    return layers


_ID = re.compile(r'\bid="([^"]+)"')


def to_svg(chart: Chart, *, prefix: str) -> str:
    """Render a chart to SVG text for inlining: ids prefixed with ``prefix``, no XML prolog, scalable."""
    import vl_convert

    svg = vl_convert.vegalite_to_svg(chart.spec)
    ids = set(_ID.findall(svg))
    for name in sorted(ids, key=len, reverse=True):
        svg = svg.replace(f'id="{name}"', f'id="{prefix}-{name}"').replace(f"url(#{name})", f"url(#{prefix}-{name})") \
            .replace(f'href="#{name}"', f'href="#{prefix}-{name}"')
    svg = re.sub(r"^<\?xml[^>]*>\s*", "", svg)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{_attr(chart.title + ": " + chart.description)}" ', 1)


def _attr(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def metric_names(looks: Sequence[Look]) -> list[str]:
    """Return the metrics assessed in the looks, in spec order (the SRM check excluded: it has its own table)."""
    names: list[str] = []
    for look in looks:
        for item in look.evidence.get("metrics") or ():
            name = label_of(item)
            # Charts for every metric overall; in a segment only for a test that stopped the rollout (the
            # report's segment table holds the others).
            stopped = item.get("decision") in ("rollback", "halt")
            if item.get("kind") != "srm" and name not in names and (not item.get("segment") or stopped):
                names.append(name)
    return names


__all__ = ["Chart", "TimeAxis", "metric_charts", "metric_names", "to_svg", "traffic_chart"]
