"""The IAM policies Terraform deploys, exercised: the pipeline under moto's IAM enforcement.

The local stack attaches to every role the very documents of ``terraform/policies`` (rendered by
``inferpipe.stack.policies.role_policies``). Here moto's IAM enforcement is switched on (what
``moto.core.set_initial_no_auth_action_count(0)`` does), so every request must be signed by an
IAM principal whose policies allow it: each function runs with its own role's credentials (the
bridge assumes the role per function, as Lambda does), the state machine invokes the functions
with its execution role's credentials, the trigger rule's target role must allow
``states:StartExecution``, and this test acts as an IAM user with an administrator policy.

Then each statement is dropped in turn (``put_role_policy`` on the same stack) and the probe that
needs it must fail: a policy broader than the pipeline needs would leave a statement whose loss
nothing notices.

Not exercisable with moto (listed in ``UNEXERCISED``): the X-Ray statements (nothing sends traces
locally), the state machine's vended-log delivery actions (moto has no execution logging) and the
``s3:ListBucket`` statements (AWS turns a missing key's 404 into 403 without them; moto does not).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config

from functions.sink.core import failure_key
from inferpipe.local import iam_enforcement, lambda_service
from inferpipe.stack.policies import KNOWN_SINKS, role_names, role_policies
from tests.e2e.conftest import SinkReader, executions_for_key, image_bytes, wait_for_execution

#: (role, policy, Sid) moto cannot exercise, and why.
UNEXERCISED = {
    ("state_machine", "state-machine", "DeliverExecutionLogs"): "moto's Step Functions has no CloudWatch Logs delivery",
    **{
        (role, "xray", "WriteTraces"): "nothing sends X-Ray traces locally"
        for role in ("preprocess", "inference", "sink", "state_machine")
    },
    # AWS answers GetObject of a missing key with 403 unless s3:ListBucket is allowed; moto answers 404
    # regardless. The probes below still check the 404 paths work with the statement present.
    **{
        (role, role, sid): "moto answers a missing key with 404 without checking s3:ListBucket"
        for role, sid in (
            ("preprocess", "ListModelBucket"),
            ("inference", "ListModelBucket"),
            ("inference", "ListWorkBucket"),
            ("sink", "LedgerMissesAre404"),
        )
    },
    ("sink", "sink", "RetiredPredictionsMoveToTheirVersionsEntry"): (
        "with the s3 sink deployed its WritePredictionObjects covers it; a deployment without the s3 sink "
        "needs it only for prediction views an earlier deployment left"
    ),
}
#: Statements only a probe other than the pipeline's happy path needs (see the probes below).
PROBES: dict[str | tuple[str, str], str] = {
    "WriteOwnLogs": "logs",
    "KeepDeliveryLedger": "ledger",
    "RecordFailures": "failure_record",
    # a failure record reads the key's prediction view (a new key's prediction never reads its own)
    "NewerFailuresRetireOlderPredictions": "failure_record",
    "WhereFailedExecutionsStopped": "status_record",
}


def _all_statements(policies: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    return [
        (role, name, statement["Sid"])
        for role, documents in policies.items()
        for name, document in documents.items()
        for statement in document["Statement"]
    ]


class Admin:
    """Clients signed by an IAM user with an administrator policy (the only way in with IAM on)."""

    def __init__(self, stack: Any) -> None:
        iam = stack.client("iam")
        user = f"iam-test-admin-{uuid.uuid4().hex[:6]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user,
            PolicyName="admin",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self._session = boto3.session.Session(
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            region_name=stack.resources.region,
        )
        self._stack = self.stack = stack
        self._clients: dict[str, Any] = {}
        # What the e2e helpers need of a stack, with this user's clients.
        self.view = SimpleNamespace(
            client=self.client,
            resources=stack.resources,
            provisioned=stack.provisioned,
            state_machine_arn=stack.state_machine_arn,
        )

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._session.client(
                service, endpoint_url=self._stack.endpoint_url, config=Config(retries={"max_attempts": 1})
            )
        return self._clients[service]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


@pytest.fixture(scope="module")
def enforced(stack: Any) -> Iterator[Admin]:
    """GIVEN the local stack with IAM enforced for every request."""
    admin = Admin(stack)
    iam_enforcement.set_iam_enforcement(True)
    try:
        yield admin
    finally:
        iam_enforcement.set_iam_enforcement(False)
        admin.close()


@pytest.fixture(scope="module")
def deployed_policies(stack: Any) -> dict[str, dict[str, dict[str, Any]]]:
    policies = role_policies(stack.resources, sinks=KNOWN_SINKS)
    policies.pop("keep_warm", None)
    return policies


def _cold_start(admin: Admin) -> None:
    """Stop the warm environments (and what they keep: models, manifests), so the next calls go to S3 again."""
    admin.stack.stop_environments()


def _pipeline(admin: Admin) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Upload an image (the trigger starts the execution); the execution and every sink's records."""
    _cold_start(admin)
    view = admin.view
    bucket = view.resources.buckets["input"]
    key = f"iam/{uuid.uuid4().hex[:8]}.jpg"
    admin.client("s3").put_object(Bucket=bucket, Key=key, Body=image_bytes("circle"))
    started = executions_for_key(view, key, timeout=3)
    if not started:  # the trigger could not start an execution
        return {"status": "NOT_STARTED"}, {}
    final = wait_for_execution(view, started[0]["executionArn"])
    return final, SinkReader(view).records(bucket, key)


