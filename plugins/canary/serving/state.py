"""In-memory serving state: endpoints, their deployed versions and weights, targeting, mirrors and faults.

Everything here is declarative and idempotent; the HTTP layer only translates :class:`AdminError` into
responses. Methods are called from the event loop only, so no locking is needed.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from canary.serving.model import LogisticModel, train_model
from canary.spec.defaults import ATTRIBUTE_PATTERN, MAX_TARGETING_ATTRIBUTES, MAX_TARGETING_VALUES

#: Endpoint and version names: safe in URLs, Prometheus labels and file names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Share of users (in percent of the hash space) in the ``new`` segment; the rest are ``returning``.
NEW_USER_PERCENT = 30


class AdminError(Exception):
    """An admin or predict request cannot be applied; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(detail)


class Faults(BaseModel):
    """Faults injected into every answer of one version (all zero: healthy)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="added probability of an HTTP 500")
    latency_ms: float = Field(0.0, ge=0.0, le=60_000.0, description="added to every request")
    tail_latency_ms: float = Field(0.0, ge=0.0, le=60_000.0, description="added to a tail_fraction of requests")
    tail_fraction: float = Field(0.0, ge=0.0, le=1.0)
    prediction_shift: float = Field(0.0, ge=-1.0, le=1.0, description="added to the score, then clipped to [0, 1]")
    kpi_drop: float = Field(0.0, ge=0.0, le=1.0, description="relative reduction of the KPI event probability")
    score_out_of_range: float = Field(0.0, ge=0.0, le=1.0, description="share of answers whose reported score is "
                                      "1 + the score, outside [0, 1] (a broken output layer); the label is kept")
    score_flip: float = Field(0.0, ge=0.0, le=1.0, description="share of answers whose score is 1 - the score, "
                              "so that their predicted class is the other one (a less accurate model)")
    when: dict[str, str] = Field(default_factory=dict, max_length=8, description=(
        "apply only to requests with all these attributes (e.g. {\"device\": \"android\"}; ``segment`` is the "
        "one derived from X-User-Id); empty: to every request"))

    def applies_to(self, attributes: Mapping[str, str]) -> bool:
        """Whether the faults apply to a request with ``attributes``."""
        return all(attributes.get(k) == v for k, v in self.when.items())


NO_FAULTS = Faults()


def combine_faults(faults: Sequence[Faults]) -> Faults:
    """Return the faults of a version that apply to one request as one (``faults`` all match it).

    Probabilities compose as independent events (error rate, KPI drop, broken scores, the tail), delays and
    score shifts add, the longest tail delay stands. One fault is returned as it is.
    """
    if len(faults) == 1:
        return faults[0]
    if not faults:
        return NO_FAULTS

    def union(values: Iterable[float]) -> float:
        return 1.0 - math.prod(1.0 - v for v in values)

    return Faults(error_rate=union(f.error_rate for f in faults), latency_ms=sum(f.latency_ms for f in faults),
                  tail_latency_ms=max(f.tail_latency_ms for f in faults),
                  tail_fraction=union(f.tail_fraction for f in faults),
                  prediction_shift=max(-1.0, min(1.0, sum(f.prediction_shift for f in faults))),
                  kpi_drop=union(f.kpi_drop for f in faults), score_flip=union(f.score_flip for f in faults),
                  score_out_of_range=union(f.score_out_of_range for f in faults))


class Mirror(BaseModel):
    """Send ``percent`` of an endpoint's requests also to ``version``, whose answers are recorded, not served."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    percent: int = Field(100, ge=0, le=100)


