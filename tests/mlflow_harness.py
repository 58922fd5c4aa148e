"""A real MLflow server for tests: its own virtualenv and a runner.

The full ``mlflow`` server package is not part of the Airflow environment, only the ``mlflow-skinny``
client is, so the server lives in ``.state/mlflow-venv`` (or ``$CANARY_MLFLOW_VENV``), installed by
``make services`` (``scripts/setup-services``, run by ``make test``) from ``requirements-mlflow-server.txt``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services import require_service

from canary.backends.base import ConnInfo
from canary.devstack.processes import Processes, free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
#: The server matches the client (mlflow-skinny in requirements.txt); [auth] adds basic auth.
SERVER_REQUIREMENTS = ROOT / "requirements-mlflow-server.txt"
SERVER_VENV = Path(os.environ.get("CANARY_MLFLOW_VENV", ROOT / ".state" / "mlflow-venv"))
ADMIN = "admin"


def mlflow_server_executable() -> tuple[Path | None, str]:
    """Return the ``mlflow`` executable of the server virtualenv, or None and why it cannot be used.

    The virtualenv counts only when scripts/setup-services stamped it with the current requirements.
    """
    exe, stamp = SERVER_VENV / "bin" / "mlflow", SERVER_VENV / ".canary-installed"
    if exe.exists() and stamp.exists() and stamp.read_bytes() == SERVER_REQUIREMENTS.read_bytes():
        return exe, ""
    return None, (f"no MLflow server ({SERVER_REQUIREMENTS.read_text().strip()}) in {SERVER_VENV}: "
                  "run `make services` (scripts/setup-services mlflow)")


@dataclass(frozen=True)
class MlflowServer:
    url: str
    username: str
    password: str = ""

    def conn(self, **overrides) -> ConnInfo:
        fields = {"conn_id": "mlflow_test", "host": self.url, "login": self.username or None,
                  "password": self.password or None}
        return ConnInfo(**{**fields, **overrides})


def require_mlflow_server() -> Path:
    """Return the server executable; skip (locally) or fail (CI) when it cannot be had."""
    exe, why = mlflow_server_executable()
    require_service(exe is not None, why)
    assert exe is not None
    return exe


@contextlib.contextmanager
def mlflow_servers(exe: Path, state_dir: Path, *, auth: tuple[bool, ...] = (False,),
                   env: dict[str, str] | None = None) -> Iterator[list[MlflowServer]]:
    """Run one ``mlflow server`` per entry of ``auth`` (basic auth on or off) on free loopback ports.

    ``env`` adds environment variables to every server (e.g. its webhook settings).

    They start concurrently (~8-15 s each, most of it imports) and are stopped, process group and
    all, when the block ends.
    """
    procs = Processes()
    started = []
    try:
        for i, with_auth in enumerate(auth):
            workdir = state_dir / f"server-{i}"
            workdir.mkdir(parents=True, exist_ok=True)
            password = "Pw-" + secrets.token_urlsafe(18) if with_auth else ""
            port = free_port()
            server_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
            server_env.pop("PYTHONDONTWRITEBYTECODE", None)  # the first start caches bytecode: later ones are faster
            server_env.update({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # two processes, no job runner
                               "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})})
            app = []
            if with_auth:
                server_env.update({"MLFLOW_AUTH_ADMIN_PASSWORD": password,
                                   "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)})
                app = ["--app-name", "basic-auth"]  # its user database, basic_auth.db, lands in cwd
            log_path = workdir / "mlflow-server.log"
            with open(log_path, "w") as log:
                proc = procs.start("mlflow", [
                    str(exe), "server", *app, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                    "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
                    "--default-artifact-root", str(workdir / "artifacts")],
                    cwd=workdir, env=server_env, stdout=log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}"
            started.append((proc, log_path, MlflowServer(url=url, username=ADMIN if with_auth else "",
                                                          password=password)))
        for proc, log_path, srv in started:
            wait_http(f"{srv.url}/health", timeout_s=120, alive=proc, log_file=log_path)
        yield [srv for _proc, _log, srv in started]
    finally:
        procs.stop_all()


