"""Prometheus metrics source against a real Prometheus server on a loopback port.

(a) Deterministic history written with ``promtool tsdb create-blocks-from openmetrics``: exact window
counts across two pods and a counter reset, mirrored series excluded, latency buckets, no data.
(b) A live scrape (every 1 s) of the embedded serving layer, restarted mid-run: the counts agree with
the local SQLite source's, overall and per segment.

The Prometheus harness (:func:`canary.devstack.processes.prometheus_server`) is shared with the demo and the e2e test.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from services import require_prometheus

from canary.backends.base import ConnInfo
from canary.backends.local_metrics import LocalMetricsSource
from canary.backends.local_serving import LocalTrafficRouter
from canary.backends.prometheus import PrometheusMetricsSource
from canary.devstack.processes import free_port, prometheus_server, wait_for_scrape
from canary.errors import NoDataError
from canary.policy.evidence import DEFAULT_LATENCY_BUCKETS_MS
from canary.serving.app import serving_in_thread
from canary.serving.state import Faults
from canary.serving.traffic import run_traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "prometheus-integration-token"


def conn_for(url: str) -> ConnInfo:
    parts = urlsplit(url)
    return ConnInfo(conn_id="prometheus_test", host=parts.hostname, port=parts.port)


# --- (a) deterministic history -------------------------------------------------------------------------

STEP_S = 10
STEPS = 60
RESET_STEP = 30  # v2's process restarts just before this scrape
BOUNDS = DEFAULT_LATENCY_BUCKETS_MS


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def _increments(series: str, step: int) -> dict[str, int]:
    """Requests, errors, KPI events and the latency bucket index of this step's requests (the truth)."""
    requests_ = {"v1-a": 10, "v1-b": 6, "v2-a": 5, "v2-mirror": 50}[series]
    return {"requests": requests_, "errors": step % 3 == 0 and series != "v1-b",
            "kpi": 2 if series.startswith("v1") else 0, "bucket": (step + len(series)) % len(BOUNDS)}


SERIES = {"v1-a": ("v1", "a", "false"), "v1-b": ("v1", "b", "false"), "v2-a": ("v2", "a", "false"),
          "v2-mirror": ("v2", "a", "true")}


def write_openmetrics(path: Path, t0: int) -> None:
    """Write the history: cumulative counters per series, v2's restarting from zero at RESET_STEP."""
    cumulative: dict[str, list[dict]] = {}
    for key in SERIES:
        totals = {"requests": 0, "errors": 0, "kpi": 0, "buckets": [0] * len(BOUNDS), "sum": 0.0}
        rows = []
        for step in range(STEPS):
            if key.startswith("v2") and step == RESET_STEP:
                totals = {"requests": 0, "errors": 0, "kpi": 0, "buckets": [0] * len(BOUNDS), "sum": 0.0}
            inc = _increments(key, step)
            totals["requests"] += inc["requests"]
            totals["errors"] += int(inc["errors"])
            totals["kpi"] += inc["kpi"]
            for i in range(inc["bucket"], len(BOUNDS)):
                totals["buckets"][i] += inc["requests"]
            totals["sum"] += inc["requests"] * 3.0
            rows.append({**totals, "buckets": list(totals["buckets"])})
        cumulative[key] = rows

    def lbl(key: str, extra: str = "") -> str:
        version, pod, mirrored = SERIES[key]
        return f'{{endpoint="ep",version="{version}",mirrored="{mirrored}",pod="{pod}"{extra}}}'

    lines: list[str] = []
    for family, field in (("canary_requests", "requests"), ("canary_request_errors", "errors"),
                          ("canary_kpi_events", "kpi")):
        lines.append(f"# TYPE {family} counter")
        for key, rows in cumulative.items():
            if field == "kpi" and not key.startswith("v1"):
                continue  # optional series: v2 exports no KPI counter
            lines += [f"{family}_total{lbl(key)} {row[field]} {t0 + s * STEP_S}" for s, row in enumerate(rows)]
    lines.append("# TYPE canary_request_latency_ms histogram")
    for key, rows in cumulative.items():
        for i, bound in enumerate(BOUNDS):
            le = f',le="{_le(bound)}"'
            lines += [f"canary_request_latency_ms_bucket{lbl(key, le)} {row['buckets'][i]} {t0 + s * STEP_S}"
                      for s, row in enumerate(rows)]
        lines += [f"canary_request_latency_ms_sum{lbl(key)} {row['sum']} {t0 + s * STEP_S}" for s, row in enumerate(rows)]
        lines += [f"canary_request_latency_ms_count{lbl(key)} {row['requests']} {t0 + s * STEP_S}"
                  for s, row in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n# EOF\n")


def truth(version: str, t0: int, start_s: float, end_s: float) -> dict:
    """Sum the per-step increments of ``version``'s served series scraped in ``(start_s, end_s]``."""
    out = {"requests": 0, "errors": 0, "kpi": 0, "buckets": [0] * len(BOUNDS)}
    for key, (v, _pod, mirrored) in SERIES.items():
        if v != version or mirrored == "true":
            continue
        for step in range(STEPS):
            if start_s < t0 + step * STEP_S <= end_s:
                inc = _increments(key, step)
                out["requests"] += inc["requests"]
                out["errors"] += int(inc["errors"])
                out["kpi"] += inc["kpi"]
                for i in range(inc["bucket"], len(BOUNDS)):
                    out["buckets"][i] += inc["requests"]
    return out


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Iterator[tuple[str, int]]:
    require_prometheus()
    work = tmp_path_factory.mktemp("prom-history")
    t0 = (int(time.time()) - 3 * 3600) // STEP_S * STEP_S
    write_openmetrics(work / "history.om", t0)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(work / "history.om"),
                    str(work / "tsdb")], check=True, capture_output=True, timeout=60)
    with prometheus_server(work, tsdb_dir=work / "tsdb") as url:
        yield url, t0


