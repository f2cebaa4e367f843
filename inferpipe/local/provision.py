"""Create every resource of the stack, with the names Terraform uses, against an AWS endpoint.

Idempotent: running it again against the same endpoint converges (existing resources are kept
and their configuration updated). Two local-only observers are added, which are *not* part of
the product: ``${prefix}-local-sns-tap`` (an SQS queue subscribed to the predictions topic with
raw delivery) and ``${prefix}-local-events-tap`` (a rule on the predictions bus sending every
``inferpipe`` event to an SQS queue of that name), so tests and the CLI can read SNS and
EventBridge deliveries back.

Example::

    provisioned = provision(lambda service: boto3.client(service, endpoint_url=url), render_resources())
    provisioned.state_machine_arn
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from functions.common import stack
from inferpipe.stack.policies import KNOWN_SINKS, function_log_group, role_names, role_policies, role_services
from inferpipe.stack.resources import Claims, Resources, asl_values, function_environment, render_asl, render_template

_LOG = logging.getLogger("inferpipe.local.provision")


ClientFactory = Callable[[str], Any]


@dataclass(frozen=True)
class Provisioned:
    """What provisioning created: the ARNs and URLs the rest of the stack needs."""

    function_arns: dict[str, str]
    state_machine_arn: str
    queue_url: str
    trigger_dlq_url: str
    sns_tap_url: str
    events_tap_url: str
    image_uri: str
    #: "batched" (rule -> buffer queue -> pipe) or "direct" (rule -> state machine)
    trigger_mode: str = "direct"
    trigger_buffer_url: str | None = None
    pipe_name: str | None = None
    #: where status change events the status recorder could not take end up
    status_dlq_url: str | None = None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _trust(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )


def _ensure_role(iam: Any, name: str, service: str, policies: dict[str, dict[str, Any]]) -> str:
    """Create or converge a role whose inline policies are exactly ``policies`` (name -> document)."""
    try:
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=_trust(service))["Role"]["Arn"]
    except ClientError as exc:
        if _code(exc) != "EntityAlreadyExists":
            raise
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=_trust(service))
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
    for policy_name, document in policies.items():
        iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document))
    for page in iam.get_paginator("list_role_policies").paginate(RoleName=name):
        for stale in set(page["PolicyNames"]) - set(policies):
            iam.delete_role_policy(RoleName=name, PolicyName=stale)
    return str(arn)


def _ensure_bucket(s3: Any, name: str, region: str, versioned: bool) -> None:
    try:
        if region == "us-east-1":
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    except ClientError as exc:
        if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def _ensure_queue(sqs: Any, name: str, resources: Resources, allow: tuple[str, str] | None = None) -> tuple[str, str]:
    """(url, arn); ``allow`` = (service principal, source ARN) that may send to it."""
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = resources.arn("sqs", name)
    if allow:
        principal, source = allow
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": principal},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": source}},
                }
            ],
        }
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    return url, arn


def _ensure_table(ddb: Any, name: str) -> None:
    try:
        ddb.create_table(
            TableName=name,
            KeySchema=[
                {"AttributeName": "object", "KeyType": "HASH"},
                {"AttributeName": "version", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "object", "AttributeType": "S"},
                {"AttributeName": "version", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if _code(exc) != "ResourceInUseException":
            raise
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100})


def _ensure_claims_table(ddb: Any, claims: Claims) -> None:
    """The claims table, as terraform/orchestration.tf makes it: a partition key and a TTL attribute."""
    try:
        ddb.create_table(
            TableName=claims.table,
            KeySchema=[{"AttributeName": claims.key_attribute, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": claims.key_attribute, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if _code(exc) != "ResourceInUseException":
            raise
    ddb.get_waiter("table_exists").wait(TableName=claims.table, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100})
    # Enabling TTL twice is a ValidationException on AWS: only when it is off.
    if ddb.describe_time_to_live(TableName=claims.table)["TimeToLiveDescription"].get("TimeToLiveStatus") != "ENABLED":
        ddb.update_time_to_live(
            TableName=claims.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": claims.ttl_attribute}
        )


def _ensure_log_group(logs: Any, name: str, retention_days: int = 14) -> None:
    """A function's log group, created ahead of it as Terraform does (its role may only write to it)."""
    try:
        logs.create_log_group(logGroupName=name)
    except ClientError as exc:
        if _code(exc) != "ResourceAlreadyExistsException":
            raise
    logs.put_retention_policy(logGroupName=name, retentionInDays=retention_days)