TargetingAttribute = Annotated[str, StringConstraints(pattern=ATTRIBUTE_PATTERN)]
TargetingValue = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Targeting(BaseModel):
    """Expose ``version`` only to requests whose attributes match: every attribute, any of its values.

    Matching requests are split by the endpoint's weights as usual; every other request is served by the
    other versions only, in proportion to their weights. ``segment`` is the attribute derived from X-User-Id.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    match: dict[TargetingAttribute, list[TargetingValue]] = Field(
        min_length=1, max_length=MAX_TARGETING_ATTRIBUTES,
        description='e.g. {"region": ["eu-west"]}: every attribute listed, any of its values')

    @field_validator("match")
    @classmethod
    def _values(cls, match: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, values in match.items():
            if not 1 <= len(values) <= MAX_TARGETING_VALUES:
                raise ValueError(f"{name}: list 1 to {MAX_TARGETING_VALUES} values, got {len(values)}")
        return match

    def matches(self, attributes: Mapping[str, str]) -> bool:
        """Whether a request with ``attributes`` (its derived segment included) is in the targeted population."""
        return all(attributes.get(name) in values for name, values in self.match.items())


def _route(weights: Mapping[str, int], point: float) -> str | None:
    """Return the version whose cumulative weight range (version-name order) holds ``point``."""
    cumulative = 0
    for version in sorted(weights):
        cumulative += weights[version]
        if point < cumulative:
            return version
    return None


@dataclass
class Endpoint:
    """One endpoint: deployed versions (deploy order) with their traffic percent, targeting and a mirror."""

    name: str
    weights: dict[str, int] = field(default_factory=dict)
    mirror: Mirror | None = None
    targeting: Targeting | None = None

    def route(self, bucket: int, attributes: Mapping[str, str] | None = None) -> str | None:
        """Return the version serving user ``bucket`` (0..99) with ``attributes``, or None if no version has weight.

        Buckets map onto the cumulative weights in version-name order, so for fixed weights a user
        always sees the same version, and raising a version's weight only moves users towards it
        from the versions sorted after it. A request outside the targeted population (:class:`Targeting`)
        is routed the same way among the other versions, their weights scaled to 100, so it never reaches
        the targeted version while another version holds traffic.
        """
        targeting = self.targeting
        if targeting is None or targeting.version not in self.weights or targeting.matches(attributes or {}):
            return _route(self.weights, bucket)
        others = {v: w for v, w in self.weights.items() if v != targeting.version}
        total = sum(others.values())
        if total == 0:  # the targeted version holds all traffic: it serves everyone
            return _route(self.weights, bucket)
        return _route(others, bucket * total / 100)

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint": self.name, "versions": list(self.weights), "weights": dict(self.weights),
                "mirror": self.mirror.model_dump() if self.mirror else None,
                "targeting": self.targeting.model_dump() if self.targeting else None}


def _stable_hash(text: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, person=salt).digest(), "big")


def user_bucket(user_id: str) -> int:
    """Return the routing bucket (0..99) of a user: stable across processes, unlike ``hash()``."""
    return _stable_hash(user_id, b"canary-bucket") % 100


def user_segment(user_id: str) -> str:
    """Return the user's segment, ``new`` or ``returning`` (independent of the routing bucket)."""
    return "new" if _stable_hash(user_id, b"canary-segment") % 100 < NEW_USER_PERCENT else "returning"


#: The synthetic population's request attributes: value and percent of users, per attribute.
POPULATION: dict[str, tuple[tuple[str, int], ...]] = {
    "device": (("android", 45), ("ios", 35), ("web", 20)),
    "region": (("eu-west", 40), ("us-east", 40), ("ap-south", 20)),
}


def user_attributes(user_id: str) -> dict[str, str]:
    """Return the attributes a synthetic user's client sends (:data:`POPULATION`; independent of routing)."""
    out = {}
    for name, shares in POPULATION.items():
        point = _stable_hash(user_id, f"attr-{name}".encode()[:16]) % 100
        cumulative = 0
        for value, percent in shares:
            cumulative += percent
            if point < cumulative:
                out[name] = value
                break
    return out


