"""A real moto server in this process, and the one SageMaker call moto 5.2 does not implement.

``moto_server()`` runs moto's own ``ThreadedMotoServer`` on a free loopback port: every AWS call of the
tests goes over HTTP to real moto code.

``update_endpoint_extension()`` is a test-side extension, **not moto**: moto 5.2 has no
``UpdateEndpoint`` (its SageMaker server answers HTTP 500 "The update_endpoint action has not been
implemented"), yet every rollout on SageMaker needs it to add the candidate's variant and to remove a
variant. moto dispatches ``SageMaker.UpdateEndpoint`` to a method ``update_endpoint`` of
``moto.sagemaker.responses.SageMakerResponse`` when the class has one, so the extension adds that
method, for as long as the context is open, doing what AWS does once an update has finished: the
endpoint takes the new endpoint config and its production variants (``CurrentWeight`` = the config's
``InitialVariantWeight``, instance counts = ``InitialInstanceCount``). With ``updating_s > 0`` the
endpoint also reports ``Updating`` for that many seconds after the call (AWS takes minutes), so that
waits for an update really wait; with ``updating_s=math.inf`` it stays ``Updating`` until the test
calls :meth:`UpdateControl.finish`. Everything else (configs, models, DescribeEndpoint,
UpdateEndpointWeightsAndCapacities, CloudWatch) stays moto's own code.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from services import require_service


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's ThreadedMotoServer on 127.0.0.1 (free port); yield its URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        require_service(False, "moto[server] is not installed (pip install 'moto[server]==5.2.*')")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class UpdateControl:
    """What a test sees of the extension: DescribeEndpoint calls per endpoint, and finishing an update."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.settles_at: dict[str, float] = {}  # endpoint name -> monotonic time its update finishes
        self.describe_calls: dict[str, int] = {}

    def finish(self, endpoint: str) -> None:
        """Let the update in progress on ``endpoint`` finish now (its next DescribeEndpoint says InService)."""
        with self.lock:
            if endpoint in self.settles_at:
                self.settles_at[endpoint] = 0.0


@contextlib.contextmanager
def update_endpoint_extension(*, updating_s: float = 0.0) -> Iterator[UpdateControl]:
    """Give moto's in-process SageMaker server an ``UpdateEndpoint`` (see the module docstring).

    :param updating_s: seconds the endpoint reports ``Updating`` after each UpdateEndpoint
        (``math.inf``: until :meth:`UpdateControl.finish`).
    :raises RuntimeError: when the installed moto implements UpdateEndpoint itself (drop the extension).
    """
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import FakeEndpoint
    from moto.sagemaker.responses import SageMakerResponse

    if "update_endpoint" in vars(SageMakerResponse):
        raise RuntimeError("moto's SageMakerResponse already has update_endpoint: moto implements UpdateEndpoint "
                           "now (or the extension is open twice); use moto's and drop this extension")
    control = UpdateControl()
    original_describe = SageMakerResponse.describe_endpoint

    def finish_due_updates(endpoint: FakeEndpoint) -> None:
        with control.lock:
            due = control.settles_at.get(endpoint.endpoint_name)
            if due is not None and time.monotonic() >= due:
                endpoint.endpoint_status = "InService"
                del control.settles_at[endpoint.endpoint_name]

    def update_endpoint(self: SageMakerResponse) -> ActionResult:
        backend = self.sagemaker_backend
        name = self._get_param("EndpointName")
        config_name = self._get_param("EndpointConfigName")
        endpoint = backend.endpoints.get(name)
        if endpoint is None:
            arn = FakeEndpoint.arn_formatter(name, backend.account_id, backend.region_name)
            raise ValidationError(message=f"Could not find endpoint '{arn}'.")
        finish_due_updates(endpoint)
        if endpoint.endpoint_status != "InService":  # as AWS: one update at a time
            raise ValidationError(message=f"Cannot update in-progress endpoint '{endpoint.arn}'.")
        config = backend.describe_endpoint_config(config_name)  # ValidationError if it does not exist
        endpoint.endpoint_config_name = config_name
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        endpoint.last_modified_time = utcnow()
        if updating_s > 0:
            with control.lock:
                endpoint.endpoint_status = "Updating"
                control.settles_at[name] = time.monotonic() + updating_s
        return ActionResult({"EndpointArn": endpoint.arn})

    def describe_endpoint(self: SageMakerResponse) -> ActionResult:
        name = self._get_param("EndpointName")
        endpoint = self.sagemaker_backend.endpoints.get(name)
        with control.lock:
            control.describe_calls[name] = control.describe_calls.get(name, 0) + 1
        if endpoint is not None:
            finish_due_updates(endpoint)
        return original_describe(self)

    SageMakerResponse.update_endpoint = update_endpoint
    SageMakerResponse.describe_endpoint = describe_endpoint
    try:
        yield control
    finally:
        del SageMakerResponse.update_endpoint
        SageMakerResponse.describe_endpoint = original_describe
