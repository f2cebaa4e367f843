"""The local stack itself: the rendered names, S3 -> EventBridge -> Step Functions, the Lambda
bridge, and the background daemon.

Tier: functional. moto serves on a loopback port in this process; nothing reaches the network.
The pipeline's own handlers are not needed here: the bridge is exercised with the scaffolding
handlers of ``tests/local/handlers_for_bridge_tests.py``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from inferpipe.local import credentials, daemon, lambda_faults, lambda_service, speedups
from inferpipe.local.provision import image_uri, provision
from inferpipe.local.stack import LocalStack
from inferpipe.stack.policies import role_names
from inferpipe.stack.resources import (
    TemplateError,
    asl_values,
    function_environment,
    render_asl,
    render_resources,
    render_template,
)

HANDLERS = "tests.local.handlers_for_bridge_tests"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """GIVEN the local stack runs in this process (shared when another module already started it)."""
    existing = LocalStack.active()
    if existing is not None:
        yield existing
        return
    threads_before = set(threading.enumerate())
    # These tests drive the direct bridge (rule -> state machine); tests/e2e/test_batching.py the batched trigger.
    local = LocalStack(trigger="direct").start()
    try:
        yield local
    finally:
        local.stop()
    leftover = [t.name for t in threading.enumerate() if t not in threads_before]
    assert not leftover, f"threads left behind by LocalStack.stop(): {leftover}"


@pytest.fixture(scope="module")
def test_functions(stack: LocalStack) -> dict[str, dict[str, Any]]:
    """GIVEN three scaffolding functions: two reporting ones with different environments, one failing."""
    awslambda = stack.client("lambda")
    role = stack.client("iam").get_role(RoleName=role_names(stack.resources)["sink"])["Role"]["Arn"]
    run = uuid.uuid4().hex[:6]
    specs = {
        "a": ("report", {"ONLY_IN_A": "yes", "COLOUR": "red"}),
        "b": ("report", {"COLOUR": "blue"}),
        "fails": ("not_an_image", {}),
        "slow": ("sleep", {}),
        "overruns": ("sleep_once_then_write", {}),
        "allocates": ("allocate", {}),
    }
    functions = {}
    for key, (handler, variables) in specs.items():
        created = awslambda.create_function(
            FunctionName=f"bridge-test-{key}-{run}",
            PackageType="Image",
            Code={"ImageUri": image_uri(stack.resources)},
            ImageConfig={"Command": [f"{HANDLERS}.{handler}"]},
            Role=role,
            MemorySize=128,
            Timeout=1 if key in ("slow", "overruns") else 7,
            Environment={"Variables": variables},
        )
        functions[key] = {"name": created["FunctionName"], "arn": created["FunctionArn"], "environment": variables}
    return functions


def _machine_with_pipeline_policies(stack: LocalStack, function_arn: str) -> str:
    """A one-task state machine with the pipeline's own Retry and Catch (from its Preprocess state)."""
    sfn = stack.client("stepfunctions")
    pipeline = json.loads(sfn.describe_state_machine(stateMachineArn=stack.state_machine_arn)["definition"])
    preprocess = pipeline["States"]["Preprocess"]

    # The pipeline's known errors (first Catch) and everything else (States.ALL, last Catch).
    def next_state(catch: dict[str, Any]) -> str:
        return "Unexpected" if catch["ErrorEquals"] == ["States.ALL"] else "Failed"

    caught = preprocess["Catch"][0]["ResultPath"]  # where the error lands: "$" (Preprocess replaces its state)
    error_at = "$" if caught == "$" else caught
    definition = {
        "StartAt": "Task",
        "States": {
            "Task": {
                "Type": "Task",
                "Resource": function_arn,
                "Retry": preprocess["Retry"],
                "Catch": [{**catch, "Next": next_state(catch)} for catch in preprocess["Catch"]],
                "End": True,
            },
            "Failed": {"Type": "Fail", "ErrorPath": f"{error_at}.Error", "CausePath": f"{error_at}.Cause"},
            "Unexpected": {"Type": "Fail", "Error": "Unexpected", "CausePath": f"{error_at}.Cause"},
        },
    }
    role = stack.client("iam").get_role(RoleName=role_names(stack.resources)["state_machine"])["Role"]["Arn"]
    name = f"bridge-test-{uuid.uuid4().hex[:8]}"
    return sfn.create_state_machine(name=name, definition=json.dumps(definition), roleArn=role)["stateMachineArn"]


def _run(stack: LocalStack, machine_arn: str, execution_input: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    sfn = stack.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=machine_arn, name=uuid.uuid4().hex, input=json.dumps(execution_input))[
        "executionArn"
    ]
    return _wait(stack, arn, timeout)


def _wait(stack: LocalStack, execution_arn: str, timeout: float = 60.0) -> dict[str, Any]:
    sfn = stack.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while True:
        described = sfn.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING" or time.monotonic() > deadline:
            return described
        time.sleep(0.1)


def _history(stack: LocalStack, execution_arn: str) -> list[dict[str, Any]]:
    return stack.client("stepfunctions").get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]


def _executions(stack: LocalStack) -> dict[str, dict[str, Any]]:
    """Every execution of the pipeline: arn -> its input."""
    sfn = stack.client("stepfunctions")
    found = {}
    for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=stack.state_machine_arn):
        for summary in page["executions"]:
            described = sfn.describe_execution(executionArn=summary["executionArn"])
            found[summary["executionArn"]] = json.loads(described["input"])
    return found