def _require_deployed(ep: Endpoint, field: str, version: str) -> None:
    """Raise a 422 naming ``field`` unless ``version`` is deployed on ``ep``."""
    if version not in ep.weights:
        raise AdminError(422, f"{field}: {version!r} is not deployed on endpoint {ep.name!r} "
                              f"(deployed: {', '.join(ep.weights) or 'none'})")


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid endpoint or version name, else raise a 422 naming ``kind``."""
    if not NAME_PATTERN.match(name):
        raise AdminError(422, f"{kind}: {name!r} must match {NAME_PATTERN.pattern}")
    return name


class ServingState:
    """Endpoints, faults and the trained models of every deployed version."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        #: Per version, every fault injected into it (each may be confined to some requests by ``when``).
        self.faults: dict[str, tuple[Faults, ...]] = {}
        self.models: dict[str, LogisticModel] = {}

    def endpoint(self, name: str) -> Endpoint:
        """Return an endpoint, or raise a 404 listing the known ones."""
        try:
            return self.endpoints[name]
        except KeyError:
            known = ", ".join(sorted(self.endpoints)) or "none"
            raise AdminError(404, f"endpoint {name!r} does not exist (known: {known})") from None

    def deploy(self, endpoint: str, version: str) -> Endpoint:
        """Deploy ``version`` on ``endpoint`` at 0%, creating the endpoint; no-op if already deployed."""
        ep = self.endpoints.get(endpoint) or Endpoint(name=check_name("endpoint", endpoint))
        if version not in ep.weights:
            if version not in self.models:
                self.models[version] = train_model(check_name("version", version))
            ep.weights[version] = 0
        self.endpoints[endpoint] = ep
        return ep

    def set_weights(self, endpoint: str, weights: Mapping[str, int]) -> Endpoint:
        """Set the whole split: deployed versions missing from ``weights`` get 0%."""
        ep = self.endpoint(endpoint)
        for version, weight in weights.items():
            if version not in ep.weights:
                raise AdminError(422, f"weights.{version}: not deployed on endpoint {endpoint!r} "
                                      f"(deployed: {', '.join(ep.weights) or 'none'})")
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise AdminError(422, f"weights.{version}: must be an integer in 0..100, got {weight!r}")
        total = sum(weights.values())
        if total != 100:
            raise AdminError(422, f"weights: must sum to 100, got {total}")
        ep.weights = {version: int(weights.get(version, 0)) for version in ep.weights}
        return ep

    def set_mirror(self, endpoint: str, mirror: Mirror | None) -> Endpoint:
        """Mirror part of the endpoint's requests to a deployed version, or stop mirroring (None)."""
        ep = self.endpoint(endpoint)
        if mirror is not None:
            _require_deployed(ep, "mirror.version", mirror.version)
        ep.mirror = mirror
        return ep

    def set_targeting(self, endpoint: str, targeting: Targeting | None) -> Endpoint:
        """Restrict a deployed version to the requests ``targeting`` matches, or lift the restriction (None)."""
        ep = self.endpoint(endpoint)
        if targeting is not None:
            _require_deployed(ep, "targeting.version", targeting.version)
        ep.targeting = targeting
        return ep

    def remove(self, endpoint: str, version: str) -> Endpoint:
        """Remove a version holding 0% that is not the mirror target; no-op if it is not deployed."""
        ep = self.endpoint(endpoint)
        weight = ep.weights.get(version)
        if weight:
            raise AdminError(409, f"version {version!r} still holds {weight}% of endpoint {endpoint!r}; "
                                  "move its traffic away first")
        if ep.mirror is not None and ep.mirror.version == version:
            raise AdminError(409, f"version {version!r} is the mirror target of endpoint {endpoint!r}; "
                                  "clear the mirror first")
        ep.weights.pop(version, None)
        if ep.targeting is not None and ep.targeting.version == version:
            ep.targeting = None  # a removed version is targeted at nobody
        return ep

    def set_faults(self, version: str, faults: Faults | Sequence[Faults] | None) -> None:
        """Set (replace) or clear the faults of a version; it need not be deployed yet.

        Several faults apply together (:func:`combine_faults`), each to the requests its ``when`` matches.
        """
        found = () if faults is None else (faults,) if isinstance(faults, Faults) else tuple(faults)
        found = tuple(f for f in found if f != NO_FAULTS)
        if not found:
            self.faults.pop(version, None)
        else:
            self.faults[check_name("version", version)] = found

    def faults_of(self, version: str) -> dict[str, Any] | list[dict[str, Any]]:
        """Return a version's faults as the admin API shows them: one object, or a list of several."""
        found = self.faults.get(version, ())
        if len(found) <= 1:
            return (found[0] if found else NO_FAULTS).model_dump()
        return [f.model_dump() for f in found]

    def to_dict(self) -> dict[str, Any]:
        return {"endpoints": {name: ep.to_dict() for name, ep in sorted(self.endpoints.items())},
                "faults": {version: self.faults_of(version) for version in sorted(self.faults)}}