def _pipeline_ok(admin: Admin) -> bool:
    final, records = _pipeline(admin)
    delivered = all(records.get(sink) for sink in KNOWN_SINKS)
    ok_items = all(item.get("status", {}).get("S", "SUCCEEDED") != "FAILED" for item in records.get("dynamodb", []))
    return final["status"] == "SUCCEEDED" and delivered and ok_items


def _invoke(admin: Admin, key: str, event: Any) -> dict[str, Any]:
    answer = admin.client("lambda").invoke(
        FunctionName=admin.view.resources.functions[key].name, Payload=json.dumps(event)
    )
    return {"error": answer.get("FunctionError"), "payload": json.loads(answer["Payload"].read() or b"null")}


def _logs_ok(admin: Admin, key: str) -> bool:
    """An invocation leaves its START line in the function's log group (written under its role)."""
    group = f"/aws/lambda/{admin.view.resources.functions[key].name}"

    def starts() -> int:
        pages = admin.client("logs").get_paginator("filter_log_events").paginate(logGroupName=group)
        return sum(event["message"].startswith("START RequestId:") for page in pages for event in page["events"])

    before = starts()
    admin.client("lambda").invoke(FunctionName=admin.view.resources.functions[key].name, Payload=b"{}")
    admin.stack.flush_logs()  # the environment's lines are shipped in the background, as Lambda does
    return starts() > before


def _warm_up_ok(admin: Admin) -> bool:
    """The keep-warm ping loads the default model, looked up by alias (a missing version key must be a 404)."""
    _cold_start(admin)
    answer = _invoke(admin, "inference", {"warmup": True})
    return answer["error"] is None


def _missing_tensor_ok(admin: Admin) -> bool:
    """A batch whose document expired fails with the typed error, not an access error."""
    final, _ = _pipeline(admin)  # a real job to copy
    history = admin.client("stepfunctions").get_execution_history(executionArn=final["executionArn"], maxResults=1000)
    scheduled = [
        json.loads(e["lambdaFunctionScheduledEventDetails"]["input"])
        for e in history["events"]
        if e["type"] == "LambdaFunctionScheduled"
        and admin.view.resources.functions["inference"].name in e["lambdaFunctionScheduledEventDetails"]["resource"]
    ]
    job = json.loads(json.dumps(scheduled[0]).replace("preprocessed.json", "gone.json"))
    answer = _invoke(admin, "inference", job)
    return answer["error"] is not None and answer["payload"]["errorType"] == "ObjectNotFoundError"


def _ledger_ok(admin: Admin) -> bool:
    """The message sinks (sns, sqs, eventbridge) each add a delivery ledger entry in the output bucket."""
    bucket = admin.view.resources.buckets["output"]

    def entries() -> list[str]:
        pages = admin.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="deliveries/")
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    before = set(entries())
    final, _ = _pipeline(admin)
    added = {key.split("/")[1] for key in set(entries()) - before}  # deliveries/<sink>/<ledger id>.json
    return final["status"] == "SUCCEEDED" and added >= {"sns", "sqs", "eventbridge"}


