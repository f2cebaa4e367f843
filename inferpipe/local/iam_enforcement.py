"""moto checks every request against the caller's IAM policies, as AWS does.

With enforcement on (:func:`set_iam_enforcement`), only IAM users' access keys and assumed roles'
credentials are accepted, and each request is checked against its role's statements. The moto
gaps bridged here:

* moto only names a request's Resource for S3 and SQS (everything else is checked against ``*``,
  which no least-privilege statement matches): :func:`install` names the resource of DynamoDB, SNS,
  EventBridge, Step Functions, Lambda and CloudWatch Logs requests.
* moto checks ``<service>:<operation>``; some operations' IAM action has another name
  (:data:`IAM_ACTION_NAMES`).
* an EventBridge rule's target role must allow ``states:StartExecution`` (:func:`trigger_denied`,
  used by :mod:`inferpipe.local.event_delivery`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from inferpipe.local.patches import Patches

_lock = threading.Lock()
_patches = Patches()

#: API operations whose IAM action has another name (moto checks "<service>:<operation>"). The batch
#: APIs are authorised by their single-message action: "The permission to call SendMessageBatch is
#: sqs:SendMessage" (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-api-permissions-reference.html);
#: the Service Authorization Reference lists no sns:PublishBatch, PublishBatch needs sns:Publish
#: (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonsns.html).
IAM_ACTION_NAMES = {
    "lambda:Invoke": "lambda:InvokeFunction",
    "sns:PublishBatch": "sns:Publish",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
}


def iam_enforced() -> bool:
    """True when moto checks every request against IAM (see :func:`set_iam_enforcement`)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    return bool(ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT)


def set_iam_enforcement(enabled: bool) -> None:
    """Switch moto's IAM enforcement on (every request from now on) or off, process-wide.

    What ``moto.core.set_initial_no_auth_action_count(0)`` does for a decorated test, and what the
    server's ``POST /moto-api/reset-auth`` does; usable around a whole fixture. With it on, only
    IAM users' access keys and assumed roles' credentials are accepted.
    """
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0 if enabled else float("inf")
    ActionAuthenticatorMixin.request_count = 0


def trigger_denied(target: Mapping[str, Any]) -> str | None:
    """Why the target's role may not start the execution (None when it may, or IAM is not enforced)."""
    role_arn = target.get("RoleArn")
    if not role_arn or not iam_enforced():
        return None
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.iam.models import iam_backends

    account = str(role_arn).split(":")[4]
    iam = iam_backends[account]["aws"]
    role_name = str(role_arn).rsplit("/", 1)[-1]
    documents = [iam.get_role_policy(role_name, name)[1] for name in iam.list_role_policies(role_name)]
    results = [
        IAMPolicy(document).is_action_permitted("states:StartExecution", target["Arn"]) for document in documents
    ]
    if PermissionResult.PERMITTED in results and PermissionResult.DENIED not in results:
        return None
    return f"AccessDeniedException: {role_arn} is not authorized to perform states:StartExecution on {target['Arn']}"


# -- the resource of each request -----------------------------------------------------------


def _arn(response: Any, service: str, resource: str) -> str:
    return f"arn:aws:{service}:{response.region}:{response.current_account}:{resource}"


def _json_param(response: Any, name: str) -> Any:
    body = response.body
    try:
        parsed = body if isinstance(body, dict) else json.loads(body or "{}")
        return parsed.get(name)
    except (TypeError, ValueError, AttributeError):
        return None


def _dynamodb_resource(self: Any) -> str:
    table = _json_param(self, "TableName")
    return _arn(self, "dynamodb", f"table/{table}") if table else "*"


def _sns_resource(self: Any) -> str:
    return str(self._get_param("TopicArn") or self._get_param("TargetArn") or "*")


def _events_resource(self: Any) -> str:
    entries = _json_param(self, "Entries")
    buses = {str(entry.get("EventBusName") or "default") for entry in entries or [] if isinstance(entry, dict)}
    if not buses and _json_param(self, "EventBusName"):
        buses = {str(_json_param(self, "EventBusName"))}
    if len(buses) != 1:
        return "*"
    bus = buses.pop()
    return bus if bus.startswith("arn:") else _arn(self, "events", f"event-bus/{bus}")


def _states_resource(self: Any) -> str:
    return str(_json_param(self, "stateMachineArn") or _json_param(self, "executionArn") or "*")


def _lambda_resource(self: Any) -> str:
    from urllib.parse import parse_qs, unquote, urlparse

    parsed = urlparse(self.uri)
    parts = unquote(parsed.path).split("/functions/", 1)
    if len(parts) != 2:
        return "*"
    name = parts[1].split("/", 1)[0]
    arn = name if name.startswith("arn:") else _arn(self, "lambda", f"function:{name}")
    qualifier = parse_qs(parsed.query).get("Qualifier")
    return f"{arn}:{qualifier[0]}" if qualifier and arn.count(":") == 6 else arn


def _logs_resource(self: Any) -> str:
    group = _json_param(self, "logGroupName")
    if not group:
        return "*"
    stream = _json_param(self, "logStreamName")
    return _arn(self, "logs", f"log-group:{group}:log-stream:{stream}" if stream else f"log-group:{group}:*")


def _response_classes() -> dict[str, tuple[Any, Callable[[Any], str]]]:
    from moto.awslambda.responses import LambdaResponse
    from moto.dynamodb.responses import DynamoHandler
    from moto.events.responses import EventsHandler
    from moto.logs.responses import LogsResponse
    from moto.sns.responses import SNSResponse
    from moto.stepfunctions.responses import StepFunctionResponse

    return {
        "dynamodb": (DynamoHandler, _dynamodb_resource),
        "sns": (SNSResponse, _sns_resource),
        "events": (EventsHandler, _events_resource),
        "states": (StepFunctionResponse, _states_resource),
        "lambda": (LambdaResponse, _lambda_resource),
        "logs": (LogsResponse, _logs_resource),
    }


def _iam_request_init(self: Any, *args: Any, **kwargs: Any) -> None:
    from moto.iam.access_control import IAMRequestBase

    _patches.original(IAMRequestBase, "__init__")(self, *args, **kwargs)
    self._action = IAM_ACTION_NAMES.get(self._action, self._action)


def install() -> None:
    """Name the resources and actions moto checks (idempotent; loud when moto already names them)."""
    from moto.iam.access_control import IAMRequestBase

    with _lock:
        if _patches.applied:
            return
        _patches.apply(IAMRequestBase, "__init__", _iam_request_init)
        for service, (cls, resolver) in _response_classes().items():
            if "_determine_resource" in cls.__dict__:
                raise RuntimeError(f"moto now resolves {service} resources itself: drop the bridge's resolver")
            _patches.apply(cls, "_determine_resource", resolver)


def uninstall() -> None:
    with _lock:
        _patches.undo()


__all__ = ["IAM_ACTION_NAMES", "iam_enforced", "install", "set_iam_enforcement", "trigger_denied", "uninstall"]