def _execution_for(stack: LocalStack, bucket: str, key: str, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        for arn, execution_input in _executions(stack).items():
            detail = execution_input.get("detail", {})
            if detail.get("bucket", {}).get("name") == bucket and detail.get("object", {}).get("key") == key:
                return arn, execution_input
        if time.monotonic() > deadline:
            raise AssertionError(f"no execution started for s3://{bucket}/{key}")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- spec: names and templates (no stack) ------------------------------------------------------


def test_render_template_is_terraform_compatible() -> None:
    # GIVEN placeholders next to JSONPath context paths and Terraform's escapes
    text = '{"a": "${X}", "n.$": "States.StringToJson(\'${N}\')", "id.$": "$$.Execution.Id", "lit": "$${Y}", "pct": "%%{ z }"}'
    # WHEN rendered THEN only ${Name} is replaced, $$. survives, escapes become literals (as templatefile does)
    assert render_template(text, {"X": "x", "N": 5}) == (
        '{"a": "x", "n.$": "States.StringToJson(\'5\')", "id.$": "$$.Execution.Id", "lit": "${Y}", "pct": "%{ z }"}'
    )
    with pytest.raises(TemplateError, match="X"):
        render_template("${X} ${Y}", {"Y": "1"})
    with pytest.raises(TemplateError, match="Terraform"):
        render_template("placeholders ${...} here", {})  # Terraform's templatefile() rejects this too
    with pytest.raises(TemplateError, match="Terraform"):
        render_template("%{ if true }", {})


def test_render_asl_binds_every_placeholder_of_the_pipeline_and_keeps_context_paths() -> None:
    # GIVEN the pipeline's ASL and the stack's values
    resources = render_resources()
    values = asl_values(resources)
    # WHEN rendered (an unescaped "${" anywhere, even in a Comment, breaks Terraform's templatefile())
    rendered = render_asl(resources.definition_path.read_text(), values)
    # THEN every task calls its function, the defaults are bound, and context paths are intact
    definition = json.loads(rendered)
    states = definition["States"]
    assert states["Preprocess"]["Resource"] == resources.function_arn("preprocess")
    assert states["Inference"]["Resource"] == resources.function_arn("inference")
    assert states["FanOut"]["ItemProcessor"]["States"]["Deliver"]["Resource"] == resources.function_arn("sink")
    assert states["Preprocess"]["Parameters"]["defaults"] == {
        "sinks": "s3,dynamodb,sns,sqs,eventbridge",
        "top_k": str(resources.defaults.top_k),
        "model": resources.defaults.model,
        "model_version": resources.defaults.model_version,
    }
    assert states["RecordFailure"]["Parameters"]["defaults"] == states["Preprocess"]["Parameters"]["defaults"]
    assert "$$.Execution.Id" in rendered and "$$.Map.Item.Value" in rendered
    assert "${" not in rendered


def test_function_environment_is_exactly_what_stack_json_lists() -> None:
    resources = render_resources(prefix="t", account_id="111122223333", region="eu-west-1")
    for key, spec in resources.functions.items():
        environment = function_environment(resources, key, queue_url="https://example/q")
        assert list(environment) == list(spec.environment)
    sink = function_environment(resources, "sink", queue_url="https://example/q")
    assert sink["OUTPUT_BUCKET"] == "t-output-111122223333-eu-west-1"
    assert sink["PREDICTIONS_TOPIC_ARN"] == "arn:aws:sns:eu-west-1:111122223333:t-predictions"
    assert sink["PREDICTIONS_QUEUE_URL"] == "https://example/q"
    assert function_environment(resources, "inference")["DEFAULT_MODEL"] == resources.defaults.model
    assert resources.trigger_pattern["detail"]["bucket"]["name"] == ["t-input-111122223333-eu-west-1"]


# -- provisioning ------------------------------------------------------------------------------


def test_provisioned_resources_have_the_names_and_settings_of_the_spec(stack: LocalStack) -> None:
    r = stack.resources
    s3 = stack.client("s3")
    assert set(r.buckets.values()) <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
    for name, bucket in r.buckets.items():
        versioning = s3.get_bucket_versioning(Bucket=bucket).get("Status")
        assert versioning == (None if name == "work" else "Enabled"), name  # as Terraform: all but the scratch tensors
        assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]["BlockPublicAcls"]
        assert s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    # (moto's GetBucketNotificationConfiguration omits EventBridgeConfiguration: the S3 tests below prove it is on)

    table = stack.client("dynamodb").describe_table(TableName=r.table)["Table"]
    assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {
        ("object", "HASH"),
        ("version", "RANGE"),
    }
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert r.topic_arn in {t["TopicArn"] for t in stack.client("sns").list_topics()["Topics"]}
    assert stack.client("sqs").get_queue_url(QueueName=r.queue)["QueueUrl"] == stack.provisioned.queue_url
    assert stack.client("events").describe_event_bus(Name=r.event_bus)["Name"] == r.event_bus

    awslambda = stack.client("lambda")
    for key, spec in r.functions.items():
        config = awslambda.get_function_configuration(FunctionName=spec.name)
        assert config["FunctionArn"] == r.function_arn(key) == stack.provisioned.function_arns[key]
        assert (config["MemorySize"], config["Timeout"], config["PackageType"]) == (
            spec.memory_mb,
            spec.timeout_s,
            "Image",
        )
        assert config["ImageConfigResponse"]["ImageConfig"]["Command"] == [spec.command]
        assert config["Environment"]["Variables"] == function_environment(r, key, queue_url=stack.provisioned.queue_url)

    machine = stack.client("stepfunctions").describe_state_machine(stateMachineArn=stack.state_machine_arn)
    assert (machine["name"], machine["type"], stack.state_machine_arn) == (
        r.state_machine,
        "STANDARD",
        r.state_machine_arn,
    )

    events = stack.client("events")
    rule = events.describe_rule(Name=r.trigger_rule)
    assert json.loads(rule["EventPattern"]) == r.trigger_pattern and rule["State"] == "ENABLED"
    (target,) = events.list_targets_by_rule(Rule=r.trigger_rule)["Targets"]
    assert target["Arn"] == stack.state_machine_arn
    assert target["DeadLetterConfig"]["Arn"] == r.arn("sqs", r.trigger_dlq)
    assert target["RoleArn"].endswith(f":role/{role_names(r)['trigger']}")

    # the local observers
    subscriptions = stack.client("sns").list_subscriptions_by_topic(TopicArn=r.topic_arn)["Subscriptions"]
    assert [s["Endpoint"] for s in subscriptions] == [r.arn("sqs", r.local_sns_tap)]
    (tap,) = events.list_targets_by_rule(Rule=r.local_events_tap, EventBusName=r.event_bus)["Targets"]
    assert tap["Arn"] == r.arn("sqs", r.local_events_tap)


def test_provisioning_again_converges(stack: LocalStack) -> None:
    # WHEN provisioning runs a second time against the running stack
    again = provision(stack.client, stack.resources, trigger=stack.trigger)
    # THEN nothing is duplicated and the ARNs are unchanged
    assert again == stack.provisioned
    r = stack.resources
    assert len(stack.client("sns").list_subscriptions_by_topic(TopicArn=r.topic_arn)["Subscriptions"]) == 1
    assert len(stack.client("events").list_targets_by_rule(Rule=r.trigger_rule)["Targets"]) == 1


# -- S3 -> EventBridge -> Step Functions --------------------------------------------------------


def test_an_object_in_the_input_bucket_starts_an_execution_with_its_event(stack: LocalStack) -> None:
    bucket = stack.resources.buckets["input"]
    key = f"incoming/{uuid.uuid4().hex} café.jpg"
    # WHEN an object is put into the input bucket
    version_id = stack.client("s3").put_object(Bucket=bucket, Key=key, Body=b"not really a jpeg")["VersionId"]
    # THEN an execution runs whose input is the "Object Created" event, with the version
    _, event = _execution_for(stack, bucket, key)
    assert (event["source"], event["detail-type"]) == ("aws.s3", "Object Created")
    assert event["detail"]["object"]["version-id"] == version_id
    assert event["resources"] == [f"arn:aws:s3:::{bucket}"]
    assert event["time"].endswith("Z") and "ingestion-time" not in event
    assert not stack.delivery_failures()