def _failure_record_ok(admin: Admin) -> bool:
    """A bad upload leaves failures/<bucket>/<key>.json in the output bucket, and the execution
    ends with the input's error (RecordFailure finished: it also reads the key's prediction view)."""
    view = admin.view
    bucket = view.resources.buckets["input"]
    key = f"iam/{uuid.uuid4().hex[:8]}.png"
    admin.client("s3").put_object(Bucket=bucket, Key=key, Body=b"not an image")
    started = executions_for_key(view, key, timeout=3)
    if not started:
        return False
    if wait_for_execution(view, started[0]["executionArn"]).get("error") != "NotAnImageError":
        return False
    s3 = admin.client("s3")
    try:
        s3.head_object(Bucket=view.resources.buckets["output"], Key=failure_key({"bucket": bucket, "key": key}, ""))
    except s3.exceptions.ClientError:
        return False
    return True


def _status_record_ok(admin: Admin) -> bool:
    """An execution stopped by an operator (no Catch sees it) still gets its failure record: the
    status recorder reads where it stopped from the execution's history."""
    view = admin.view
    bucket = view.resources.buckets["input"]
    key = f"iam/{uuid.uuid4().hex[:8]}.jpg"
    sfn = admin.client("stepfunctions")
    for operation in ("GetObject", "HeadObject"):  # Preprocess is slow to read it, so the stop lands during Preprocess
        admin.stack.inject_aws_faults("s3", operation, 1, match=key, delay=4.0)
    try:
        started = sfn.start_execution(
            stateMachineArn=view.state_machine_arn, input=json.dumps({"bucket": bucket, "key": key})
        )
        time.sleep(1.0)
        sfn.stop_execution(executionArn=started["executionArn"], error="Operator", cause="IAM probe")
        if wait_for_execution(view, started["executionArn"], timeout=30)["status"] != "ABORTED":
            return False
        lambda_service.wait_for_async_invocations(timeout=30)
    finally:
        admin.stack.aws_faults.clear()
    try:
        admin.client("s3").head_object(
            Bucket=view.resources.buckets["output"], Key=failure_key({"bucket": bucket, "key": key}, "")
        )
    except admin.client("s3").exceptions.ClientError:
        return False
    return True


def _probe(admin: Admin, role: str, sid: str) -> bool:
    probe = PROBES.get(sid) or PROBES.get((role, sid)) or "pipeline"
    if probe == "logs":
        return _logs_ok(admin, role)
    if probe == "ledger":
        return _ledger_ok(admin)
    if probe == "failure_record":
        return _failure_record_ok(admin)
    if probe == "status_record":
        return _status_record_ok(admin)
    return _pipeline_ok(admin)


def test_the_stack_runs_every_role_with_exactly_the_terraform_policies(
    stack: Any, deployed_policies: dict[str, Any]
) -> None:
    iam = stack.client("iam")
    names = role_names(stack.resources)
    for role, documents in deployed_policies.items():
        if not documents:  # a role this deployment does not have (the pipe's, with the direct trigger)
            continue
        name = names[role]
        attached = {
            p: iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"]
            for p in iam.list_role_policies(RoleName=name)["PolicyNames"]
        }
        assert attached == deployed_policies[role], role


def test_unknown_credentials_are_refused_when_iam_is_enforced(stack: Any, enforced: Admin) -> None:
    with pytest.raises(Exception, match=r"InvalidAccessKeyId|InvalidClientTokenId|security token"):
        stack.client("s3").list_objects_v2(Bucket=stack.resources.buckets["output"])


def test_the_pipeline_and_every_probe_succeed_under_the_deployed_policies(enforced: Admin) -> None:
    assert _pipeline_ok(enforced)
    for key in ("preprocess", "inference", "sink"):
        assert _logs_ok(enforced, key), key
    assert _warm_up_ok(enforced)
    assert _missing_tensor_ok(enforced)
    assert _ledger_ok(enforced)
    assert _failure_record_ok(enforced)
    assert _status_record_ok(enforced)