def _ensure_event_bus(events: Any, name: str) -> None:
    try:
        events.create_event_bus(Name=name)
    except ClientError as exc:
        if _code(exc) != "ResourceAlreadyExistsException":
            raise


def _ensure_function(
    awslambda: Any, resources: Resources, key: str, role_arn: str, image_uri: str, queue_url: str
) -> str:
    spec = resources.functions[key]
    environment = {"Variables": function_environment(resources, key, queue_url=queue_url)}
    config = {
        "Role": role_arn,
        "MemorySize": spec.memory_mb,
        "Timeout": spec.timeout_s,
        "Environment": environment,
        "ImageConfig": {"Command": [spec.command]},
    }
    try:
        created = awslambda.create_function(
            FunctionName=spec.name, PackageType="Image", Code={"ImageUri": image_uri}, Publish=False, **config
        )
        return str(created["FunctionArn"])
    except ClientError as exc:
        if _code(exc) != "ResourceConflictException":
            raise
    awslambda.update_function_code(FunctionName=spec.name, ImageUri=image_uri)
    return str(awslambda.update_function_configuration(FunctionName=spec.name, **config)["FunctionArn"])


def _ensure_state_machine(sfn: Any, resources: Resources, definition: str, role_arn: str) -> str:
    arn = resources.state_machine_arn
    try:
        return str(
            sfn.create_state_machine(
                name=resources.state_machine, definition=definition, roleArn=role_arn, type="STANDARD"
            )["stateMachineArn"]
        )
    except ClientError as exc:
        if _code(exc) != "StateMachineAlreadyExists":
            raise
    sfn.update_state_machine(stateMachineArn=arn, definition=definition, roleArn=role_arn)
    return arn


def _ensure_rule(events: Any, name: str, bus: str, pattern: dict[str, Any], targets: list[dict[str, Any]]) -> None:
    events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps(pattern), State="ENABLED")
    answer = events.put_targets(Rule=name, EventBusName=bus, Targets=targets)
    if answer.get("FailedEntryCount"):
        raise RuntimeError(f"rule {name}: targets not accepted: {answer.get('FailedEntries')}")


def _ensure_status_rule(events: Any, sqs: Any, awslambda: Any, r: Resources, sink_arn: str) -> str:
    """stack.json ``status_rule``, as terraform/events.tf makes it: the status change events of the
    pipeline state machine -> the sink function (mode status), with a dead-letter queue; only this
    rule may invoke the function. The dead-letter queue's URL."""
    status = r.status_rule
    rule_arn = r.arn("events", f"rule/{status.rule}")
    dlq_url, dlq_arn = _ensure_queue(sqs, status.dlq, r, allow=("events.amazonaws.com", rule_arn))
    try:
        awslambda.add_permission(
            FunctionName=sink_arn,
            StatementId="StatusChangeEvents",
            Action="lambda:InvokeFunction",
            Principal="events.amazonaws.com",
            SourceArn=rule_arn,
            SourceAccount=r.account_id,
        )
    except ClientError as exc:
        if _code(exc) != "ResourceConflictException":  # there already
            raise
    target = {
        "Id": status.target_id,
        "Arn": sink_arn,
        "InputTransformer": {
            "InputPathsMap": dict(status.input_paths),
            "InputTemplate": render_template(status.input_template, asl_values(r)),
        },
        "RetryPolicy": {
            "MaximumEventAgeInSeconds": status.maximum_event_age_s,
            "MaximumRetryAttempts": status.maximum_retry_attempts,
        },
        "DeadLetterConfig": {"Arn": dlq_arn},
    }
    _ensure_rule(events, status.rule, "default", status.pattern, [target])
    return dlq_url