def test_objects_in_other_buckets_start_nothing(stack: LocalStack) -> None:
    s3 = stack.client("s3")
    other = f"bridge-test-other-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=other)
    s3.put_bucket_notification_configuration(Bucket=other, NotificationConfiguration={"EventBridgeConfiguration": {}})
    before = set(_executions(stack))
    key = f"incoming/{uuid.uuid4().hex}.jpg"
    # WHEN the same key lands in a bucket that also emits events, and a result lands in the output bucket
    s3.put_object(Bucket=other, Key=key, Body=b"x")
    s3.put_object(Bucket=stack.resources.buckets["output"], Key=f"predictions/{key}.json", Body=b"{}")
    # AND THEN (events are delivered in order) a control object lands in the input bucket
    control = f"incoming/control-{uuid.uuid4().hex}.jpg"
    s3.put_object(Bucket=stack.resources.buckets["input"], Key=control, Body=b"x")
    control_arn, _ = _execution_for(stack, stack.resources.buckets["input"], control)
    # THEN the control object started the only new execution
    assert set(_executions(stack)) - before == {control_arn}


def test_an_event_that_cannot_start_an_execution_is_recorded_and_dead_lettered(stack: LocalStack) -> None:
    sqs, events = stack.client("sqs"), stack.client("events")
    run = uuid.uuid4().hex[:8]
    dlq_url = sqs.create_queue(QueueName=f"bridge-test-dlq-{run}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    missing_machine = stack.resources.arn("states", f"stateMachine:bridge-test-missing-{run}")
    rule = f"bridge-test-broken-{run}"
    source = f"inferpipe.bridge-test.{run}"
    events.put_rule(Name=rule, EventPattern=json.dumps({"source": [source]}))
    events.put_targets(Rule=rule, Targets=[{"Id": "t", "Arn": missing_machine, "DeadLetterConfig": {"Arn": dlq_arn}}])
    failures_before = len(stack.delivery_failures())
    # WHEN a matching event arrives
    events.put_events(Entries=[{"Source": source, "DetailType": "Test", "Detail": json.dumps({"n": 1})}])
    # THEN the failure is recorded and the event is in the target's dead-letter queue
    failures = stack.delivery_failures()[failures_before:]
    assert [(f.target_arn, f.dead_lettered) for f in failures] == [(missing_machine, True)]
    messages = sqs.receive_message(QueueUrl=dlq_url, MessageAttributeNames=["All"]).get("Messages", [])
    assert [json.loads(m["Body"])["detail"] for m in messages] == [{"n": 1}]
    assert messages[0]["MessageAttributes"]["TARGET_ARN"]["StringValue"] == missing_machine
    # AND a disabled rule delivers nothing (moto alone would still deliver)
    events.disable_rule(Name=rule)
    events.put_events(Entries=[{"Source": source, "DetailType": "Test", "Detail": json.dumps({"n": 2})}])
    assert len(stack.delivery_failures()) == failures_before + 1


def test_a_rule_with_a_state_machine_and_a_queue_target_delivers_to_both(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    sqs, events = stack.client("sqs"), stack.client("events")
    run = uuid.uuid4().hex[:8]
    queue_url = sqs.create_queue(QueueName=f"bridge-test-queue-{run}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    machine = _machine_with_pipeline_policies(stack, test_functions["b"]["arn"])
    source = f"inferpipe.bridge-test.{run}"
    rule = f"bridge-test-mixed-{run}"
    events.put_rule(Name=rule, EventPattern=json.dumps({"source": [source]}))
    events.put_targets(
        Rule=rule, Targets=[{"Id": "q", "Arn": queue_arn}, {"Id": "sm", "Arn": machine, "InputPath": "$.detail"}]
    )
    # WHEN a matching event arrives
    events.put_events(Entries=[{"Source": source, "DetailType": "Test", "Detail": json.dumps({"n": 3})}])
    # THEN moto delivered it to the queue, and the bridge started the state machine with the InputPath
    (message,) = sqs.receive_message(QueueUrl=queue_url).get("Messages", [])
    assert json.loads(message["Body"])["detail"] == {"n": 3}
    (execution,) = stack.client("stepfunctions").list_executions(stateMachineArn=machine)["executions"]
    described = _wait(stack, execution["executionArn"])
    assert described["status"] == "SUCCEEDED" and json.loads(described["input"]) == {"n": 3}


# -- the Lambda bridge -------------------------------------------------------------------------


def test_queue_message_counts_are_what_sqs_reports(stack: LocalStack) -> None:
    # GIVEN a queue with two visible messages, one delayed and one received (in flight)
    sqs = stack.client("sqs")
    url = sqs.create_queue(QueueName="counts-check")["QueueUrl"]
    for body in ("a", "b", "c"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
    sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=60)
    # THEN the bridge's one-clock counts say so
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    # in flight: only the received one
    assert {name: int(attributes[name]) for name in names} == dict(zip(names, (2, 1, 1), strict=True))
    sqs.delete_queue(QueueUrl=url)


def test_eventbridge_renders_each_event_through_its_targets_input_transformer(stack: LocalStack) -> None:
    # GIVEN a rule whose SQS target reshapes events with an InputTransformer (compiled once by the bridge)
    events, sqs = stack.client("events"), stack.client("sqs")
    url = sqs.create_queue(QueueName="transformed-check")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="transformed-check", EventPattern=json.dumps({"source": ["inferpipe.check"]}))
    events.put_targets(
        Rule="transformed-check",
        Targets=[
            {
                "Id": "q",
                "Arn": arn,
                "InputTransformer": {
                    "InputPathsMap": {"k": "$.detail.key", "n": "$.detail.n"},
                    "InputTemplate": '{"key": "<k>", "n": <n>}',
                },
            }
        ],
    )
    # WHEN two different events match it
    for key, n in (("a.jpg", 1), ("b.jpg", 2)):
        events.put_events(
            Entries=[{"Source": "inferpipe.check", "DetailType": "check", "Detail": json.dumps({"key": key, "n": n})}]
        )
    # THEN each arrives rendered from its own values
    bodies = [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
    assert sorted(bodies, key=lambda b: b["n"]) == [{"key": "a.jpg", "n": 1}, {"key": "b.jpg", "n": 2}]
    events.remove_targets(Rule="transformed-check", Ids=["q"])
    events.delete_rule(Name="transformed-check")
    sqs.delete_queue(QueueUrl=url)


def test_each_function_runs_in_environments_of_its_own_with_exactly_its_variables(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    awslambda = stack.client("lambda")
    monkeypatch.setenv("ONLY_IN_THE_TEST_PROCESS", "leaked")  # must not reach any function

    def invoke(key: str) -> tuple[str, dict[str, Any]]:
        answer = awslambda.invoke(FunctionName=test_functions[key]["name"], Payload=json.dumps({"asked": key}))
        assert "FunctionError" not in answer
        return key, json.loads(answer["Payload"].read())

    # WHEN two functions with different environments are invoked concurrently, several times
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(invoke, ["a", "b"] * 6))
    # THEN each invocation saw its function's variables, Lambda's own and its role's credentials,
    # and nothing of this process's environment; its event and context
    for key, result in results:
        environment = result["environment"]
        assert {name: environment.get(name) for name in test_functions[key]["environment"]} == test_functions[key][
            "environment"
        ]
        assert all(
            environment.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
        )
        assert environment["AWS_ACCESS_KEY_ID"] != os.environ["AWS_ACCESS_KEY_ID"]  # the role's, not ours
        assert environment["AWS_LAMBDA_FUNCTION_NAME"] == test_functions[key]["name"]
        assert environment["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "128"
        assert environment["AWS_LAMBDA_LOG_GROUP_NAME"] == f"/aws/lambda/{test_functions[key]['name']}"
        assert "ONLY_IN_THE_TEST_PROCESS" not in environment
        assert result["event"] == {"asked": key}
        assert result["function_name"] == test_functions[key]["name"]
        assert result["invoked_function_arn"] == test_functions[key]["arn"]
        assert int(result["memory_limit_in_mb"]) == 128 and 0 < result["remaining_ms"] <= 7000  # a str, as in Lambda
    assert "ONLY_IN_A" not in {name for key, result in results if key == "b" for name in result["environment"]}
    # AND each function ran in processes of its own, at most as many as the local limit allows
    pids = {key: {result["pid"] for k, result in results if k == key} for key in ("a", "b")}
    assert not pids["a"] & pids["b"] and os.getpid() not in pids["a"] | pids["b"]
    assert all(1 <= len(found) <= 2 for found in pids.values()), pids
    # AND module state lived per environment: each process counted exactly its own invocations,
    # one after another, none of the other function's nor of its other environment's
    for key in ("a", "b"):
        for pid in pids[key]:
            counts = sorted(r["warm_calls"] for k, r in results if k == key and r["pid"] == pid)
            assert counts == list(range(counts[-1] - len(counts) + 1, counts[-1] + 1)), (key, pid, counts)


def test_an_exception_comes_back_as_an_unhandled_function_error(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    answer = stack.client("lambda").invoke(
        FunctionName=test_functions["fails"]["name"], Payload=json.dumps({"bucket": "b", "key": "k.txt"})
    )
    assert answer["FunctionError"] == "Unhandled"
    payload = json.loads(answer["Payload"].read())
    assert payload["errorType"] == "NotAnImageError"
    assert payload["errorMessage"] == "s3://b/k.txt is not an image"
    assert any("handlers_for_bridge_tests.py" in line for line in payload["stackTrace"])


def test_the_state_machine_catches_a_permanent_error_by_its_type_without_retrying(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    machine = _machine_with_pipeline_policies(stack, test_functions["fails"]["arn"])
    described = _run(stack, machine, {"bucket": "b", "key": "k.txt"})
    assert (described["status"], described["error"]) == ("FAILED", "NotAnImageError")
    assert json.loads(described["cause"])["errorMessage"] == "s3://b/k.txt is not an image"
    failed = [e for e in _history(stack, described["executionArn"]) if e["type"] == "LambdaFunctionFailed"]
    assert len(failed) == 1


def test_injected_throttles_are_retried_by_the_pipelines_retry_policy(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    function = test_functions["a"]
    machine = _machine_with_pipeline_policies(stack, function["arn"])
    injected_before = sum(r.injected for r in lambda_service.invocations(function["name"]))
    # GIVEN the next two invocations are throttled
    lambda_faults.inject_failures(function["name"], count=2)
    # WHEN the state machine calls the function
    described = _run(stack, machine, {"n": 1})
    # THEN the Retry absorbed both throttles and the third attempt ran the handler
    assert described["status"] == "SUCCEEDED", described
    events = _history(stack, described["executionArn"])
    failed = [e["lambdaFunctionFailedEventDetails"]["error"] for e in events if e["type"] == "LambdaFunctionFailed"]
    assert failed == [lambda_faults.THROTTLED, lambda_faults.THROTTLED]
    assert [e["type"] for e in events].count("LambdaFunctionScheduled") == 3
    assert json.loads(described["output"])["event"] == {"n": 1}
    assert lambda_faults.FAULTS.pending(function["name"]) == 0
    assert sum(r.injected for r in lambda_service.invocations(function["name"])) == injected_before + 2


def test_executions_of_one_definition_share_its_parse_but_count_their_retries_apart(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    function = test_functions["a"]
    machine = _machine_with_pipeline_policies(stack, function["arn"])
    parsed_before = speedups._parsed_program.cache_info()
    # GIVEN one execution that used two of its retries on throttles
    lambda_faults.inject_failures(function["name"], count=2)
    assert _run(stack, machine, {"n": 1})["status"] == "SUCCEEDED"
    # WHEN a second execution of the same definition is throttled four times (its Retry allows four)
    lambda_faults.inject_failures(function["name"], count=4)
    second = _run(stack, machine, {"n": 2})
    # THEN it retried all four: retry counts belong to the execution, not to the shared program
    assert second["status"] == "SUCCEEDED", second
    assert [e["type"] for e in _history(stack, second["executionArn"])].count("LambdaFunctionScheduled") == 5
    # AND the definition was parsed at most once for both (once already, if an earlier test ran it)
    parsed = speedups._parsed_program.cache_info()
    misses, hits = parsed.misses - parsed_before.misses, parsed.hits - parsed_before.hits
    assert misses + hits == 2 and hits >= 1


def _machine(stack: LocalStack, definition: dict[str, Any]) -> str:
    role = stack.client("iam").get_role(RoleName=role_names(stack.resources)["state_machine"])["Role"]["Arn"]
    return stack.client("stepfunctions").create_state_machine(
        name=f"bridge-test-{uuid.uuid4().hex[:8]}", definition=json.dumps(definition), roleArn=role
    )["stateMachineArn"]


def test_a_failed_execution_is_redriven_from_the_step_that_failed_as_step_functions_does(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    sfn = stack.client("stepfunctions")
    function = test_functions["a"]
    # GIVEN an execution that failed at its second step (no Retry: the error ends it)
    machine = _machine(
        stack,
        {
            "StartAt": "First",
            "States": {
                "First": {"Type": "Pass", "Result": {"done": True}, "ResultPath": "$.first", "Next": "Work"},
                "Work": {"Type": "Task", "Resource": function["arn"], "ResultPath": "$.work", "Next": "After"},
                "After": {"Type": "Pass", "End": True},
            },
        },
    )
    lambda_faults.inject_failures(function["name"], count=1, error_type="TransientError", message="down for a moment")
    failed = _run(stack, machine, {"n": 7})
    assert failed["status"] == "FAILED" and failed["error"] == "TransientError"
    assert (failed["redriveCount"], failed["redriveStatus"]) == (0, "REDRIVABLE")

    # WHEN it is redriven (twice with the same client token: one redrive)
    first = sfn.redrive_execution(executionArn=failed["executionArn"], clientToken="t-1")["redriveDate"]
    again = sfn.redrive_execution(executionArn=failed["executionArn"], clientToken="t-1")["redriveDate"]
    final = _wait(stack, failed["executionArn"])

    # THEN the same execution succeeds, resuming at Work with the input it failed with
    assert first == again
    assert final["status"] == "SUCCEEDED", final
    assert (final["redriveCount"], final["redriveDate"]) == (1, first)
    assert (final["redriveStatus"], final["redriveStatusReason"]) == (
        "NOT_REDRIVABLE",
        "Execution is SUCCEEDED and cannot be redriven.",
    )
    output = json.loads(final["output"])
    assert output["first"] == {"done": True} and output["work"]["event"] == {"n": 7, "first": {"done": True}}
    # AND the history goes on from the failure: First ran once, Work twice, one ExecutionRedriven between
    events = _history(stack, failed["executionArn"])
    kinds = [e["type"] for e in events]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert kinds.count("ExecutionRedriven") == 1 and kinds.index("ExecutionFailed") < kinds.index("ExecutionRedriven")
    entered = [e["stateEnteredEventDetails"]["name"] for e in events if e["type"].endswith("StateEntered")]
    assert entered == ["First", "Work", "Work", "After"]
    assert kinds[-1] == "ExecutionSucceeded"
    # AND a succeeded execution cannot be redriven: AWS's error, with its reason
    with pytest.raises(ClientError) as refused:
        sfn.redrive_execution(executionArn=failed["executionArn"])
    assert refused.value.response["Error"]["Code"] == "ExecutionNotRedrivable"
    assert "SUCCEEDED" in refused.value.response["Error"]["Message"]


def test_redrive_refuses_running_and_unknown_executions(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    sfn = stack.client("stepfunctions")
    machine = _machine(stack, {"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3, "End": True}}})
    running = sfn.start_execution(stateMachineArn=machine, input="{}")["executionArn"]
    described = sfn.describe_execution(executionArn=running)
    assert (described["redriveStatus"], described["redriveStatusReason"]) == (
        "NOT_REDRIVABLE",
        "Execution is RUNNING and cannot be redriven.",
    )
    with pytest.raises(ClientError) as refused:
        sfn.redrive_execution(executionArn=running)
    assert refused.value.response["Error"]["Code"] == "ExecutionNotRedrivable"
    with pytest.raises(ClientError) as unknown:
        sfn.redrive_execution(executionArn=running.rsplit(":", 1)[0] + ":no-such-execution")
    assert unknown.value.response["Error"]["Code"] == "ExecutionDoesNotExist"


def test_executions_send_their_status_changes_to_the_default_bus_as_step_functions_does(stack: LocalStack) -> None:
    from inferpipe.local.status_events import DETAIL_TYPE

    sfn, events, sqs = stack.client("stepfunctions"), stack.client("events"), stack.client("sqs")
    machine = _machine(
        stack,
        {
            "StartAt": "Wait",
            "States": {
                "Wait": {"Type": "Wait", "Seconds": 1, "Next": "Boom"},
                "Boom": {"Type": "Fail", "Error": "Boom", "Cause": "on purpose"},
            },
        },
    )
    # GIVEN a rule on the default bus for this state machine's status changes, into a queue
    name = f"status-{uuid.uuid4().hex[:8]}"
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name=name,
        EventPattern=json.dumps(
            {"source": ["aws.states"], "detail-type": [DETAIL_TYPE], "detail": {"stateMachineArn": [machine]}}
        ),
    )
    events.put_targets(Rule=name, Targets=[{"Id": "q", "Arn": queue_arn}])
    # WHEN one execution fails and another is stopped
    failed = _run(stack, machine, {"n": 1})
    stopped = sfn.start_execution(stateMachineArn=machine, input='{"n": 2}')["executionArn"]
    sfn.stop_execution(executionArn=stopped, error="Operator", cause="rehearsal")
    _wait(stack, stopped)
    # THEN the queue holds RUNNING then FAILED for the first, RUNNING then ABORTED for the second
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(received) < 4 and time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        ):
            received.append(json.loads(message["Body"]))
    by_execution: dict[str, list[dict[str, Any]]] = {}
    for event in received:
        assert event["source"] == "aws.states" and event["detail-type"] == DETAIL_TYPE
        assert event["resources"] == [event["detail"]["executionArn"]]
        by_execution.setdefault(event["detail"]["executionArn"], []).append(event["detail"])
    assert [d["status"] for d in by_execution[failed["executionArn"]]] == ["RUNNING", "FAILED"]
    assert [d["status"] for d in by_execution[stopped]] == ["RUNNING", "ABORTED"]
    end = by_execution[failed["executionArn"]][1]
    assert (end["error"], end["cause"], end["output"], json.loads(end["input"])) == (
        "Boom",
        "on purpose",
        None,
        {"n": 1},
    )
    assert isinstance(end["startDate"], int) and end["stopDate"] >= end["startDate"]
    assert by_execution[failed["executionArn"]][0]["stopDate"] is None


def test_resume_point_skips_states_inside_a_map_and_starts_over_when_nothing_was_entered() -> None:
    from inferpipe.local.redrive import resume_point

    definition = {"StartAt": "A", "States": {"A": {}, "Fan": {}, "Z": {}}}

    def entered(name: str, value: Any) -> dict[str, Any]:
        return {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": name, "input": json.dumps(value)}}

    def exited(name: str) -> dict[str, Any]:
        return {"type": "TaskStateExited", "stateExitedEventDetails": {"name": name}}

    # a Map whose iterations ran a state named like a top-level one ("A") and one of them failed
    events = [
        entered("A", 1),
        exited("A"),
        {**entered("Fan", {"x": 2}), "type": "MapStateEntered"},
        entered("A", 3),
        exited("A"),
        entered("Deliver", 4),
    ]
    assert resume_point(definition, events, {"in": 0}) == ("Fan", {"x": 2})
    assert resume_point(definition, [], {"in": 0}) == ("A", {"in": 0})
    # after an earlier redrive that got past Fan and failed at Z, Z is where a second one resumes
    redriven = [
        *events,
        {"type": "ExecutionRedriven"},
        {**entered("Fan", {"x": 2}), "type": "MapStateEntered"},
        {**exited("Fan"), "type": "MapStateExited"},
        entered("Z", 5),
    ]
    assert resume_point(definition, redriven, {"in": 0}) == ("Z", 5)


def test_a_handler_that_outlives_its_function_timeout_times_out_as_in_lambda(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    answer = stack.client("lambda").invoke(
        FunctionName=test_functions["slow"]["name"], Payload=json.dumps({"seconds": 1.5})
    )
    assert answer["FunctionError"] == "Unhandled"
    payload = json.loads(answer["Payload"].read())
    assert payload["errorType"] == "Sandbox.Timedout"
    assert re.fullmatch(r"RequestId: [0-9a-f-]{36} Error: Task timed out after 1\.00 seconds", payload["errorMessage"])


def test_a_timed_out_handler_is_killed_before_its_late_write_and_retried_in_a_fresh_environment(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    function = test_functions["overruns"]
    bucket, key = stack.resources.buckets["work"], f"overrun-{uuid.uuid4().hex[:8]}"
    machine = _machine_with_pipeline_policies(stack, function["arn"])
    # WHEN the state machine calls a 1 s function whose first attempt sleeps 2.5 s, then writes
    described = _run(stack, machine, {"bucket": bucket, "key": key, "seconds": 2.5})
    # THEN the first attempt timed out as in Lambda, the Retry ran a second one, which succeeded
    assert described["status"] == "SUCCEEDED", described
    events = _history(stack, described["executionArn"])
    failed = [e["lambdaFunctionFailedEventDetails"]["error"] for e in events if e["type"] == "LambdaFunctionFailed"]
    assert failed == ["Sandbox.Timedout"]
    assert json.loads(described["output"])["attempt"] == "retry"
    # AND the retry ran in another environment (the timed-out one was stopped with its process)
    runs = lambda_service.invocations(function["name"])[-2:]
    assert [r.error_type for r in runs] == ["Sandbox.Timedout", None]
    assert runs[0].environment != runs[1].environment
    killed_pid = int(stack.client("s3").get_object(Bucket=bucket, Key=f"marker/{key}")["Body"].read())
    assert not Path(f"/proc/{killed_pid}").exists()
    # AND the killed attempt's late write never happens
    time.sleep(2.0)
    listed = stack.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"late/{key}")
    assert listed.get("KeyCount", 0) == 0


def test_an_environment_over_its_memory_size_is_killed_as_out_of_memory(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    awslambda = stack.client("lambda")
    name = test_functions["allocates"]["name"]
    # GIVEN a 128 MB function holds 16 MB: fine
    fine = awslambda.invoke(FunctionName=name, Payload=json.dumps({"mb": 16}))
    assert "FunctionError" not in fine, fine["Payload"].read()
    # WHEN it tries to hold 300 MB
    answer = awslambda.invoke(FunctionName=name, Payload=json.dumps({"mb": 300}))
    # THEN Lambda's out-of-memory answer comes back, and the next invocation gets a fresh environment
    assert answer["FunctionError"] == "Unhandled"
    payload = json.loads(answer["Payload"].read())
    assert payload["errorType"] == "Runtime.OutOfMemory"
    assert payload["errorMessage"].endswith("Error: Runtime exited with error: signal: killed")
    again = awslambda.invoke(FunctionName=name, Payload=json.dumps({"mb": 16}))
    assert json.loads(again["Payload"].read())["held_mb"] == 16
    runs = lambda_service.invocations(name)[-3:]
    assert [r.error_type for r in runs] == [None, "Runtime.OutOfMemory", None]
    assert runs[1].max_memory_mb is not None and runs[1].max_memory_mb > 128
    assert runs[0].environment == runs[1].environment != runs[2].environment
    assert runs[2].init_ms is not None  # a cold start
    # AND the REPORT line says so, as Lambda's does
    stack.flush_logs()
    reports = _log_messages(stack, name, "REPORT")
    oom = next(line for line in reports if runs[1].request_id in line)
    assert "\tStatus: error\tError Type: Runtime.OutOfMemory" in oom


def test_a_function_at_its_reserved_concurrency_is_throttled_and_the_state_machine_retries_it(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    import boto3
    from botocore.config import Config

    from inferpipe.local.stack import DUMMY_CREDENTIALS

    stack.client("lambda").put_function_concurrency(
        FunctionName=test_functions["slow"]["name"], ReservedConcurrentExecutions=1
    )
    awslambda = boto3.client(  # no SDK retries: see Lambda's answer itself
        "lambda",
        endpoint_url=stack.endpoint_url,
        region_name=stack.resources.region,
        config=Config(retries={"total_max_attempts": 1}),
        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=DUMMY_CREDENTIALS["AWS_SESSION_TOKEN"],
    )
    function = test_functions["slow"]
    awslambda.put_function_concurrency(FunctionName=function["name"], ReservedConcurrentExecutions=1)
    try:
        # WHEN two invocations of a function with a reserved concurrency of 1 overlap
        def invoke(_: int) -> str:
            try:
                answer = awslambda.invoke(FunctionName=function["name"], Payload=json.dumps({"seconds": 0.6}))
                return "ran" if "FunctionError" not in answer else "failed"
            except awslambda.exceptions.TooManyRequestsException:
                return "throttled"

        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = sorted(pool.map(invoke, range(2)))
        # THEN one ran and the other got Lambda's 429
        assert outcomes == ["ran", "throttled"]
        # AND a state machine sees the throttle as Lambda.TooManyRequestsException, which it retries
        machine = _machine_with_pipeline_policies(stack, function["arn"])
        sfn = stack.client("stepfunctions")
        with ThreadPoolExecutor(max_workers=3) as pool:
            arns = list(
                pool.map(
                    lambda _: sfn.start_execution(
                        stateMachineArn=machine, name=uuid.uuid4().hex, input=json.dumps({"seconds": 0.4})
                    )["executionArn"],
                    range(3),
                )
            )
        finals = [_wait(stack, arn, 60) for arn in arns]
        assert [f["status"] for f in finals] == ["SUCCEEDED"] * 3, finals
        errors = [
            e["lambdaFunctionFailedEventDetails"]["error"]
            for arn in arns
            for e in _history(stack, arn)
            if e["type"] == "LambdaFunctionFailed"
        ]
        assert errors and set(errors) == {"Lambda.TooManyRequestsException"}
    finally:
        awslambda.delete_function_concurrency(FunctionName=function["name"])
        awslambda.close()


def _log_messages(stack: LocalStack, function_name: str, prefix: str = "") -> list[str]:
    logs = stack.client("logs")
    pages = logs.get_paginator("filter_log_events").paginate(logGroupName=f"/aws/lambda/{function_name}")
    return [e["message"] for page in pages for e in page["events"] if e["message"].startswith(prefix)]


def test_every_invocation_writes_lambdas_report_line_to_its_environments_log_stream(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    awslambda = stack.client("lambda")
    name = test_functions["b"]["name"]
    for n in range(3):
        awslambda.invoke(FunctionName=name, Payload=json.dumps({"n": n}))
    stack.flush_logs()
    runs = [r for r in lambda_service.invocations(name) if not r.injected]
    logs = stack.client("logs")
    streams = {s["logStreamName"] for s in logs.describe_log_streams(logGroupName=f"/aws/lambda/{name}")["logStreams"]}
    assert {r.environment for r in runs} <= streams
    report = re.compile(
        r"REPORT RequestId: (?P<id>[0-9a-f-]{36})\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms\t"
        r"Memory Size: 128 MB\tMax Memory Used: \d+ MB\t(?P<init>Init Duration: \d+\.\d\d ms\t)?"
    )
    for run in runs:
        events = logs.filter_log_events(logGroupName=f"/aws/lambda/{name}", logStreamNames=[run.environment])["events"]
        mine = [e["message"] for e in events if run.request_id in e["message"]]
        assert mine[0] == f"START RequestId: {run.request_id} Version: $LATEST"
        assert mine[-2] == f"END RequestId: {run.request_id}"
        matched = report.fullmatch(mine[-1])
        assert matched, mine[-1]
        assert bool(matched.group("init")) == (run.init_ms is not None)  # Init Duration exactly on cold starts
    assert any(r.init_ms is not None for r in runs)


def test_an_asynchronous_invocation_runs_in_the_background(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    name = test_functions["b"]["name"]
    before = len(lambda_service.invocations(name))
    answer = stack.client("lambda").invoke(FunctionName=name, InvocationType="Event", Payload=b"{}")
    assert answer["StatusCode"] == 202
    assert lambda_service.wait_for_async_invocations(timeout=10)
    assert len(lambda_service.invocations(name)) == before + 1


# -- the daemon --------------------------------------------------------------------------------


def test_daemon_up_status_down_round_trip_leaves_no_process(tmp_path: Path) -> None:
    # GIVEN a stale state file left by a process that is gone
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / daemon.STATE_FILE).write_text(
        json.dumps({"pid": gone.pid, "port": 1, "endpoint_url": "http://127.0.0.1:1"})
    )
    stale = daemon.status(tmp_path)
    assert not stale["running"] and stale["stale"]
    # THEN status says what happened and what to run
    assert "is gone: it exited or was killed" in stale["problem"] and stale["fix"].startswith("inferpipe local up")

    # WHEN the stack is started in the background
    port = _free_port()
    started = daemon.up(port=port, state_dir=tmp_path, timeout=120)
    pid = started["pid"]
    try:
        # THEN it runs, answers, and says where
        assert started["running"] and started["port"] == port
        assert started["endpoint_url"] == f"http://127.0.0.1:{port}"
        assert started["resources"]["state_machine"] == render_resources().state_machine_arn
        state = json.loads((tmp_path / daemon.STATE_FILE).read_text())
        assert (state["pid"], state["port"]) == (pid, port) and state["started"]
        # AND a second `up` (and ensure_running) reuse it
        again = daemon.up(port=port, state_dir=tmp_path)
        assert again["already_running"] and again["pid"] == pid
        assert daemon.ensure_running(tmp_path, port) == started["endpoint_url"]
        # AND asking it for another port is an error naming both, not silently the running one
        with pytest.raises(
            daemon.DaemonError, match=f"already runs at http://127.0.0.1:{port}, not on port {port + 1}"
        ):
            daemon.up(port=port + 1, state_dir=tmp_path)
    finally:
        # WHEN it is stopped
        stopped = daemon.down(tmp_path)
    # THEN the process is gone (exited cleanly on SIGTERM), and so is the state file
    assert stopped
    assert not os.path.exists(f"/proc/{pid}")
    assert not (tmp_path / daemon.STATE_FILE).exists()
    assert not daemon.status(tmp_path)["running"]
    assert daemon.down(tmp_path) is False
    log = (tmp_path / daemon.LOG_FILE).read_text()
    assert "signal SIGTERM: stopping" in log and log.rstrip().endswith("stopped")


# -- loopback endpoints are not open to web pages ------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://pages.example"},  # a page's cross-site form POST (no CORS preflight)
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
        {"Host": "rebound.example:4599"},  # DNS rebinding: the page's own name, resolved to 127.0.0.1
    ],
)
def test_a_request_from_a_web_page_is_refused_and_changes_nothing(stack: LocalStack, headers: dict[str, str]) -> None:
    import urllib.error
    import urllib.request

    name = f"from-a-page-{uuid.uuid4().hex[:6]}"
    body = f"Action=CreateQueue&QueueName={name}".encode()
    request = urllib.request.Request(
        f"{stack.endpoint_url}/", data=body, headers={"Content-Type": "application/x-www-form-urlencoded", **headers}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert name not in json.dumps(stack.client("sqs").list_queues().get("QueueUrls", []))
    # AND a request without browser headers, naming the loopback host, still passes
    plain = urllib.request.Request(
        f"{stack.endpoint_url}/",
        data=b"Action=ListQueues",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(plain, timeout=10) as answer:
        assert answer.status == 200


def _control(
    stack: LocalStack, path: str, method: str = "GET", token: str | None = None, data: bytes | None = None
) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    from inferpipe.local.guard import TOKEN_HEADER

    headers = {TOKEN_HEADER: token} if token is not None else {}
    request = urllib.request.Request(f"{stack.endpoint_url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def test_the_control_endpoints_need_the_stacks_token(stack: LocalStack) -> None:
    queue = f"survives-{uuid.uuid4().hex[:6]}"
    stack.client("sqs").create_queue(QueueName=queue)
    # WHEN a local process without the token asks moto to reset everything, or reads its state
    for path, method in (("/moto-api/reset", "POST"), ("/moto-api/config", "GET"), ("/_inferpipe/faults", "DELETE")):
        for token in (None, "guessed"):
            status, body = _control(stack, path, method, token, data=b"" if method == "POST" else None)
            # THEN it is refused, saying what is missing, and nothing changed
            assert status == 403 and b"need its token" in body, (path, token)
    assert queue in json.dumps(stack.client("sqs").list_queues().get("QueueUrls", []))
    # AND with the token (what `inferpipe local` sends) moto's own endpoints answer
    status, body = _control(stack, "/moto-api/config", token=stack.control_token)
    assert status == 201 and "lambda" in json.loads(body)  # (moto answers its config with 201)


def test_local_fault_commands_add_list_and_clear_faults_at_the_aws_edge(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from botocore.config import Config

    from inferpipe.cli import main

    monkeypatch.setenv("INFERPIPE_LOCAL_TOKEN", stack.control_token)
    bucket = stack.resources.buckets["work"]
    key = f"fault/{uuid.uuid4().hex[:6]}.bin"
    s3 = stack.client("s3")
    s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    once = boto3.session.Session().client(
        "s3",
        endpoint_url=stack.endpoint_url,
        region_name=stack.resources.region,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"total_max_attempts": 1}),
    )
    cli = ["local", "fault"]
    at = ["--endpoint-url", stack.endpoint_url]
    # WHEN an operator makes the next two GETs of that key fail as AWS throttles them
    assert main([*cli, "add", "s3:GetObject", "--count", "2", "--match", key, *at]) == 0
    assert "fault added: s3:GetObject matching" in capsys.readouterr().out
    # THEN two GETs fail with S3's own SlowDown, the third is served
    for _ in range(2):
        with pytest.raises(ClientError) as throttled:
            once.get_object(Bucket=bucket, Key=key)
        assert (
            throttled.value.response["Error"]["Code"] == "SlowDown"
            and throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        )
    assert once.get_object(Bucket=bucket, Key=key)["Body"].read() == b"x"
    # WHEN a whole service answers a permanent error for every request, until cleared
    assert main([*cli, "add", "s3", "--error", "AccessDenied", "--status", "403", "--rate", "1", *at]) == 0
    capsys.readouterr()
    with pytest.raises(ClientError) as denied:
        once.head_object(Bucket=bucket, Key=key)
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert main([*cli, "list", *at]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("s3:GetObject matching") and "0 left, fired 2" in line for line in listed), listed
    assert any(line.startswith("s3:*: AccessDenied (HTTP 403), 100% of requests, until cleared") for line in listed), (
        listed
    )
    assert main([*cli, "clear", *at]) == 0 and "cleared 2 fault rule(s)" in capsys.readouterr().out
    assert once.head_object(Bucket=bucket, Key=key)["ContentLength"] == 1
    # AND a bad rule is refused, naming what is wrong
    assert main([*cli, "add", "s3:GetObject", "--rate", "2", *at]) == 2
    assert "rate must be more than 0 and at most 1" in capsys.readouterr().err
    assert main([*cli, "add", "dynamo:PutItem", *at]) == 2
    assert "unknown service 'dynamo': one of s3, dynamodb" in capsys.readouterr().err


def test_an_idle_environment_is_stopped_after_its_idle_time(
    stack: LocalStack, test_functions: dict[str, dict[str, Any]]
) -> None:
    from inferpipe.local.environment_pool import EnvironmentPool
    from inferpipe.local.execution_environment import FunctionConfig

    function = test_functions["a"]
    config = FunctionConfig(
        name=function["name"],
        arn=function["arn"],
        region=stack.resources.region,
        handler=f"{HANDLERS}.report",
        memory_mb=128,
        timeout_s=7,
        variables=function["environment"],
        role_arn=stack.client("lambda").get_function(FunctionName=function["name"])["Configuration"]["Role"],
    )
    # GIVEN a pool whose environments may idle 1 s
    pool = EnvironmentPool(
        credentials_for=credentials.role_credentials,
        logs_client_for=lambda region, role: credentials.platform_client("logs", region, role),
        endpoint_url=lambda: stack.endpoint_url,
        max_environments=lambda name: 1,
        idle_seconds=1.0,
    )
    try:
        # WHEN one invocation ran and nothing else comes
        result = pool.invoke(config, str(uuid.uuid4()), b"{}")
        pid = json.loads(result.payload)["pid"]
        assert [e.pid for e in pool.environments()] == [pid]
        deadline = time.monotonic() + 10
        while pool.environments() and time.monotonic() < deadline:
            time.sleep(0.2)
        # THEN the environment and its process are gone
        assert pool.environments() == []
        time.sleep(0.2)
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    finally:
        pool.close()


def test_executions_started_without_a_name_get_a_uuid_each(stack: LocalStack) -> None:
    # GIVEN a state machine; WHEN two executions start without a name (as the console allows)
    sfn = stack.client("stepfunctions")
    role = stack.client("iam").get_role(RoleName=role_names(stack.resources)["state_machine"])["Role"]["Arn"]
    machine = sfn.create_state_machine(
        name=f"bridge-test-{uuid.uuid4().hex[:8]}",
        definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
        roleArn=role,
    )["stateMachineArn"]
    first, second = (sfn.start_execution(stateMachineArn=machine, input="{}")["executionArn"] for _ in range(2))
    # THEN each is its own execution, named with a UUID, as Step Functions names them
    assert first != second
    assert all(uuid.UUID(arn.rsplit(":", 1)[-1]) for arn in (first, second))


def test_execution_history_pages_and_reverses_as_step_functions_does(stack: LocalStack) -> None:
    # GIVEN an execution with more history events than one small page (12 Pass states: 26 events)
    sfn = stack.client("stepfunctions")
    names = [f"P{i}" for i in range(12)]
    states = {
        name: {"Type": "Pass", **({"Next": names[i + 1]} if i + 1 < len(names) else {"End": True})}
        for i, name in enumerate(names)
    }
    done = _run(stack, _machine(stack, {"StartAt": names[0], "States": states}), {})
    arn = done["executionArn"]
    everything = _history(stack, arn)
    assert (
        len(everything) == 26
        and everything[0]["type"] == "ExecutionStarted"
        and everything[-1]["type"] == "ExecutionSucceeded"
    )

    # WHEN it is read newest first, five events a page
    pages = list(
        sfn.get_paginator("get_execution_history").paginate(
            executionArn=arn, reverseOrder=True, PaginationConfig={"PageSize": 5}
        )
    )
    # THEN the pages hold every event once, newest first, each at most five long
    assert [len(p["events"]) for p in pages] == [5, 5, 5, 5, 5, 1]
    assert [e["id"] for p in pages for e in p["events"]] == [e["id"] for e in reversed(everything)]
    # AND the default page is 100 events (the CLI's --reverse-order shows the end first)
    first = sfn.get_execution_history(executionArn=arn, reverseOrder=True)
    assert first["events"][0]["type"] == "ExecutionSucceeded" and "nextToken" not in first
    # AND a token of another call is refused with AWS's error
    token = sfn.get_execution_history(executionArn=arn, maxResults=5)["nextToken"]
    with pytest.raises(ClientError) as refused:
        sfn.get_execution_history(executionArn=arn, maxResults=5, reverseOrder=True, nextToken=token)
    assert refused.value.response["Error"]["Code"] == "InvalidToken"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_an_execution_input_that_is_not_json_is_refused_with_invalid_execution_input(stack: LocalStack) -> None:
    sfn = stack.client("stepfunctions")
    before = len(sfn.list_executions(stateMachineArn=stack.state_machine_arn, maxResults=1000)["executions"])
    with pytest.raises(ClientError) as refused:
        sfn.start_execution(stateMachineArn=stack.state_machine_arn, input="not json")
    error = refused.value.response["Error"]
    assert error["Code"] == "InvalidExecutionInput" and "not JSON" in error["Message"]
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # and nothing started
    assert len(sfn.list_executions(stateMachineArn=stack.state_machine_arn, maxResults=1000)["executions"]) == before
