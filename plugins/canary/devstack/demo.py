"""``make demo``: a real Airflow DAG promotes a good model version and rolls back a faulty one.

Starts the embedded stack (serving layer with a stable version, ~150 rps of synthetic traffic, a
local registry), then runs two rollouts with ``airflow dags test``: a good candidate that must end
promoted and a faulty one (several times the stable error rate) that must end rolled back at the
first stage. Prints a timeline and, last, one JSON line with the outcomes. Everything it starts it
stops again, on success, failure or Ctrl-C.

``python -m canary.devstack.demo --ui`` starts the same stack plus ``airflow standalone`` instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from canary.devstack.processes import Processes, free_port, prometheus_server, wait_for_scrape, wait_http
from canary.progress import Progress
from canary.spec import defaults

ROOT = Path(__file__).resolve().parents[3]
DEMO_MODEL = "churn-demo"
DEMO_ENDPOINT = "churn"
STABLE, GOOD, FAULTY = "v1", "v2", "v3"
#: The third rollout: model ``churn-segments`` (same endpoint, tested per device) with a version that fails
#: on the web only.
SEGMENTS_MODEL, WEB_FAULTY = "churn-segments", "v4"
#: The faulty candidate fails 8% of requests on top of the stable baseline (about 9x stable).
BASELINE_ERROR_RATE = 0.01
FAULTY_ERROR_RATE = 0.08
#: WEB_FAULTY fails 5% more of the web's requests (20% of users): 6% vs 1% there, 2% overall.
WEB_ERROR_RATE = 0.05
DEMO_RPS = 200.0


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class LocalStack:
    """Paths, ports and credentials of the embedded stack, and the Airflow environment that reaches it."""

    state_dir: Path
    port: int
    token: str
    model: str = DEMO_MODEL
    endpoint: str = DEMO_ENDPOINT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_db(self) -> Path:
        return self.state_dir / "metrics.db"

    @property
    def registry_file(self) -> Path:
        return self.state_dir / "registry.json"

    def airflow_env(self, airflow_home: Path) -> dict[str, str]:
        conns = {
            "AIRFLOW_CONN_CANARY_SERVING_DEFAULT": {"conn_type": "canary_serving", "host": "127.0.0.1",
                                                    "port": self.port, "password": self.token},
            "AIRFLOW_CONN_CANARY_METRICS_DEFAULT": {"conn_type": "canary_metrics",
                                                    "extra": {"path": str(self.metrics_db)}},
            "AIRFLOW_CONN_CANARY_REGISTRY_DEFAULT": {"conn_type": "canary_registry",
                                                     "extra": {"path": str(self.registry_file)}},
        }
        venv_bin = str(Path(sys.executable).parent)
        return {
            **os.environ,
            **{k: json.dumps(v) for k, v in conns.items()},
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def weights(self) -> dict[str, int]:
        resp = requests.get(f"{self.url}/admin/endpoints/{self.endpoint}",
                            headers={"Authorization": f"Bearer {self.token}"}, timeout=5)
        resp.raise_for_status()
        return dict(resp.json()["weights"])


def seed_registry(stack: LocalStack, versions: Sequence[str], *, path: Path | None = None,
                  model: str | None = None) -> None:
    """Register ``versions`` of ``model`` (default: the stack's; the first is the champion, the second the challenger)."""
    from canary.backends.base import ConnInfo
    from canary.backends.local_registry import LocalModelRegistry

    model = model or stack.model
    registry = LocalModelRegistry(ConnInfo(conn_id="demo", extra={"path": str(path or stack.registry_file)}))
    for version in versions:
        registry.register_version(model, version)
    registry.set_alias(model, "champion", versions[0])
    if len(versions) > 1:
        registry.set_alias(model, "challenger", versions[1])


#: Every version has a realistic latency tail (3% of requests +300 ms) and a 1% baseline error rate.
_TAIL = "tail_latency_ms=300,tail_fraction=0.03"
DEMO_FAULTS = {STABLE: f"error_rate={BASELINE_ERROR_RATE},{_TAIL}", GOOD: f"error_rate={BASELINE_ERROR_RATE},{_TAIL}",
               FAULTY: f"error_rate={BASELINE_ERROR_RATE + FAULTY_ERROR_RATE},{_TAIL}",
               WEB_FAULTY: [f"error_rate={BASELINE_ERROR_RATE},{_TAIL}", f"error_rate={WEB_ERROR_RATE},when.device=web"]}


@contextlib.contextmanager
def local_stack(state_dir: Path, procs: Processes, *, model: str = DEMO_MODEL, endpoint: str = DEMO_ENDPOINT,
                versions: Sequence[str] = (STABLE, GOOD, FAULTY, WEB_FAULTY),
                faults: Mapping[str, str | Sequence[str]] = DEMO_FAULTS, rps: float = DEMO_RPS,
                labels: tuple[float, float] | None = None, outcome: str | None = None,
                token: str | None = None, feedback_token: str | None = None) -> Iterator[LocalStack]:
    """Start the serving layer with ``versions[0]`` at 100%, a seeded registry and synthetic traffic.

    :param labels: ``(share, delay_s)``: the traffic sends the true label of that share of answered requests
        back, ``delay_s`` after the answer (``canary traffic --labels``); None: no labels.
    :param outcome: with ``labels``, also send conversions as this business outcome (``canary traffic --outcome``).

    :param faults: per version, ``key=value,...`` as ``canary serve --fault`` takes them, or a list of such
        (they all apply, e.g. a baseline error rate and more errors for one device).
    :param token, feedback_token: the admin and feedback bearer tokens (default: one random token for both).
    """
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    stack = LocalStack(state_dir=state_dir, port=free_port(), token=token or secrets.token_urlsafe(16), model=model,
                       endpoint=endpoint)
    seed_registry(stack, versions)
    canary = [sys.executable, "-m", "canary"]
    fault_args = [f"{v}:{f}" for v, found in faults.items() for f in ([found] if isinstance(found, str) else found)]
    serve_log = open(state_dir / "serve.log", "w")
    serve = procs.start("serve", [*canary, "serve", "--host", "127.0.0.1", "--port", str(stack.port),
                          "--db", str(stack.metrics_db),
                          "--endpoint", endpoint, "--version", versions[0],
                          *[arg for f in fault_args for arg in ("--fault", f)]],
                stdout=serve_log, stderr=subprocess.STDOUT,
                env={**os.environ, "CANARY_ADMIN_TOKEN": stack.token,  # not in argv: `ps` would show it
                     "CANARY_FEEDBACK_TOKEN": feedback_token or stack.token})
    wait_http(f"{stack.url}/healthz", alive=serve, log_file=state_dir / "serve.log")
    log(f"serving layer on {stack.url}: endpoint '{endpoint}' with {versions[0]} at 100%")
    label_args = ["--labels", str(labels[0]), "--label-delay", f"{labels[1]}s"] if labels else []
    if outcome is not None:
        if not labels:
            raise ValueError("local_stack: outcome needs labels=(share, delay_s)")
        label_args += ["--outcome", outcome]
    procs.start("traffic", [*canary, "traffic", "--url", stack.url, "--endpoint", endpoint,
                            "--rps", str(rps), *label_args], stdout=open(state_dir / "traffic.log", "w"),
                stderr=subprocess.STDOUT,
                env={**os.environ, "CANARY_FEEDBACK_TOKEN": feedback_token or stack.token})
    log(f"synthetic traffic: ~{rps:.0f} requests/s from 5,000 users")
    try:
        yield stack
    finally:
        serve_log.close()


def run_rollout(stack: LocalStack, airflow_home: Path, version: str, *, extra_env: Mapping[str, str] | None = None,
                conf: Mapping[str, Any] | None = None, model: str | None = None) -> dict[str, Any]:
    """Run one rollout of ``model`` (default: the stack's) with ``airflow dags test``; return its report."""
    model = model or stack.model
    reports = stack.state_dir / f"reports-{version}"
    env = {**stack.airflow_env(airflow_home), "CANARY_REPORTS_DIR": str(reports), **(extra_env or {})}
    dag_id = defaults.rollout_dag_id(model)
    conf_json = json.dumps({"version": version, "reason": "make demo", **(conf or {})})
    log(f"rollout of {version}: airflow dags test {dag_id} -c '{conf_json}'")
    with open(stack.state_dir / f"airflow-{version}.log", "w") as full_log:
        proc = subprocess.Popen([sys.executable, "-m", "airflow", "dags", "test", dag_id, "-c", conf_json],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                full_log.write(line)
                if "CANARY " in line:
                    print("    " + line.split("CANARY ", 1)[1].split(" [")[0].strip()[:220], flush=True)
            proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
    found = sorted(reports.glob(f"{model}/*.json"))
    if not found:
        raise RuntimeError(f"the rollout of {version} wrote no report; see {full_log.name}")
    html = found[-1].with_suffix(".html")
    return {**json.loads(found[-1].read_text()), "html_path": str(html) if html.exists() else None}


def migrate(airflow_home: Path, stack: LocalStack) -> None:
    log("preparing Airflow's metadata database (SQLite)")
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=stack.airflow_env(airflow_home),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def prometheus_metrics(stack: LocalStack) -> Iterator[dict[str, str]]:
    """Scrape the serving layer with a real Prometheus and point the demo spec's metrics at it.

    Yields the extra Airflow environment: a spec directory whose ``churn-demo`` reads its metrics from
    Prometheus (without a shadow test: Prometheus cannot pair mirrored requests) and its connection.
    """
    specs = stack.state_dir / "specs"
    specs.mkdir(exist_ok=True)
    spec = yaml.safe_load((ROOT / "include" / "rollouts" / f"{DEMO_MODEL}.yaml").read_text())
    spec["backends"] = {"metrics": {"name": "prometheus", "conn_id": "canary_prometheus_demo"}}
    spec["shadow"] = {"enabled": False}
    (specs / f"{DEMO_MODEL}.yaml").write_text(yaml.safe_dump(spec))
    with prometheus_server(stack.state_dir / "prometheus", targets=[f"127.0.0.1:{stack.port}"]) as url:
        wait_for_scrape(url, 'up{job="serving"} == 1')
        log(f"Prometheus on {url} scrapes the serving layer every second; the gate reads it")
        conn = {"conn_type": "canary_metrics", "host": "127.0.0.1", "port": int(url.rsplit(":", 1)[1])}
        yield {"CANARY_SPECS_DIR": str(specs), "AIRFLOW_CONN_CANARY_PROMETHEUS_DEMO": json.dumps(conn)}


def demo(state_dir: Path, *, metrics: str = "local") -> int:
    procs = Processes()
    expected = {(DEMO_MODEL, GOOD): "promoted", (DEMO_MODEL, FAULTY): "rolled_back",
                (SEGMENTS_MODEL, WEB_FAULTY): "rolled_back"}
    results: list[dict[str, Any]] = []
    started = time.time()
    try:
        with local_stack(state_dir, procs) as stack, contextlib.ExitStack() as extras:
            env = extras.enter_context(prometheus_metrics(stack)) if metrics == "prometheus" else {}
            airflow_home = state_dir / "airflow"
            migrate(airflow_home, stack)
            time.sleep(2)  # a little stable history before the first rollout
            with Progress(len(expected), "demo rollouts") as progress:
                for model, version in expected:
                    if model == SEGMENTS_MODEL:  # its registry entry: whatever serves now, and the candidate
                        (serving,) = [v for v, w in stack.weights().items() if w == 100]
                        seed_registry(stack, (serving, version), model=model)
                    report = run_rollout(stack, airflow_home, version, extra_env=env, model=model)
                    weights = stack.weights()
                    log(f"{model} {version}: {report['outcome'].upper()} - {report['reason']}; endpoint split now "
                        f"{weights}")
                    results.append({"model": model, "candidate": version, "outcome": report["outcome"],
                                    "reason": report["reason"], "weights_after": weights,
                                    "run_id": report["run_id"], "html_report": report.get("html_path")})
                    progress.advance(f"{version} {report['outcome']}")
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    finally:
        procs.stop_all()
    ok = all(r["outcome"] == expected[(r["model"], r["candidate"])] for r in results) and len(results) == len(expected)
    log(f"{'as expected' if ok else 'UNEXPECTED outcome'} after {time.time() - started:.0f}s; "
        f"reports and logs under {state_dir}")
    for r in results:
        log(f"{r['model']} {r['candidate']}: HTML report {r['html_report']}; its tab under `make airflow`: "
            f"http://localhost:8080/{defaults.rollout_tab_path(defaults.rollout_dag_id(r['model']), r['run_id'])}")
    print(json.dumps({"rollouts": [{k: r[k] for k in ("model", "candidate", "outcome", "reason")}
                                   for r in results]}))
    return 0 if ok else 1


def ui(state_dir: Path) -> int:
    procs = Processes()
    try:
        with local_stack(state_dir, procs) as stack:
            airflow_home = state_dir / "airflow"
            env = stack.airflow_env(airflow_home)
            log("starting airflow standalone on http://localhost:8080 (admin password printed by Airflow)")
            log(f"trigger '{defaults.rollout_dag_id(DEMO_MODEL)}' with version {GOOD} (good) or {FAULTY} (faulty)")
            procs.start("airflow", [str(Path(sys.executable).parent / "airflow"), "standalone"], env=env).wait()
    except KeyboardInterrupt:
        log("stopping")
    finally:
        procs.stop_all()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m canary.devstack.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".state" / "demo")
    parser.add_argument("--ui", action="store_true", help="start airflow standalone instead of the two rollouts")
    parser.add_argument("--metrics", choices=("local", "prometheus"), default="local",
                        help="metrics store the gate reads: the serving layer's SQLite store (default) or a "
                             "real Prometheus scraping it (needs the prometheus binary)")
    parser.add_argument("--seed-registry", type=Path, metavar="PATH",
                        help="only write the demo model's versions into a local registry file, then exit")
    args = parser.parse_args(argv)
    if args.seed_registry:
        seed_registry(LocalStack(state_dir=args.seed_registry.parent, port=0, token=""), (STABLE, GOOD, FAULTY),
                      path=args.seed_registry)
        return 0
    # SIGTERM (e.g. from CI or `timeout`) stops the stack like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.metrics == "prometheus" and shutil.which("prometheus") is None:
        parser.error("--metrics prometheus needs the prometheus binary on PATH (Debian: apt-get install prometheus)")
    return ui(args.state_dir) if args.ui else demo(args.state_dir, metrics=args.metrics)


if __name__ == "__main__":
    sys.exit(main())