def _ensure_subscription(sns: Any, topic_arn: str, queue_arn: str) -> None:
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
        if any(sub["Protocol"] == "sqs" and sub["Endpoint"] == queue_arn for sub in page["Subscriptions"]):
            return
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})


def image_uri(resources: Resources, tag: str = "local") -> str:
    """The functions' container image (not pulled locally: moto stubs ECR lookups by default)."""
    return f"{resources.account_id}.dkr.ecr.{resources.region}.amazonaws.com/{resources.image_repository}:{tag}"


def _ensure_trigger_buffer(sqs: Any, r: Resources, rule_arn: str) -> tuple[str, str]:
    """The buffer queue the rule sends to (with its dead-letter queue): (url, arn)."""
    buffer = r.trigger_buffer
    _, dlq_arn = _ensure_queue(sqs, buffer.dlq, r)
    url, arn = _ensure_queue(sqs, buffer.queue, r, allow=("events.amazonaws.com", rule_arn))
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "VisibilityTimeout": str(buffer.visibility_timeout_s),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(buffer.max_receive_count)}
            ),
        },
    )
    return url, arn


def _ensure_pipe(pipes: Any, r: Resources, queue_arn: str, state_machine_arn: str, role_arn: str) -> str:
    """The pipe, configured as terraform/ configures it (source batching, FIRE_AND_FORGET, input template)."""
    buffer = r.trigger_buffer
    config = {
        "RoleArn": role_arn,
        "SourceParameters": {
            "SqsQueueParameters": {
                "BatchSize": buffer.batch_size,
                "MaximumBatchingWindowInSeconds": buffer.batching_window_s,
            }
        },
        "Target": state_machine_arn,
        "TargetParameters": {
            "InputTemplate": buffer.input_template,
            "StepFunctionStateMachineParameters": {"InvocationType": "FIRE_AND_FORGET"},
        },
        "DesiredState": "RUNNING",
    }
    try:
        pipes.create_pipe(Name=buffer.pipe, Source=queue_arn, **config)
    except ClientError as exc:
        if _code(exc) != "ConflictException":
            raise
        pipes.update_pipe(Name=buffer.pipe, **{k: v for k, v in config.items() if k != "SourceParameters"})
    return buffer.pipe