@pytest.mark.parametrize(("version", "start_step", "end_step"), [
    pytest.param("v1", 9.5, 50.5, id="v1-two-pods"),
    pytest.param("v2", 9.5, 50.5, id="v2-across-the-reset"),
    pytest.param("v2", 29.5, 30, id="v2-only-the-reset-scrape"),
    pytest.param("v2", 31, 59, id="v2-after-the-reset"),
    pytest.param("v1", -5, 70, id="whole-history"),
])
def test_window_counts_are_exact(history, version, start_step, end_step):
    url, t0 = history
    start_s, end_s = t0 + start_step * STEP_S, t0 + end_step * STEP_S
    stats = PrometheusMetricsSource(conn_for(url), endpoint="ep").version_stats(version, start_s=start_s,
                                                                                end_s=end_s)
    expected = truth(version, t0, start_s, end_s)
    assert stats.requests == expected["requests"] > 0
    assert stats.errors == expected["errors"]
    assert stats.kpi_events == expected["kpi"]
    assert stats.latency_buckets_ms == DEFAULT_LATENCY_BUCKETS_MS
    assert list(stats.latency_cumulative) == expected["buckets"]
    assert stats.latency_sum_ms == pytest.approx(3.0 * expected["requests"])
    assert stats.prediction_bins == (0,) * 10  # no bin series exported: zeros


def test_increase_would_not_be_exact_here(history):
    """The same window through PromQL increase(): extrapolated, so not the count the source returns."""
    url, t0 = history
    start_s, end_s = t0 + 9.5 * STEP_S, t0 + 50.5 * STEP_S
    query = (f'sum(increase(canary_requests_total{{endpoint="ep",version="v2",mirrored="false"}}'
             f'[{int((end_s - start_s) * 1000)}ms]))')
    resp = requests.get(f"{url}/api/v1/query", params={"query": query, "time": end_s}, timeout=10).json()
    increase = float(resp["data"]["result"][0]["value"][1])
    assert increase != truth("v2", t0, start_s, end_s)["requests"]


def test_unknown_version_is_no_data(history):
    url, t0 = history
    source = PrometheusMetricsSource(conn_for(url), endpoint="ep")
    with pytest.raises(NoDataError):
        source.version_stats("v9", start_s=t0, end_s=t0 + STEPS * STEP_S)
    with pytest.raises(NoDataError):  # the right version on another endpoint
        PrometheusMetricsSource(conn_for(url), endpoint="other").version_stats("v1", start_s=t0, end_s=t0 + 600)


