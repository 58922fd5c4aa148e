"""Traffic router of the embedded serving layer: a client of its admin API (see :mod:`canary.serving.app`).

Connection: ``host``/``port``/``schema`` give the base URL, ``password`` the admin bearer token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests

from canary.backends.base import ConnInfo
from canary.errors import BackendError

BACKEND = "local-serving"


class LocalTrafficRouter:
    """Set and read the traffic split of one endpoint of the embedded serving layer.

    Every call is idempotent on the server, so connection errors and 5xx answers are retried
    (``retries`` times, exponential backoff from ``backoff_s``) before a :class:`BackendError`.
    """

    def __init__(self, conn: ConnInfo, *, endpoint: str, timeout_s: float = 10.0, retries: int = 2,
                 backoff_s: float = 0.2) -> None:
        self.endpoint = endpoint
        self.base_url = conn.base_url()
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._session = requests.Session()
        if conn.password:
            self._session.headers["Authorization"] = f"Bearer {conn.password}"

    def deploy(self, version: str) -> None:
        """Make ``version`` available on the endpoint at 0% traffic (no-op if already there)."""
        self._call("PUT", f"/versions/{quote(version, safe='')}")

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Set the whole split (percent per version, summing to 100; missing versions get 0)."""
        self._call("PUT", "/weights", json={"weights": dict(weights)})

    def get_weights(self) -> dict[str, int]:
        """Return the current split (percent per deployed version)."""
        return {version: int(weight) for version, weight in self.state()["weights"].items()}

    def remove(self, version: str) -> None:
        """Remove ``version`` (it must hold 0% and not be mirrored); no-op if absent."""
        self._call("DELETE", f"/versions/{quote(version, safe='')}")

    def set_mirror(self, version: str | None, percent: int = 100) -> None:
        """Mirror ``percent`` of requests to ``version`` without serving its answers (None stops)."""
        if version is None:
            self._call("DELETE", "/mirror")
        else:
            self._call("PUT", "/mirror", json={"version": version, "percent": percent})

    def set_targeting(self, version: str | None, match: Mapping[str, Sequence[str]] | None = None) -> None:
        """Expose ``version`` only to requests whose attributes match ``match`` (None lifts the restriction)."""
        if version is None:
            self._call("DELETE", "/targeting")
        else:
            if not match:
                raise ValueError("set_targeting: give the attributes to match, e.g. {'region': ['eu-west']}")
            self._call("PUT", "/targeting", json={"version": version,
                                                  "match": {k: list(v) for k, v in match.items()}})

    def state(self) -> dict[str, Any]:
        """Return the endpoint's deployed versions, weights, mirror and targeting."""
        return self._call("GET", "")

    def set_faults(self, version: str, **faults: Any) -> None:
        """Replace the faults injected into ``version`` (see :class:`canary.serving.state.Faults`)."""
        self._request("PUT", f"/admin/faults/{quote(version, safe='')}", json=faults)

    def _call(self, method: str, path: str, *, json: Any = None) -> Any:
        return self._request(method, f"/admin/endpoints/{quote(self.endpoint, safe='')}{path}", json=json)

    def _request(self, method: str, path: str, *, json: Any = None) -> Any:
        url = f"{self.base_url}{path}"
        what = f"{method} {url}" + (f" {json}" if json is not None else "")
        attempt = 0
        while True:
            try:
                response = self._session.request(method, url, json=json, timeout=self.timeout_s)
            except requests.RequestException as err:
                if attempt >= self.retries:
                    raise BackendError(BACKEND, f"{what} failed after {attempt + 1} attempts: {err}") from err
            else:
                if response.ok:
                    return response.json()
                if response.status_code < 500 or attempt >= self.retries:
                    raise BackendError(BACKEND, f"{what} -> HTTP {response.status_code}: {response.text.strip()}",
                                       status=response.status_code)
            time.sleep(self.backoff_s * 2**attempt)
            attempt += 1
