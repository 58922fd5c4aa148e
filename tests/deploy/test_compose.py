"""docker-compose.yaml and its Celery variant, checked against what the code reads (Docker does not run here).

The files are parsed and merged as ``docker compose -f docker-compose.yaml -f docker-compose.celery.yaml``
merges them (environment and depends_on by key, other keys replaced, ``extends`` from the base file);
the connections must be the ones the specs' default connection ids name, of the types the hooks
register; the init commands must fail when ``airflow db migrate`` fails; and the spec rendering of the
Celery variant is run on this checkout's specs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from canary.backends import build_backend
from canary.backends.base import ConnInfo
from canary.rollout.lease import lock_store_conflicts
from canary.spec.model import load_spec, parse_spec
from canary_airflow.provider import get_provider_info

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
CELERY = yaml.safe_load((ROOT / "docker-compose.celery.yaml").read_text())
AIRFLOW_SERVICES = ("airflow-init", "airflow-api", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
ROLES = ("serving", "metrics", "registry", "lock")
IMAGE_SPECS_DIR = "/opt/canary/include/rollouts"  # Dockerfile: WORKDIR /opt/canary, COPY include ./include


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if key in ("environment", "depends_on") and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def celery_services() -> dict[str, dict]:
    services = copy.deepcopy(BASE["services"])
    for name, service in CELERY["services"].items():
        service = dict(service)
        extends = service.pop("extends", None)
        if extends is not None:
            assert extends["file"] == "docker-compose.yaml", extends
            services[name] = _merge(BASE["services"][extends["service"]], service)
        else:
            services[name] = _merge(services.get(name, {}), service)
    return services


def env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


def api_port(services: dict) -> int:
    command = services["airflow-api"]["command"]
    return int(command[command.index("--port") + 1])


def metadata_db(url: str) -> tuple[str, str, int, str, str]:
    """Return (user, password, port, host, database) of a SQLAlchemy URL (any driver, ``db+`` prefix)."""
    parts = urlsplit(url.removeprefix("db+"))
    return parts.username, parts.password, parts.port or 5432, parts.hostname, parts.path.lstrip("/")


def check_common(services: dict, airflow_services: tuple[str, ...]) -> None:
    """What both variants need: services that exist, one metadata DB, the API URL, the connections."""
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    pg = env(services["postgres"])
    expected_db = (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], 5432, "postgres", pg["POSTGRES_DB"])
    default_spec = parse_spec({"model": "m", "endpoint": "e", "stages": [{"weight": 100}]})
    conn_types = {c["connection-type"] for c in get_provider_info()["connection-types"]}
    serving_cmd = services["serving"]["command"]
    for name in airflow_services:
        e = env(services[name])
        assert metadata_db(e["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]) == expected_db, name
        assert e["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://airflow-api:{api_port(services)}/execution/"
        assert e["AIRFLOW__API_AUTH__JWT_SECRET"], name
        assert {"source": "canary-data", "target": "/data"} == _volume(services[name]), name
        for role in ROLES:
            conn_id = default_spec.backends.conn_id(role)
            conn = json.loads(e[f"AIRFLOW_CONN_{conn_id.upper()}"])
            assert conn["conn_type"] == f"canary_{role}" and conn["conn_type"] in conn_types, (name, role, conn)
        serving = json.loads(e["AIRFLOW_CONN_CANARY_SERVING_DEFAULT"])
        assert serving["host"] == "serving" and str(serving["port"]) == serving_cmd[serving_cmd.index("--port") + 1]
        metrics = json.loads(e["AIRFLOW_CONN_CANARY_METRICS_DEFAULT"])
        assert metrics["extra"]["path"] == serving_cmd[serving_cmd.index("--db") + 1]


def _volume(service: dict) -> dict:
    (volume,) = service["volumes"]
    source, target = volume.split(":")
    return {"source": source, "target": target}


def run_init_command(command: list[str], tmp_path: Path, *, migrate_exit: int) -> subprocess.CompletedProcess:
    """Run an init service's command with stub ``airflow`` (exiting ``migrate_exit``) and ``python``."""
    stubs = tmp_path / "bin"
    stubs.mkdir(parents=True)
    for tool, code in (("airflow", migrate_exit), ("python", 0)):
        path = stubs / tool
        path.write_text(f"#!/bin/sh\nexit {code}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    assert command[:2] == ["bash", "-c"], command
    return subprocess.run(["bash", "-c", command[2]], env={**os.environ, "PATH": f"{stubs}:/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)


def test_local_executor_variant_is_consistent():
    services = BASE["services"]
    check_common(services, AIRFLOW_SERVICES)
    for name in AIRFLOW_SERVICES:
        e = env(services[name])
        assert e["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        # One host: the local lock on the volume every Airflow container shares.
        assert json.loads(e["AIRFLOW_CONN_CANARY_LOCK_DEFAULT"])["extra"]["path"].startswith("/data/")
        assert "CANARY_SPECS_DIR" not in e  # the image's include/rollouts


@pytest.mark.parametrize("variant", ["local", "celery"])
def test_init_fails_when_the_migration_fails(variant, tmp_path):
    services = BASE["services"] if variant == "local" else celery_services()
    command = services["airflow-init"]["command"]
    assert run_init_command(command, tmp_path / "ok", migrate_exit=0).returncode == 0
    failed = run_init_command(command, tmp_path / "fail", migrate_exit=3)
    assert failed.returncode != 0, "airflow-init must fail (and block every Airflow service) when db migrate fails"


def test_celery_variant_is_consistent():
    services = celery_services()
    airflow_services = (*AIRFLOW_SERVICES, "airflow-worker")
    check_common(services, airflow_services)
    worker = services["airflow-worker"]
    assert worker["command"] == ["airflow", "celery", "worker"]
    assert worker["image"] == services["airflow-scheduler"]["image"]
    assert set(worker["depends_on"]) == {"airflow-init", "postgres", "redis"}
    assert "redis" in services["airflow-scheduler"]["depends_on"]
    assert services["redis"]["image"].startswith("redis:")
    reference = env(services["airflow-scheduler"])
    for name in airflow_services:
        e = env(services[name])
        assert e == reference, f"{name}: every component needs the same configuration"
    assert reference["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert re.fullmatch(r"redis://redis:6379/\d+", reference["AIRFLOW__CELERY__BROKER_URL"])
    result_backend = reference["AIRFLOW__CELERY__RESULT_BACKEND"]
    # SQLAlchemy 2.1 defaults postgresql:// to psycopg 3, which is not installed: name the driver.
    assert result_backend.startswith("db+postgresql+psycopg2://")
    assert metadata_db(result_backend) == metadata_db(reference["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    # The endpoint leases in PostgreSQL, shared by every worker; the connection builds the postgres store.
    lock_conn = json.loads(reference["AIRFLOW_CONN_CANARY_LOCK_DEFAULT"])
    assert lock_conn["host"] == "postgres"
    info = ConnInfo(conn_id="canary_lock_default", host=lock_conn["host"], port=lock_conn["port"],
                    login=lock_conn["login"], password=lock_conn["password"], schema=lock_conn["schema"])
    store = build_backend("lock", "postgres", info)
    assert store.where() == "postgres postgres:5432/airflow table canary_endpoint_leases"
    assert metadata_db(f"postgresql://{info.login}:{info.password}@{info.host}:{info.port}/{info.schema}") == \
        metadata_db(reference["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])


def test_celery_variant_renders_every_spec_with_the_postgres_lock(tmp_path):
    services = celery_services()
    specs_dir = env(services["airflow-scheduler"])["CANARY_SPECS_DIR"]
    script = re.search(r"<<'EOF'\n(.*?)\nEOF\n", services["airflow-init"]["command"][2], re.S).group(1)
    assert IMAGE_SPECS_DIR in script and specs_dir in script
    out = tmp_path / "specs"
    script = script.replace(IMAGE_SPECS_DIR, str(ROOT / "include" / "rollouts")).replace(specs_dir, str(out))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    sources = sorted((ROOT / "include" / "rollouts").glob("*.yaml"))
    assert sorted(p.name for p in out.glob("*.yaml")) == [p.name for p in sources]
    rendered = []
    for source in sources:
        spec = load_spec(out / source.name)
        assert spec.backends.lock.name == "postgres"
        assert f"AIRFLOW_CONN_{spec.backends.conn_id('lock').upper()}" in env(services["airflow-worker"])
        original, written = yaml.safe_load(source.read_text()), yaml.safe_load((out / source.name).read_text())
        for data in (original, written):
            backends = data.get("backends", {})
            backends.pop("lock", None)
            if not backends:
                data.pop("backends", None)
        assert written == original, f"{source.name}: only backends.lock may change"
        rendered.append((str(out / source.name), spec))
    assert lock_store_conflicts(rendered) == []
