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
import dataclasses
import datetime
import threading
import time
from collections.abc import Iterator
from typing import Any

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


@dataclasses.dataclass(frozen=True)
class SeenRequest:
    """One request moto received while :func:`expiring_credentials` was open."""

    service: str
    action: str
    access_key: str
    at: datetime.datetime  # when the client signed the request (X-Amz-Date, UTC, whole seconds)
    refused: bool  # True: its assumed-role credentials had expired, it was answered ExpiredTokenException


class CredentialLog:
    """What a test sees of :func:`expiring_credentials`: every request with the access key that signed it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[SeenRequest] = []

    def seen(self, service: str, action: str | None = None) -> list[SeenRequest]:
        """Return the requests to ``service`` (and ``action``), oldest first."""
        with self.lock:
            return [r for r in self.requests if r.service == service and action in (None, r.action)]

    @staticmethod
    def assumed_role(access_key: str) -> Any:
        """Return moto's record of the role session that issued ``access_key`` (None: not an STS key)."""
        from moto.sts.models import sts_backends

        for account_id in list(sts_backends):
            for role in sts_backends[account_id]["aws"].assumed_roles:
                if role.access_key_id == access_key:
                    return role
        return None


@contextlib.contextmanager
def expiring_credentials() -> Iterator[CredentialLog]:
    """Make moto's in-process server refuse expired assumed-role credentials, and log who signed each request.

    A test-side extension, **not moto**: moto 5.2's STS issues credentials with an ``Expiration``
    (``AssumeRole`` honours ``DurationSeconds``, and accepts less than AWS's 900 s minimum) but no service
    checks it, so a client holding frozen keys keeps working forever there. AWS refuses such a request;
    so does this extension: a request signed with an access key of an assumed-role session whose
    ``Expiration`` has passed (on moto's clock) is answered ``ExpiredTokenException`` before the action
    runs. Every request is logged with the access key in its ``Authorization`` header. Signatures and
    permissions are moto's own checks (when its auth is on); everything else is moto's own code.
    """
    from moto.core.exceptions import ServiceException
    from moto.core.responses import ActionResult, BaseResponse
    from moto.core.utils import utcnow

    class ExpiredTokenError(ServiceException):
        code = "ExpiredTokenException"
        message = "The security token included in the request is expired"

    # The error shape is STS's own (STS issued the token): moto looks an error's shape up in the called
    # service's model, then in the model of the service its class's module names ("moto.<service>...").
    ExpiredTokenError.__module__ = "moto.sts.exceptions"
    log = CredentialLog()
    original_call_action = BaseResponse.call_action

    def signed_at(self: BaseResponse) -> Any:
        """When the client signed the request (SigV4 ``X-Amz-Date``), else now.

        AWS compares the token's expiry with the time it receives the request; this extension compares
        it with the signing time, so that a loaded test machine that takes a while to deliver a request
        signed with still-valid credentials cannot fail it. What is under test is the client: whether it
        signed with credentials that had expired.
        """
        stamp = self.headers.get("X-Amz-Date") or self.headers.get("x-amz-date")
        if stamp:
            with contextlib.suppress(ValueError):
                return datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")
        return utcnow()

    def call_action(self: BaseResponse) -> Any:
        access_key = self.get_access_key()
        role = log.assumed_role(access_key)
        now = signed_at(self)
        refused = role is not None and role.expiration <= now
        with log.lock:
            log.requests.append(SeenRequest(service=str(self.service_name), action=self._get_action(),
                                            access_key=access_key, at=now, refused=refused))
        if refused:
            status, headers, body = self.serialized(ActionResult(ExpiredTokenError()))
            headers["status"] = status
            return self._transform_response(self.response_headers, (body, headers))
        return original_call_action(self)

    BaseResponse.call_action = call_action
    try:
        yield log
    finally:
        BaseResponse.call_action = original_call_action
