"""A small client of the Airflow REST API (v2), shared by ``canary trigger``, run notes and the webhook receiver.

Configuration (environment, :meth:`AirflowClient.from_env`): ``CANARY_AIRFLOW_URL`` (default
``http://localhost:8080``), and either ``CANARY_AIRFLOW_TOKEN`` (a ready bearer token) or
``CANARY_AIRFLOW_USERNAME`` + ``CANARY_AIRFLOW_PASSWORD`` (exchanged for a token at ``POST /auth/token``).
Credentials and tokens are never printed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import requests

DEFAULT_URL = "http://localhost:8080"


class AirflowApiError(Exception):
    """The Airflow API answered with an error; ``status`` is the HTTP status (None if unreachable)."""

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        self.status = status
        self.detail = detail
        super().__init__(message)


def detail_text(detail: Any) -> str:
    """Flatten FastAPI's ``detail`` (a string, or a list of ``{loc, msg}``) into one line."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, Mapping):
        return json.dumps(detail, default=str)
    # Airflow's param errors append the whole JSON schema after a blank line: keep the first line.
    return str(detail).strip().splitlines()[0] if str(detail).strip() else ""


_PARAM_FIELD = re.compile(r"[Ii]nvalid input for param (\w+)")


def refused_field(detail: Any) -> str | None:
    """Return the conf field an API 400 names, if it names one (Airflow's param validation message)."""
    if isinstance(detail, list):
        for item in detail:
            if isinstance(item, Mapping):
                loc = [str(p) for p in item.get("loc", ()) if p not in ("body", "conf")]
                if loc:
                    return ".".join(loc)
        return None
    match = _PARAM_FIELD.search(str(detail))
    return match.group(1) if match else None


class AirflowClient:
    """A minimal client of the Airflow REST API v2 for starting and following rollout runs.

    :param base_url: Airflow API server, e.g. ``http://localhost:8080``.
    :param token: a bearer token; if None, one is requested with ``username``/``password``.
    """

    def __init__(self, base_url: str, *, token: str | None = None, username: str | None = None,
                 password: str | None = None, timeout_s: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._username = username
        self._password = password
        self.timeout_s = timeout_s
        self.session = session or requests.Session()

    def __repr__(self) -> str:  # never show credentials
        return f"AirflowClient({self.base_url!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AirflowClient:
        env = os.environ if env is None else env
        return cls(env.get("CANARY_AIRFLOW_URL") or DEFAULT_URL, token=env.get("CANARY_AIRFLOW_TOKEN") or None,
                   username=env.get("CANARY_AIRFLOW_USERNAME") or None,
                   password=env.get("CANARY_AIRFLOW_PASSWORD") or None)

    # -- transport -----------------------------------------------------------------------------------

    def _fetch_token(self) -> str:
        if not (self._username and self._password):
            raise AirflowApiError("no credentials: set CANARY_AIRFLOW_TOKEN, or CANARY_AIRFLOW_USERNAME and "
                                  "CANARY_AIRFLOW_PASSWORD")
        url = f"{self.base_url}/auth/token"
        try:
            resp = self.session.post(url, json={"username": self._username, "password": self._password},
                                     timeout=self.timeout_s)
        except requests.RequestException as err:
            raise AirflowApiError(f"cannot reach Airflow at {self.base_url}: {type(err).__name__}") from err
        if resp.status_code not in (200, 201):
            raise AirflowApiError(f"POST /auth/token: HTTP {resp.status_code} (username or password rejected?)",
                                  status=resp.status_code)
        token = resp.json().get("access_token")
        if not token:
            raise AirflowApiError("POST /auth/token: the answer holds no access_token", status=resp.status_code)
        return str(token)

    def request(self, method: str, path: str, *, json_body: Any = None,
                params: Mapping[str, Any] | None = None) -> Any:
        """Call the API; return the decoded JSON body; raise :class:`AirflowApiError` on an error status."""
        if self._token is None:
            self._token = self._fetch_token()
        for attempt in (1, 2):
            try:
                resp = self.session.request(method, f"{self.base_url}{path}", json=json_body, params=params,
                                            headers={"Authorization": f"Bearer {self._token}"},
                                            timeout=self.timeout_s)
            except requests.RequestException as err:
                raise AirflowApiError(f"cannot reach Airflow at {self.base_url}: {type(err).__name__}") from err
            # An expired token is renewed once when credentials are configured.
            if resp.status_code == 401 and attempt == 1 and self._username and self._password:
                self._token = self._fetch_token()
                continue
            break
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text[:500]
            raise AirflowApiError(f"{method} {path}: HTTP {resp.status_code}: {detail_text(detail)}",
                                  status=resp.status_code, detail=detail)
        return resp.json() if resp.content else None

    # -- the calls we need ---------------------------------------------------------------------------

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/api/v2/dags/{quote(dag_id)}/dagRuns",
                            json_body={"logical_date": None, "conf": dict(conf)})

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}")

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}"
                                   f"/taskInstances/{quote(task_id)}")

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """Return the deserialised XCom value, or None if there is none."""
        try:
            entry = self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}"
                                        f"/taskInstances/{quote(task_id)}/xcomEntries/{quote(key)}",
                                 params={"deserialize": "true", "stringify": "false"})
        except AirflowApiError as err:
            if err.status == 404:
                return None
            raise
        value = entry.get("value") if isinstance(entry, Mapping) else None
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """Return a task try's log as text (empty if unavailable)."""
        try:
            body = self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}"
                                       f"/taskInstances/{quote(task_id)}/logs/{try_number}",
                                params={"full_content": "true"})
        except AirflowApiError:
            return ""
        content = body.get("content") if isinstance(body, Mapping) else body
        if not isinstance(content, list):
            return str(content or "")
        lines = []
        for entry in content:  # structured log events; a task's exception is in ``error_detail``
            if not isinstance(entry, Mapping):
                lines.append(str(entry))
                continue
            lines.append(str(entry.get("event", "")))
            for exc in entry.get("error_detail") or ():
                if isinstance(exc, Mapping):
                    lines.append(f"{exc.get('exc_type', '')}: {exc.get('exc_value', '')}")
        return "\n".join(lines)


__all__ = ["DEFAULT_URL", "AirflowApiError", "AirflowClient", "detail_text", "refused_field"]