def provision(
    client: ClientFactory, resources: Resources, definition: str | None = None, trigger: str | None = None
) -> Provisioned:
    """Create (or converge) every resource; ``definition`` overrides the state machine file's text;
    ``trigger`` is "batched" or "direct" (default: stack.json ``trigger_buffer.default_mode``)."""
    r = resources
    trigger = trigger or r.trigger_buffer.default_mode
    if trigger not in r.trigger_buffer.modes:
        raise ValueError(f"unknown trigger mode {trigger!r}: expected one of {', '.join(r.trigger_buffer.modes)}")
    s3, sqs, sns, events = client("s3"), client("sqs"), client("sns"), client("events")

    for name, bucket in r.buckets.items():
        # stack.json unversioned_buckets, as terraform/storage.tf: all but the work bucket's scratch tensors
        _ensure_bucket(s3, bucket, r.region, versioned=name not in stack.STACK["unversioned_buckets"])
    s3.put_bucket_notification_configuration(
        Bucket=r.buckets["input"], NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    _ensure_table(client("dynamodb"), r.table)
    _ensure_claims_table(client("dynamodb"), r.claims)
    topic_arn = sns.create_topic(Name=r.topic)["TopicArn"]
    queue_url, _ = _ensure_queue(sqs, r.queue, r)
    _ensure_event_bus(events, r.event_bus)

    # The very documents Terraform attaches (terraform/policies/*.json.tftpl), with the functions'
    # unqualified ARNs: the local state machine invokes those, the deployed one their "live" alias.
    # The batched trigger has a pipe role and no trigger role (an SQS target takes none), as in Terraform.
    batched = trigger == "batched"
    policies = role_policies(r, sinks=KNOWN_SINKS, trigger=not batched, pipe=batched)
    services = role_services(trigger=not batched, pipe=batched)
    names = role_names(r)
    roles = {
        key: _ensure_role(client("iam"), name, services[key], policies[key])
        for key, name in names.items()
        if policies.get(key)
    }

    for key in r.functions:
        _ensure_log_group(client("logs"), function_log_group(r, key))
    uri = image_uri(r)
    awslambda = client("lambda")
    function_arns = {key: _ensure_function(awslambda, r, key, roles[key], uri, queue_url) for key in r.functions}

    text = definition if definition is not None else r.definition_path.read_text(encoding="utf-8")
    asl = render_asl(text, asl_values(r, function_arns))
    state_machine_arn = _ensure_state_machine(client("stepfunctions"), r, asl, roles["state_machine"])

    rule_arn = r.arn("events", f"rule/{r.trigger_rule}")
    dlq_url, dlq_arn = _ensure_queue(sqs, r.trigger_dlq, r, allow=("events.amazonaws.com", rule_arn))
    retry_policy = {
        "MaximumRetryAttempts": r.trigger_target.maximum_retry_attempts,
        "MaximumEventAgeInSeconds": r.trigger_target.maximum_event_age_s,
    }
    target: dict[str, Any] = {
        "Id": r.trigger_target.id,
        "RetryPolicy": retry_policy,
        "DeadLetterConfig": {"Arn": dlq_arn},
    }
    buffer_url = pipe_name = None
    if trigger == "batched":
        buffer_url, buffer_arn = _ensure_trigger_buffer(sqs, r, rule_arn)
        pipe_name = _ensure_pipe(client("pipes"), r, buffer_arn, state_machine_arn, roles["pipe"])
        target["Arn"] = buffer_arn  # SQS targets take no role: the queue policy lets the rule send
    else:
        target.update(Arn=state_machine_arn, RoleArn=roles["trigger"])
    _ensure_rule(events, r.trigger_rule, "default", r.trigger_pattern, [target])

    status_dlq_url = _ensure_status_rule(events, sqs, awslambda, r, function_arns["sink"])

    # Local observers (not part of the product).
    sns_tap_url, sns_tap_arn = _ensure_queue(sqs, r.local_sns_tap, r, allow=("sns.amazonaws.com", topic_arn))
    _ensure_subscription(sns, topic_arn, sns_tap_arn)
    tap_rule_arn = r.arn("events", f"rule/{r.event_bus}/{r.local_events_tap}")
    events_tap_url, events_tap_arn = _ensure_queue(
        sqs, r.local_events_tap, r, allow=("events.amazonaws.com", tap_rule_arn)
    )
    _ensure_rule(
        events,
        r.local_events_tap,
        r.event_bus,
        {"source": [stack.EVENT_SOURCE]},
        [{"Id": "local-tap", "Arn": events_tap_arn}],
    )
    _LOG.info("provisioned %s (state machine %s)", r.prefix, state_machine_arn)
    return Provisioned(
        function_arns=function_arns,
        state_machine_arn=state_machine_arn,
        queue_url=queue_url,
        trigger_dlq_url=dlq_url,
        sns_tap_url=sns_tap_url,
        events_tap_url=events_tap_url,
        image_uri=uri,
        trigger_mode=trigger,
        trigger_buffer_url=buffer_url,
        pipe_name=pipe_name,
        status_dlq_url=status_dlq_url,
    )


__all__ = ["Provisioned", "image_uri", "provision"]