def test_mirrored_series_are_read_only_when_asked(history):
    url, t0 = history
    start_s, end_s = t0 + 9.5 * STEP_S, t0 + 20.5 * STEP_S
    everything = PrometheusMetricsSource(conn_for(url), endpoint="ep", mirrored_label="")
    served = PrometheusMetricsSource(conn_for(url), endpoint="ep")
    mirrored = everything.version_stats("v2", start_s=start_s, end_s=end_s).requests
    assert mirrored == served.version_stats("v2", start_s=start_s, end_s=end_s).requests + 11 * 50


def test_extra_matchers_select_one_pod(history):
    url, t0 = history
    start_s, end_s = t0 + 9.5 * STEP_S, t0 + 20.5 * STEP_S
    pod_b = PrometheusMetricsSource(conn_for(url), endpoint="ep", extra_matchers={"pod": "b"})
    assert pod_b.version_stats("v1", start_s=start_s, end_s=end_s).requests == 11 * 6


# --- (b) live scrape of the embedded serving layer ------------------------------------------------------

def test_live_scrape_agrees_with_the_local_store_across_a_restart(tmp_path):
    require_prometheus()
    db = tmp_path / "metrics.db"
    port = free_port()
    options = {"deployments": {"ep": ["v1", "v2", "v3"]}, "faults": {"v2": Faults(error_rate=0.2)}, "seed": 5}

    def serve_and_send(seconds: float) -> None:
        with serving_in_thread(db, TOKEN, port=port, **options) as url:
            router = LocalTrafficRouter(ConnInfo(host="127.0.0.1", port=port, password=TOKEN), endpoint="ep")
            router.set_weights({"v1": 60, "v2": 40})
            router.set_mirror("v3", 50)  # shadow answers: never counted as v3's traffic
            run_traffic(url, "ep", 80, duration_s=seconds)
            time.sleep(2.5)  # let Prometheus scrape the final counts before the process goes away
            requests.post(f"{url}/admin/flush", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    with prometheus_server(tmp_path / "prom", targets=[f"127.0.0.1:{port}"]) as prom_url:
        # Prometheus syncs new targets ~5 s after start: wait for its first scrape (of a target still down).
        wait_for_scrape(prom_url, 'up{job="serving"}')
        start_s = time.time()
        serve_and_send(2.5)
        mid_s = time.time()
        serve_and_send(2.5)  # a new process: every counter restarts from zero
        end_s = time.time()
        wait_for_scrape(prom_url, 'up{job="serving"} == 0')  # the target is down: nothing more to come
        prom = PrometheusMetricsSource(conn_for(prom_url), endpoint="ep")
        local = LocalMetricsSource(ConnInfo(extra={"path": str(db)}), endpoint="ep")
        for version in ("v1", "v2"):
            p = prom.version_stats(version, start_s=start_s, end_s=end_s)
            q = local.version_stats(version, start_s=start_s, end_s=end_s)
            # Quiet margins around both runs: the windows hold the same requests exactly.
            assert (p.requests, p.errors, p.kpi_events) == (q.requests, q.errors, q.kpi_events), version
            assert p.latency_cumulative == q.latency_cumulative
            assert p.prediction_bins == q.prediction_bins
            assert p.requests > 50
            # Per segment (the device the traffic generator's users send, the segment derived from the user
            # id): the same split from the series' labels as from the store's rows.
            for by, values in (("device", ["android", "ios", "web"]), ("segment", ["new", "returning"])):
                ps = prom.segment_stats(version, by=by, values=values, start_s=start_s, end_s=end_s)
                qs = local.segment_stats(version, by=by, values=values, start_s=start_s, end_s=end_s)
                assert {v: (x.requests, x.errors, x.latency_cumulative) for v, x in ps.items()} == \
                    {v: (x.requests, x.errors, x.latency_cumulative) for v, x in qs.items()}, (version, by)
                assert sum(x.requests for x in ps.values()) == p.requests and min(x.requests for x in ps.values()) > 0
            # Each half on its own, split between the runs: also exact, the reset is handled.
            for a, b in ((start_s, mid_s), (mid_s, end_s)):
                assert prom.version_stats(version, start_s=a, end_s=b).requests == \
                    local.version_stats(version, start_s=a, end_s=b).requests
        assert prom.version_stats("v2", start_s=start_s, end_s=end_s).error_rate == pytest.approx(0.2, abs=0.12)
        with pytest.raises(NoDataError):
            prom.version_stats("v3", start_s=start_s, end_s=end_s)  # only mirrored answers
        with pytest.raises(NoDataError):
            local.version_stats("v3", start_s=start_s, end_s=end_s)