def test_every_statement_is_exercised_or_listed_as_not_exercisable(deployed_policies: dict[str, Any]) -> None:
    statements = _all_statements(deployed_policies)
    assert set(UNEXERCISED) <= set(statements)
    assert len(statements) == len(set(statements)), "Sids must be unique per policy"


def _statement_ids() -> list[tuple[str, str, str]]:
    from inferpipe.stack.resources import render_resources

    return [
        s
        for s in _all_statements(role_policies(render_resources(), sinks=KNOWN_SINKS))
        if s not in UNEXERCISED and s[0] != "keep_warm"
    ]


@pytest.mark.parametrize(("role", "policy", "sid"), _statement_ids(), ids=str)
def test_dropping_the_statement_breaks_what_needs_it(
    stack: Any, enforced: Admin, deployed_policies: dict[str, Any], role: str, policy: str, sid: str
) -> None:
    role_name = role_names(stack.resources)[role]
    full = deployed_policies[role][policy]
    reduced = {**full, "Statement": [s for s in full["Statement"] if s["Sid"] != sid]}
    iam = enforced.client("iam")
    if reduced["Statement"]:
        iam.put_role_policy(RoleName=role_name, PolicyName=policy, PolicyDocument=json.dumps(reduced))
    else:
        iam.delete_role_policy(RoleName=role_name, PolicyName=policy)
    try:
        assert not _probe(enforced, role, sid), f"{role}/{policy}/{sid} can be dropped: nothing needs it"
    finally:
        iam.put_role_policy(RoleName=role_name, PolicyName=policy, PolicyDocument=json.dumps(full))


def test_a_prefix_scoped_preprocess_role_reads_only_under_its_prefix(
    stack: Any, enforced: Admin, deployed_policies: dict[str, Any]
) -> None:
    """Terraform's ``input_key_prefix`` scopes the preprocess role's s3:GetObject to that prefix:
    the very template, rendered with a prefix, run under IAM enforcement. The function's own
    INPUT_KEY_PREFIX check is left off here, so only the policy stands between it and other keys."""
    from inferpipe.stack import policies

    resources = stack.resources
    role_name = role_names(resources)["preprocess"]
    values = policies.policy_values(
        resources, function_arns={k: resources.function_arn(k) for k in resources.functions}, input_key_prefix="scoped/"
    )
    scoped = policies.render_policy(policies.policy_templates()["preprocess"], values)
    bucket = resources.buckets["input"]
    inside, outside = f"scoped/{uuid.uuid4().hex[:6]}.jpg", f"elsewhere/{uuid.uuid4().hex[:6]}.jpg"
    s3 = enforced.client("s3")
    for key in (inside, outside):
        s3.put_object(Bucket=bucket, Key=key, Body=image_bytes("circle", seed=71))
    iam = enforced.client("iam")
    iam.put_role_policy(RoleName=role_name, PolicyName="preprocess", PolicyDocument=json.dumps(scoped))
    try:
        _cold_start(enforced)
        defaults = {
            "sinks": ",".join(KNOWN_SINKS),
            "top_k": "5",
            "model": resources.defaults.model,
            "model_version": resources.defaults.model_version,
        }
        answer = _invoke(
            enforced,
            "preprocess",
            {
                "input": {"objects": [{"bucket": bucket, "key": inside}, {"bucket": bucket, "key": outside}]},
                "defaults": defaults,
                "execution_id": f"{resources.state_machine_arn.replace(':stateMachine:', ':execution:')}:scoped-{uuid.uuid4().hex[:6]}",
            },
        )
        assert answer["error"] is None, answer
        document = json.loads(
            s3.get_object(Bucket=answer["payload"]["batch"]["bucket"], Key=answer["payload"]["batch"]["key"])[
                "Body"
            ].read()
        )
        by_key = {entry["source"]["key"]: entry for entry in document["items"]}
        # THEN the object under the prefix is read; the other one is refused by IAM (403), as a typed error
        assert by_key[inside]["status"] == "READY"
        assert by_key[outside]["status"] == "FAILED" and by_key[outside]["error"]["type"] == "ObjectNotFoundError"
        assert "403" in by_key[outside]["error"]["message"]
    finally:
        iam.put_role_policy(
            RoleName=role_name,
            PolicyName="preprocess",
            PolicyDocument=json.dumps(deployed_policies["preprocess"]["preprocess"]),
        )
