"""Traffic router over a SageMaker real-time endpoint: one production variant per model version.

Naming: version ``v2`` is the production variant ``<variant_prefix>v2`` (default ``v-v2``) serving the
SageMaker model ``model_name_template.format(endpoint=..., version=...)`` (default ``"{endpoint}-{version}"``).
The model must already exist (the training pipeline creates it); this router only moves traffic.

* :meth:`deploy` creates a new endpoint config = the current variants (at their *current* weights and
  instance counts) + the new variant at weight 0, then ``UpdateEndpoint``. Instance type and count are
  copied from the current primary variant (the one with the highest weight) unless ``instance_type`` /
  ``initial_instance_count`` are given.
* :meth:`set_weights` calls ``UpdateEndpointWeightsAndCapacities`` for every production variant, always
  with ``DesiredInstanceCount`` (the current count) so a weight change never scales anything.
* :meth:`remove` creates a config without the variant, then ``UpdateEndpoint``.
* :meth:`set_mirror` uses a SageMaker shadow variant (``ShadowProductionVariants``). SageMaker allows one
  production variant beside one shadow variant, so while mirroring, the endpoint carries only the stable
  variant and the candidate as shadow; :meth:`deploy` puts the candidate back at 0% afterwards. Only
  ``percent=100`` is honoured (shadow weight equal to the production weight: every request is copied);
  other sampling percentages raise :class:`BackendError` rather than guess at a ratio.

Endpoint updates are asynchronous. With ``wait=True`` (default) every mutating call waits, bounded by
``wait_timeout_s``, until the endpoint is ``InService`` on the expected config. An Airflow task defers
the wait instead: it takes :meth:`without_waiting`, makes the change, and asks :meth:`pending_change`
once; a trigger then asks :meth:`pending_change` with the returned :class:`PendingChange` (whose token
carries the expected config) until it answers None. Before changing anything, a call waits for an
update already in progress (or, with ``wait=False``, raises), so a retried task never stacks updates.

Endpoint config names are ``<endpoint>-<digest of the config>``: a retry after a failure between
``CreateEndpointConfig`` and ``UpdateEndpoint`` reuses the config it created.

Connection: see :mod:`canary.backends.aws` (shared with the CloudWatch metrics source).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from canary.backends.aws import aws_client, client_error
from canary.backends.base import ConnInfo, PendingChange
from canary.errors import BackendError, ChangeFailedError, ConfigError

BACKEND = "sagemaker"

#: Endpoint states that end by themselves; a call waits for them (or raises with ``wait=False``).
TRANSITIONAL_STATES = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack"})
#: Endpoint states that never become InService without someone acting on them.
FAILED_STATES = frozenset({"Failed", "OutOfService", "Deleting", "UpdateRollbackFailed"})
class SageMakerTrafficRouter:
    """Set and read the traffic split of one SageMaker endpoint (see the module docstring)."""

    def __init__(self, conn: ConnInfo, *, endpoint: str, variant_prefix: str = "v-",
                 model_name_template: str = "{endpoint}-{version}", instance_type: str | None = None,
                 initial_instance_count: int | None = None, wait: bool = True, wait_timeout_s: float = 1800.0,
                 poll_interval_s: float = 30.0, sagemaker_client: Any = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        if initial_instance_count is not None and initial_instance_count < 1:
            raise ConfigError(f"sagemaker endpoint {endpoint!r}: initial_instance_count must be >= 1")
        try:
            model_name_template.format(endpoint=endpoint, version="v")
        except (KeyError, IndexError) as err:
            raise ConfigError(f"sagemaker endpoint {endpoint!r}: model_name_template {model_name_template!r} "
                              "may use only {endpoint} and {version}") from err
        self.endpoint = endpoint
        self.variant_prefix = variant_prefix
        self.model_name_template = model_name_template
        self.instance_type = instance_type
        self.initial_instance_count = initial_instance_count
        self.wait = wait
        self.wait_timeout_s = wait_timeout_s
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._clock = clock
        self._client = sagemaker_client if sagemaker_client is not None else aws_client(conn, "sagemaker")
        #: The endpoint config the last UpdateEndpoint of this router switched to (what "settled" means).
        self._expected_config: str | None = None

    # -- naming ---------------------------------------------------------------------------------------

    def variant_name(self, version: str) -> str:
        """Return the production variant name of ``version``."""
        return f"{self.variant_prefix}{version}"

    def model_name(self, version: str) -> str:
        """Return the SageMaker model name of ``version``."""
        return self.model_name_template.format(endpoint=self.endpoint, version=version)

    def version_of(self, variant_name: str) -> str:
        """Return the version a variant serves (a variant without the prefix keeps its own name)."""
        if variant_name.startswith(self.variant_prefix):
            return variant_name[len(self.variant_prefix):]
        return variant_name

    # -- TrafficRouter --------------------------------------------------------------------------------

    def deploy(self, version: str) -> None:
        """Add ``version`` as a production variant at weight 0 (no-op if already a production variant)."""
        endpoint = self._ready_endpoint()
        variant = self.variant_name(version)
        current = {v["VariantName"]: v for v in endpoint.get("ProductionVariants", [])}
        if variant in current:
            return
        config = self._endpoint_config(endpoint)
        model = self.model_name(version)
        self._call("describe_model", variant=variant, ModelName=model)
        variants = self._current_variants(endpoint, config)
        if not variants:
            raise BackendError(BACKEND, f"endpoint {self.endpoint!r} has no production variant to copy "
                                        f"the instance settings of {variant!r} from")
        primary = max(variants, key=lambda v: v["InitialVariantWeight"])
        new_variant = {
            "VariantName": variant, "ModelName": model,
            "InstanceType": self.instance_type or primary.get("InstanceType"),
            "InitialInstanceCount": self.initial_instance_count or primary.get("InitialInstanceCount", 1),
            "InitialVariantWeight": 0.0,
        }
        if not new_variant["InstanceType"]:
            raise BackendError(BACKEND, f"endpoint {self.endpoint!r}: primary variant {primary['VariantName']!r} "
                                        "has no InstanceType (serverless?); set the instance_type option")
        self._apply_config(config, [*variants, new_variant], shadow=[], variant=variant)

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Set the whole split (percent per version, summing to 100; deployed versions not named get 0)."""
        if any(not isinstance(w, int) or isinstance(w, bool) or w < 0 for w in weights.values()) \
                or sum(weights.values()) != 100:
            raise BackendError(BACKEND, f"endpoint {self.endpoint!r}: weights must be non-negative integer "
                                        f"percents summing to 100, got {dict(weights)}")
        endpoint = self._ready_endpoint()
        variants = endpoint.get("ProductionVariants", [])
        deployed = {self.version_of(v["VariantName"]): v for v in variants}
        unknown = sorted(set(weights) - set(deployed))
        if unknown:
            raise BackendError(BACKEND, f"endpoint {self.endpoint!r}: versions {unknown} are not deployed "
                                        f"(deployed: {sorted(deployed)})")
        wanted = {version: weights.get(version, 0) for version in deployed}
        if wanted == self._percents(variants):
            return
        # DesiredInstanceCount is always sent, as the current count: a weight change must never scale.
        desired = [{"VariantName": v["VariantName"],
                    "DesiredWeight": float(wanted[self.version_of(v["VariantName"])]),
                    "DesiredInstanceCount": self._instance_count(v)} for v in variants]
        self._call("update_endpoint_weights_and_capacities", EndpointName=self.endpoint,
                   DesiredWeightsAndCapacities=desired)
        if self.wait:
            self.wait_until_in_service()

    def get_weights(self) -> dict[str, int]:
        """Return the current split from ``CurrentWeight`` (a missing weight counts as 0), in percent."""
        return self._percents(self._describe_endpoint().get("ProductionVariants", []))

    def remove(self, version: str) -> None:
        """Remove the variant of ``version`` (it must hold 0%); no-op if absent."""
        endpoint = self._ready_endpoint()
        variant = self.variant_name(version)
        current = {v["VariantName"]: v for v in endpoint.get("ProductionVariants", [])}
        if variant not in current:
            return
        weight = float(current[variant].get("CurrentWeight") or 0.0)
        if weight > 0:
            raise BackendError(BACKEND, f"endpoint {self.endpoint!r}: cannot remove variant {variant!r} "
                                        f"while it holds weight {weight:g}; set its weight to 0 first")
        if len(current) == 1:
            raise BackendError(BACKEND, f"endpoint {self.endpoint!r}: cannot remove {variant!r}, "
                                        "the endpoint's only production variant")
        config = self._endpoint_config(endpoint)
        variants = [v for v in self._current_variants(endpoint, config) if v["VariantName"] != variant]
        self._apply_config(config, variants, shadow=list(config.get("ShadowProductionVariants") or []),
                           variant=variant)

    def set_mirror(self, version: str | None, percent: int = 100) -> None:
        """Copy every request to ``version`` as a SageMaker shadow variant (None removes the shadow).

        :raises BackendError: for ``percent`` other than 100, or when more than one other version serves
            traffic (SageMaker pairs one production variant with one shadow variant).
        """
        endpoint = self._ready_endpoint()
        config = self._endpoint_config(endpoint)
        shadow_now = list(config.get("ShadowProductionVariants") or [])
        variants = self._current_variants(endpoint, config)
        if version is None:
            if shadow_now:
                self._apply_config(config, variants, shadow=[], variant=shadow_now[0]["VariantName"])
            return
        if percent != 100:
            raise BackendError(BACKEND, f"endpoint {self.endpoint!r}: mirroring {percent}% is not supported; "
                                        "SageMaker shadow variants are used with every request copied "
                                        "(set shadow.mirror_percent to 100)")
        variant = self.variant_name(version)
        if [v["VariantName"] for v in shadow_now] == [variant]:
            return
        serving = [v for v in variants if v["VariantName"] != variant and v["InitialVariantWeight"] > 0]
        if len(serving) != 1:
            raise BackendError(BACKEND, f"endpoint {self.endpoint!r}: a shadow variant needs exactly one serving "
                                        f"production variant, found {[v['VariantName'] for v in serving]}")
        stable = dict(serving[0], InitialVariantWeight=1.0)
        template = next((v for v in variants if v["VariantName"] == variant), stable)
        self._call("describe_model", variant=variant, ModelName=self.model_name(version))
        shadow = {"VariantName": variant, "ModelName": self.model_name(version),
                  "InstanceType": self.instance_type or template.get("InstanceType"),
                  "InitialInstanceCount": self.initial_instance_count or template.get("InitialInstanceCount", 1),
                  "InitialVariantWeight": 1.0}
        self._apply_config(config, [stable], shadow=[shadow], variant=variant)

    # -- waiting --------------------------------------------------------------------------------------

    def without_waiting(self) -> SageMakerTrafficRouter:
        """Return a copy (same client) whose changes return right after the API call (``wait=False``)."""
        router = copy.copy(self)
        router.wait = False
        return router

    def pending_change(self, previous: PendingChange | None = None) -> PendingChange | None:
        """Describe the endpoint once: None when it is InService (on the expected config), else what is pending.

        :param previous: a pending change returned earlier, possibly by another process; its token names
            the expected config. Without it, the config of this router's last ``UpdateEndpoint``, if any.
        :raises ChangeFailedError: the endpoint is in a failed state, or InService on another config
            (SageMaker rolled the update back).
        """
        expected = previous.token.get("expected_config") if previous is not None else self._expected_config
        endpoint = self._describe_endpoint()
        if self._settled(endpoint, expected):
            return None
        return PendingChange(backend=BACKEND, resource=f"endpoint {self.endpoint!r}",
                             state=str(endpoint.get("EndpointStatus")),
                             token={"endpoint": self.endpoint, "expected_config": expected},
                             poll_interval_s=self.poll_interval_s, timeout_s=self.wait_timeout_s)

    def _settled(self, endpoint: Mapping[str, Any], expected_config: str | None) -> bool:
        """Return whether the described endpoint is InService (on ``expected_config``); raise if it never will be."""
        status = endpoint.get("EndpointStatus")
        reason = endpoint.get("FailureReason")
        if status == "InService":
            if expected_config and endpoint.get("EndpointConfigName") != expected_config:
                raise ChangeFailedError(BACKEND, f"endpoint {self.endpoint!r} is InService on config "
                                                 f"{endpoint.get('EndpointConfigName')!r}, not {expected_config!r}: "
                                                 f"the update was rolled back ({reason or 'no failure reason'}); "
                                                 "see the endpoint's events in the SageMaker console")
            return True
        if status in FAILED_STATES:
            raise ChangeFailedError(BACKEND, f"endpoint {self.endpoint!r} is {status}: "
                                             f"{reason or 'no failure reason'}; fix the endpoint (or its model) "
                                             "in SageMaker, then retry the task")
        return False

    def endpoint_status(self) -> dict[str, Any]:
        """Return ``{"status", "config", "failure_reason"}`` of the endpoint (one DescribeEndpoint)."""
        endpoint = self._describe_endpoint()
        return {"status": endpoint.get("EndpointStatus"), "config": endpoint.get("EndpointConfigName"),
                "failure_reason": endpoint.get("FailureReason")}

    def wait_until_in_service(self, *, expected_config: str | None = None,
                              timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the endpoint is ``InService`` (on ``expected_config`` when given); return the description.

        :raises BackendError: on a failed state, on InService with another config (SageMaker rolled the
            update back), or after ``timeout_s`` (default ``wait_timeout_s``).
        """
        timeout_s = self.wait_timeout_s if timeout_s is None else timeout_s
        deadline = self._clock() + timeout_s
        while True:
            endpoint = self._describe_endpoint()
            if self._settled(endpoint, expected_config):
                return endpoint
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise BackendError(BACKEND, f"endpoint {self.endpoint!r} still {endpoint.get('EndpointStatus')} "
                                            f"after {timeout_s:g}s (wait_timeout_s)")
            self._sleep(min(self.poll_interval_s, remaining))

    # -- internals ------------------------------------------------------------------------------------

    def _describe_endpoint(self) -> dict[str, Any]:
        return self._call("describe_endpoint", EndpointName=self.endpoint)

    def _ready_endpoint(self) -> dict[str, Any]:
        """Describe the endpoint, first waiting out an update in progress (or raising with ``wait=False``)."""
        endpoint = self._describe_endpoint()
        status = endpoint.get("EndpointStatus")
        if status in TRANSITIONAL_STATES:
            if not self.wait:
                raise BackendError(BACKEND, f"endpoint {self.endpoint!r} is {status}; wait until it is InService")
            endpoint = self.wait_until_in_service()
        elif status in FAILED_STATES:
            self._settled(endpoint, None)  # raises ChangeFailedError naming state and reason
        return endpoint

    def _endpoint_config(self, endpoint: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("describe_endpoint_config", EndpointConfigName=endpoint["EndpointConfigName"])

    def _current_variants(self, endpoint: Mapping[str, Any], config: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Return the config's production variants with the endpoint's *current* weights and instance counts.

        Weights changed by UpdateEndpointWeightsAndCapacities are not in the config: a new config
        built from the old one's values would silently reset the split.
        """
        live = {v["VariantName"]: v for v in endpoint.get("ProductionVariants", [])}
        variants = []
        for v in config.get("ProductionVariants", []):
            if v["VariantName"] not in live:  # e.g. a variant the config had but an update dropped
                continue
            now = live[v["VariantName"]]
            variant = dict(v, InitialVariantWeight=float(now.get("CurrentWeight") or 0.0))
            if "InitialInstanceCount" in v:
                variant["InitialInstanceCount"] = self._instance_count(now, default=v["InitialInstanceCount"])
            variants.append(variant)
        return variants

    @staticmethod
    def _instance_count(variant: Mapping[str, Any], default: int = 1) -> int:
        return int(variant.get("CurrentInstanceCount") or variant.get("DesiredInstanceCount") or default)

    def _percents(self, variants: list[Mapping[str, Any]]) -> dict[str, int]:
        """Normalise current weights to integer percents summing to 100 (largest remainder)."""
        weights = {self.version_of(v["VariantName"]): float(v.get("CurrentWeight") or 0.0) for v in variants}
        total = sum(weights.values())
        if total <= 0:
            return dict.fromkeys(weights, 0)
        exact = {k: 100.0 * w / total for k, w in weights.items()}
        percents = {k: math.floor(x) for k, x in exact.items()}
        by_remainder = sorted(exact, key=lambda k: (percents[k] - exact[k], k))
        for k in by_remainder[:100 - sum(percents.values())]:
            percents[k] += 1
        return percents

    def _apply_config(self, old: Mapping[str, Any], variants: list[dict[str, Any]], *,
                      shadow: list[dict[str, Any]], variant: str) -> None:
        """Create (or reuse) the endpoint config with these variants and switch the endpoint to it."""
        body: dict[str, Any] = {"ProductionVariants": variants}
        if shadow:
            body["ShadowProductionVariants"] = shadow
        for key in ("DataCaptureConfig", "KmsKeyId", "AsyncInferenceConfig", "ExplainerConfig",
                    "ExecutionRoleArn", "VpcConfig", "EnableNetworkIsolation"):
            if old.get(key):
                body[key] = old[key]
        if not (body.get("DataCaptureConfig") or {}).get("CaptureOptions"):
            body.pop("DataCaptureConfig", None)  # an empty capture config is rejected on create
        name = self.config_name(body)
        if not self._config_exists(name, variant):
            self._call("create_endpoint_config", variant=variant, EndpointConfigName=name, **body)
        self._call("update_endpoint", variant=variant, EndpointName=self.endpoint, EndpointConfigName=name)
        self._expected_config = name
        if self.wait:
            self.wait_until_in_service(expected_config=name)

    def config_name(self, body: Mapping[str, Any]) -> str:
        """Return the endpoint config name for a config body: ``<endpoint>-<12 hex digits of its digest>``."""
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return f"{self.endpoint[:50]}-{digest}"

    def _config_exists(self, name: str, variant: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.describe_endpoint_config(EndpointConfigName=name)
        except ClientError as err:
            # SageMaker answers a missing config with ValidationException (not ResourceNotFound).
            if err.response.get("Error", {}).get("Code") == "ValidationException":
                return False
            raise client_error(BACKEND, "DescribeEndpointConfig", self._what(variant, config=name), err) from err
        except BotoCoreError as err:
            raise client_error(BACKEND, "DescribeEndpointConfig", self._what(variant, config=name), err) from err
        return True

    def _what(self, variant: str | None, **more: str) -> str:
        parts = [f"endpoint {self.endpoint!r}"] + ([f"variant {variant!r}"] if variant else [])
        return ", ".join(parts + [f"{k} {v!r}" for k, v in more.items()])

    def _call(self, method: str, *, variant: str | None = None, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        operation = "".join(part.capitalize() for part in method.split("_"))
        try:
            return getattr(self._client, method)(**kwargs)
        except (ClientError, BotoCoreError) as err:
            what = self._what(variant, **{k: v for k, v in (("model", kwargs.get("ModelName")),
                                                             ("config", kwargs.get("EndpointConfigName"))) if v})
            raise client_error(BACKEND, operation, what, err) from err
