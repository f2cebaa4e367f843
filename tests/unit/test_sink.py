"""The sink function writes one identical, idempotent record per sink (moto as AWS)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from functions.common.config import invocation_environment
from functions.common.errors import (
    InvalidRequestError,
    ObjectNotFoundError,
    SinkNotConfiguredError,
    SinkUnavailableError,
    TransientError,
)
from functions.common.work import CLASSIFIED, CLASSIFIED_STATUS, FAILED, SCHEMA, work_key
from functions.sink import batch as sink_batch
from functions.sink import core, writers
from functions.sink.handler import lambda_handler
from tests.conftest import FakeLambdaContext

SOURCE = {"bucket": "in-bucket", "key": "holiday photos/café+1%.jpg", "version_id": "v1", "etag": "abc", "size": 10}
PREDICTION: dict[str, Any] = {
    "model": {"name": "demo", "version": "0123456789ab", "architecture": "resnet", "inference_mode": "fp32"},
    "top_k": [{"label": "circle", "index": 0, "probability": 0.9}, {"label": "ring", "index": 4, "probability": 0.05}],
}
EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:pipeline:abc"
WORK_BUCKET = "work-bucket"
CONTEXT = FakeLambdaContext("sink", memory_limit_in_mb=256)


def classified(
    source: dict[str, Any] = SOURCE, prediction: dict[str, Any] = PREDICTION, index: int = 0
) -> dict[str, Any]:
    """A batch document entry as inference writes it: the object located, classified."""
    model = prediction["model"]
    return {
        "index": index,
        "status": CLASSIFIED_STATUS,
        "source": source,
        "model": {"name": model["name"], "version": model["version"]},
        "top_k": len(prediction["top_k"]),
        "trigger": "s3-event",
        "prediction": prediction,
    }


def failed(
    source: dict[str, Any] | None, error: str, message: str, index: int = 0, state: str = "Preprocess"
) -> dict[str, Any]:
    """A batch document entry of an object that failed alone."""
    return {
        "index": index,
        "status": FAILED,
        "source": source,
        "error": {"type": error, "message": message, "state": state},
        "model": {"name": "demo", "version": "prod", "resolved": False},
        "top_k": 2,
        "trigger": "s3-event",
    }


def put_batch(entries: list[dict[str, Any]], execution: str = EXECUTION, name: str = CLASSIFIED) -> dict[str, str]:
    """GIVEN a batch document in the work bucket, where the pipeline's earlier tasks leave it."""
    document = {
        "schema": SCHEMA,
        "execution_id": execution,
        "trigger": "s3-event",
        "sinks": list(core.SINKS),
        "duplicates": 0,
        "items": entries,
    }
    key = work_key("tensors/", execution, name)
    boto3.client("s3").put_object(Bucket=WORK_BUCKET, Key=key, Body=json.dumps(document).encode())
    return {"bucket": WORK_BUCKET, "key": key}


def many(n: int, prefix: str = "burst") -> list[dict[str, Any]]:
    """``n`` classified objects of one batch, each its own key."""
    return [classified({**SOURCE, "key": f"{prefix}/{i:03d}.jpg", "version_id": f"v{i}"}, index=i) for i in range(n)]


def _deliver(sink: str, batch: dict[str, str] | None = None, execution: str = EXECUTION) -> dict[str, Any]:
    ref = batch if batch is not None else put_batch([classified()])
    return lambda_handler({"sink": sink, "batch": ref, "execution_id": execution}, CONTEXT)


def _drain(queue_url: str) -> list[dict]:
    """Every message waiting in the queue (10 a receive)."""
    sqs = boto3.client("sqs")
    drained: list[dict] = []
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]).get(
            "Messages", []
        )
        if not messages:
            return drained
        drained += messages


Fault = Callable[[dict[str, Any], Callable[[dict[str, Any]], Any]], Any]


class ApiCalls:
    """Every AWS API call made (service, operation, entries in the request), with optional faults:
    ``faults[(service, operation)](params, send)`` answers instead of AWS (``send`` makes the real call)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int]] = []
        self.faults: dict[tuple[str, str], Fault] = {}

    def of(self, service: str, operation: str) -> list[int]:
        """Entries per request of each call of ``operation``."""
        return [n for s, o, n in self.log if (s, o) == (service, operation)]

    def publishes(self) -> list[tuple[str, str, int]]:
        return [c for c in self.log if c[1] in PUBLISH_OPERATIONS.values()]


#: The batch API each message sink publishes with.
PUBLISH_OPERATIONS = {"sns": "PublishBatch", "sqs": "SendMessageBatch", "eventbridge": "PutEvents"}
SERVICE_OF = {"sns": "sns", "sqs": "sqs", "eventbridge": "events"}


@pytest.fixture
def api_calls(monkeypatch: pytest.MonkeyPatch) -> ApiCalls:
    """Counts the requests every boto3 client sends (the functions' own cached clients included)."""
    calls = ApiCalls()
    original = BaseClient._make_api_call

    def make_api_call(self: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        service = self.meta.service_model.service_name
        entries = params.get("Entries") or params.get("PublishBatchRequestEntries") or []
        calls.log.append((service, operation, len(entries)))
        fault = calls.faults.get((service, operation))
        if fault is not None:
            return fault(params, lambda p: original(self, operation, p))
        return original(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", make_api_call)
    return calls


def _published(sink: str, sink_resources: dict[str, str]) -> list[dict[str, Any]]:
    """The records a message sink's consumers received (the queue itself, or a tap on the topic or bus)."""
    if sink == "sqs":
        return [json.loads(m["Body"]) for m in _drain(sink_resources["PREDICTIONS_QUEUE_URL"])]
    if sink == "sns":
        return [json.loads(m["Body"]) for m in _drain(sink_resources["sns_tap"])]
    return [json.loads(m["Body"])["detail"] for m in _drain(sink_resources["events_tap"])]


def _ledger(sink: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    records = [core.build_record(e["source"], e["prediction"], EXECUTION) for e in entries]
    body = boto3.client("s3").get_object(Bucket="out-bucket", Key=sink_batch.ledger_key(sink, records))["Body"].read()
    return json.loads(body)


def _record_id(entry: dict[str, Any]) -> str:
    return core.record_id(entry["source"], entry["prediction"]["model"], len(entry["prediction"]["top_k"]))


def test_every_sink_holds_the_same_record(sink_resources: dict[str, str]) -> None:
    # GIVEN a classified batch of one
    ref = put_batch([classified()])
    # WHEN the record is delivered to all five sinks
    results = {sink: _deliver(sink, ref) for sink in core.SINKS}

    # THEN each sink reports one delivery, where it went
    assert {sink: (r["status"], r["delivered"]) for sink, r in results.items()} == {
        sink: ("DELIVERED", 1) for sink in core.SINKS
    }
    # ('%' is escaped in record paths, so that no two keys share one: functions/sink/records.py)
    assert results["s3"]["location"] == "s3://out-bucket/predictions/in-bucket/holiday photos/café+1%25.jpg.json"
    assert results["dynamodb"]["location"] == "dynamodb://preds/s3://in-bucket/holiday photos/café+1%.jpg#v1"
    assert (results["sqs"]["location"], results["sns"]["location"], results["eventbridge"]["location"]) == (
        sink_resources["PREDICTIONS_QUEUE_URL"],
        sink_resources["PREDICTIONS_TOPIC_ARN"],
        "events://preds-bus",
    )
    # AND each sink holds exactly one record with the same id, model version and top-1
    expected_id = core.record_id(SOURCE, PREDICTION["model"], len(PREDICTION["top_k"]))
    body = (
        boto3.client("s3")
        .get_object(Bucket="out-bucket", Key="predictions/in-bucket/holiday photos/café+1%25.jpg.json")["Body"]
        .read()
    )
    s3_record = json.loads(body)
    assert s3_record["record_id"] == expected_id and s3_record["execution_id"] == EXECUTION
    assert s3_record["top1"]["label"] == "circle" and s3_record["model"]["version"] == "0123456789ab"
    assert s3_record["source"]["key"] == SOURCE["key"]
    items = boto3.client("dynamodb").scan(TableName="preds")["Items"]
    assert [(i["object"]["S"], i["version"]["S"], i["label"]["S"], i["record_id"]["S"]) for i in items] == [
        ("s3://in-bucket/holiday photos/café+1%.jpg", "v1", "circle", expected_id)
    ]
    queued = _drain(sink_resources["PREDICTIONS_QUEUE_URL"])
    assert [json.loads(m["Body"])["record_id"] for m in queued] == [expected_id]
    assert queued[0]["MessageAttributes"]["record_id"]["StringValue"] == expected_id
    assert queued[0]["MessageAttributes"]["label"]["StringValue"] == "circle"
    published = _drain(sink_resources["sns_tap"])
    assert [json.loads(m["Body"])["record_id"] for m in published] == [expected_id]
    emitted = _drain(sink_resources["events_tap"])
    assert len(emitted) == 1
    event = json.loads(emitted[0]["Body"])
    assert event["detail-type"] == "Image Classified" and event["source"] == "inferpipe"
    assert event["detail"]["record_id"] == expected_id and event["resources"] == [EXECUTION]


def test_redelivery_overwrites_instead_of_duplicating_in_storage_sinks(sink_resources: dict[str, str]) -> None:
    # WHEN the same batch is delivered twice (a retried Map branch)
    ref = put_batch([classified()])
    first, second = _deliver("dynamodb", ref), _deliver("dynamodb", ref)
    _deliver("s3", ref), _deliver("s3", ref)

    # THEN storage sinks still hold one record, in the same place
    assert first == second
    assert boto3.client("dynamodb").scan(TableName="preds")["Count"] == 1
    listed = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="out-bucket")["Contents"]]
    assert len(listed) == 1  # the key's latest view, which is the version's record


def test_a_new_model_version_gets_a_new_record_id() -> None:
    other = {**PREDICTION, "model": {**PREDICTION["model"], "version": "ffffffffffff"}}
    assert (
        core.build_record(SOURCE, PREDICTION, EXECUTION).record_id
        != core.build_record(SOURCE, other, EXECUTION).record_id
    )


def test_undeployed_sink_is_a_permanent_error_naming_the_variable(sink_resources: dict[str, str]) -> None:
    ref = put_batch([classified()])
    with (
        invocation_environment({"OUTPUT_BUCKET": "out-bucket"}),
        pytest.raises(SinkNotConfiguredError, match="PREDICTIONS_QUEUE_URL"),
    ):
        _deliver("sqs", ref)
    with pytest.raises(SinkNotConfiguredError, match="unknown sink 'kafka'"):
        _deliver("kafka", ref)


def test_a_sink_input_without_a_readable_batch_is_rejected_clearly(sink_resources: dict[str, str]) -> None:
    # the old per-object input (no batch reference)
    with pytest.raises(InvalidRequestError, match=r'sink input must be \{"sink": name, "batch"'):
        lambda_handler({"sink": "s3", "source": SOURCE, "prediction": PREDICTION, "execution_id": EXECUTION}, CONTEXT)
    with pytest.raises(InvalidRequestError, match=re.escape("batch must be a reference {bucket, key}")):
        lambda_handler(
            {"sink": "s3", "batch": "tensors/batches/abc/classified.json", "execution_id": EXECUTION}, CONTEXT
        )
    # a batch document that expired
    with pytest.raises(
        ObjectNotFoundError, match=r"s3://work-bucket/tensors/batches/gone/classified.json does not exist"
    ):
        _deliver("s3", {"bucket": WORK_BUCKET, "key": "tensors/batches/gone/classified.json"})
    # an object that is not a batch document
    boto3.client("s3").put_object(Bucket=WORK_BUCKET, Key="tensors/other.json", Body=b'{"items": []}')
    with pytest.raises(InvalidRequestError, match=re.escape("is not a inferpipe.batch/1 document")):
        _deliver("s3", {"bucket": WORK_BUCKET, "key": "tensors/other.json"})
    # a classified entry whose prediction is empty
    with pytest.raises(InvalidRequestError, match=re.escape("empty prediction.top_k")):
        _deliver("s3", put_batch([classified(prediction={**PREDICTION, "top_k": []})]))


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("ProvisionedThroughputExceededException", 400, True),
        ("ThrottlingException", 400, True),
        ("SlowDown", 503, True),
        ("InternalError", 500, True),
        ("ResourceNotFoundException", 400, False),
        ("AccessDenied", 403, False),
    ],
)
def test_aws_failures_are_retried_only_when_retrying_can_help(code: str, status: int, transient: bool) -> None:
    from botocore.exceptions import ClientError

    from functions.common.aws import raise_transient

    error = ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutItem"
    )
    expected = TransientError if transient else ClientError
    with pytest.raises(expected):
        raise_transient(error, "delivering to sink 'dynamodb'")


# --------------------------------------------------------------------------- a batch, many records


@pytest.mark.parametrize("sink", ["sqs", "sns", "eventbridge"])
def test_a_message_sink_publishes_25_records_in_3_requests_and_a_second_delivery_publishes_nothing(
    sink_resources: dict[str, str], api_calls: ApiCalls, sink: str
) -> None:
    # GIVEN a classified batch of 25 objects
    entries = many(25)
    ref = put_batch(entries)

    # WHEN it is delivered to a message sink
    answer = _deliver(sink, ref)

    # THEN 25 records went out in 3 batch requests of at most 10 entries, one message per object
    assert answer["status"] == "DELIVERED" and answer["delivered"] == 25
    assert api_calls.publishes() == [(SERVICE_OF[sink], PUBLISH_OPERATIONS[sink], n) for n in (10, 10, 5)]
    received = _published(sink, sink_resources)
    assert sorted(r["record_id"] for r in received) == sorted(_record_id(e) for e in entries)
    assert {r["source"]["key"] for r in received} == {e["source"]["key"] for e in entries}
    # AND the ledger lists every record delivered
    ledger = _ledger(sink, entries)
    assert ledger["sink"] == sink and ledger["delivered"] == sorted(_record_id(e) for e in entries)

    # WHEN the same batch is delivered again (a retried branch, a redrive, a replay by another execution)
    api_calls.log.clear()
    again = _deliver(sink, ref, execution=EXECUTION + "-replay")

    # THEN nothing is published the second time
    assert again["status"] == "DELIVERED"
    assert api_calls.publishes() == []
    assert _published(sink, sink_resources) == []


def test_storage_sinks_write_one_record_per_classified_object_and_skip_failed_ones(
    sink_resources: dict[str, str], api_calls: ApiCalls
) -> None:
    # GIVEN a batch of 25 classified objects and one that failed in preprocess
    entries = many(25)
    ref = put_batch([*entries, failed({**SOURCE, "key": "burst/bad.jpg"}, "NotAnImageError", "not an image", index=25)])
    api_calls.log.clear()
    # WHEN delivered to S3 and DynamoDB
    to_s3, to_dynamodb = _deliver("s3", ref), _deliver("dynamodb", ref)
    # THEN each holds the 25 predictions, one object / one item each, and nothing of the failed object
    assert (to_s3["delivered"], to_dynamodb["delivered"]) == (25, 25)
    listed = [
        o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="out-bucket", Prefix="predictions/")["Contents"]
    ]
    keys = [key for key in listed if not key.startswith("predictions/_versions/")]
    assert sorted(keys) == sorted(f"predictions/in-bucket/{e['source']['key']}.json" for e in entries)
    assert len(listed) == len(entries)  # each latest view is its version's record: no second copy
    # AND the location reported is where they all went (their common prefix)
    assert to_s3["location"].startswith("s3://out-bucket/predictions/in-bucket/burst/")
    assert all(f"s3://out-bucket/{key}".startswith(to_s3["location"]) for key in keys)
    items = boto3.client("dynamodb").scan(TableName="preds")["Items"]
    assert sorted(i["record_id"]["S"] for i in items) == sorted(_record_id(e) for e in entries)
    # one PUT and one GET an object (the latest view, then a look at the failure view)
    assert len(api_calls.of("s3", "PutObject")) == 25 and len(api_calls.of("dynamodb", "PutItem")) == 25
    assert len(api_calls.of("s3", "GetObject")) == 2 + 25  # the batch document (once per sink), then each failure view


def test_a_batch_with_no_classified_object_delivers_nothing(
    sink_resources: dict[str, str], api_calls: ApiCalls
) -> None:
    ref = put_batch([failed(SOURCE, "NotAnImageError", "not an image")])
    answer = _deliver("sqs", ref)
    assert answer == {"sink": "sqs", "status": "DELIVERED", "delivered": 0, "location": None}
    assert api_calls.publishes() == [] and _drain(sink_resources["PREDICTIONS_QUEUE_URL"]) == []


def _failing_entries(record_ids: set[str], sender_fault: bool, times: int | None = None) -> Fault:
    """A SendMessageBatch / PublishBatch answer that fails the entries of ``record_ids`` (``times`` calls, or always)."""
    left = {"times": times}

    def fault(params: dict[str, Any], send: Callable[[dict[str, Any]], Any]) -> Any:
        key = "Entries" if "Entries" in params else "PublishBatchRequestEntries"
        bad = [e for e in params[key] if e["MessageAttributes"]["record_id"]["StringValue"] in record_ids]
        if not bad or left["times"] == 0:
            return send(params)
        if left["times"] is not None:
            left["times"] -= 1
        good = [e for e in params[key] if e not in bad]
        response = send({**params, key: good}) if good else {"Successful": [], "Failed": []}
        response.setdefault("Failed", [])
        response["Failed"] += [
            {
                "Id": e["Id"],
                "SenderFault": sender_fault,
                "Code": "KMS.DisabledException" if sender_fault else "InternalError",
                "Message": "refused",
            }
            for e in bad
        ]
        return response

    return fault


def test_an_entry_the_queue_refuses_fails_the_sink_and_a_retry_publishes_only_what_is_missing(
    sink_resources: dict[str, str], api_calls: ApiCalls
) -> None:
    # GIVEN 25 objects, and a queue that refuses (for good: a sender fault) the entry of the 4th
    entries = many(25)
    ref = put_batch(entries)
    refused = _record_id(entries[3])
    api_calls.faults[("sqs", "SendMessageBatch")] = _failing_entries({refused}, sender_fault=True)

    # WHEN delivered
    with pytest.raises(
        SinkUnavailableError, match=rf"sink 'sqs' refused 1 record\(s\), e.g. {refused}: KMS.DisabledException: refused"
    ):
        _deliver("sqs", ref)

    # THEN what went out before the refusal is in the queue and in the ledger, the rest is not
    sent_first = {r["record_id"] for r in _published("sqs", sink_resources)}
    assert sent_first == {_record_id(e) for e in entries[:10]} - {refused}
    assert set(_ledger("sqs", entries)["delivered"]) == sent_first

    # WHEN the operator fixes the queue and the delivery is retried (inferpipe replay)
    del api_calls.faults[("sqs", "SendMessageBatch")]
    api_calls.log.clear()
    _deliver("sqs", ref)

    # THEN only the 16 missing records are published: every object is in the queue exactly once
    assert api_calls.of("sqs", "SendMessageBatch") == [10, 6]
    sent_then = [r["record_id"] for r in _published("sqs", sink_resources)]
    assert len(sent_then) == 16 and sorted([*sent_first, *sent_then]) == sorted(_record_id(e) for e in entries)


def test_entries_failing_on_the_service_side_are_retried_then_the_sink_is_transient(
    sink_resources: dict[str, str], api_calls: ApiCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sink_batch.time, "sleep", lambda _s: None)
    entries = many(25)
    ref = put_batch(entries)
    flaky = _record_id(entries[12])

    # GIVEN the topic fails one entry once (not the sender's fault): it is published on the second attempt
    api_calls.faults[("sns", "PublishBatch")] = _failing_entries({flaky}, sender_fault=False, times=1)
    assert _deliver("sns", ref)["delivered"] == 25
    assert api_calls.of("sns", "PublishBatch") == [10, 10, 5, 1]
    assert sorted(r["record_id"] for r in _published("sns", sink_resources)) == sorted(_record_id(e) for e in entries)

    # GIVEN another batch, and a queue that keeps failing one entry on its side
    others = many(25, prefix="again")
    stuck = _record_id(others[0])
    ref = put_batch(others, execution=EXECUTION + "-2")
    api_calls.faults[("sqs", "SendMessageBatch")] = _failing_entries({stuck}, sender_fault=False)
    # THEN after ENTRY_ATTEMPTS attempts the sink fails with a retryable error, the others delivered and in the ledger
    with pytest.raises(TransientError, match=r"sink 'sqs': 1 record\(s\) still failing after 3 attempts"):
        _deliver("sqs", ref)
    assert api_calls.of("sqs", "SendMessageBatch") == [10, 10, 5, 1, 1]
    delivered = {_record_id(e) for e in others} - {stuck}
    assert {r["record_id"] for r in _published("sqs", sink_resources)} == delivered
    assert set(_ledger("sqs", others)["delivered"]) == delivered


@pytest.mark.parametrize(
    ("code", "expected", "message"),
    [
        ("ThrottlingException", TransientError, "still failing after 3 attempts"),
        ("MalformedDetail", SinkUnavailableError, "refused 1 record"),
    ],
)
def test_eventbridge_entry_errors_are_classified_by_their_code(
    sink_resources: dict[str, str],
    api_calls: ApiCalls,
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    expected: type[Exception],
    message: str,
) -> None:
    monkeypatch.setattr(sink_batch.time, "sleep", lambda _s: None)
    entries = many(3)
    ref = put_batch(entries)

    def fault(params: dict[str, Any], send: Callable[[dict[str, Any]], Any]) -> Any:
        # the bus refuses the first entry of every request
        answer = send({**params, "Entries": params["Entries"][1:]}) if len(params["Entries"]) > 1 else {"Entries": []}
        return {"FailedEntryCount": 1, "Entries": [{"ErrorCode": code, "ErrorMessage": "no"}, *answer["Entries"]]}

    api_calls.faults[("events", "PutEvents")] = fault
    with pytest.raises(expected, match=message):
        _deliver("eventbridge", ref)
    assert {r["record_id"] for r in _published("eventbridge", sink_resources)} == {_record_id(e) for e in entries[1:]}


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("AWS.SimpleQueueService.NonExistentQueue", 400, SinkUnavailableError),
        ("ThrottlingException", 400, TransientError),
        ("InternalError", 500, TransientError),
    ],
)
def test_a_refused_batch_request_is_typed(
    sink_resources: dict[str, str], api_calls: ApiCalls, code: str, status: int, expected: type[Exception]
) -> None:
    from botocore.exceptions import ClientError

    def refuse(params: dict[str, Any], send: Callable[[dict[str, Any]], Any]) -> Any:
        raise ClientError(
            {"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}},
            "SendMessageBatch",
        )

    api_calls.faults[("sqs", "SendMessageBatch")] = refuse
    with pytest.raises(expected, match="sink 'sqs'"):
        _deliver("sqs", put_batch(many(3)))


def _refuse(code: str, status: int, when: Callable[[dict[str, Any]], bool]) -> Fault:
    def fault(params: dict[str, Any], send: Callable[[dict[str, Any]], Any]) -> Any:
        if when(params):
            raise ClientError(
                {"Error": {"Code": code, "Message": "refused"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                "PutObject",
            )
        return send(params)

    return fault


@pytest.mark.parametrize("sink", ["sqs", "sns", "eventbridge"])
def test_a_ledger_that_cannot_be_read_or_written_fails_loudly_with_nothing_published(
    sink: str, sink_resources: dict[str, str], api_calls: ApiCalls
) -> None:
    ref = put_batch(many(3))
    # GIVEN the role may not read the ledger (AWS answers 403 AccessDenied, e.g. without s3:GetObject on deliveries/*)
    api_calls.faults[("s3", "GetObject")] = _refuse("AccessDenied", 403, lambda p: p["Key"].startswith("deliveries/"))
    # THEN the delivery fails naming the ledger, and nothing is published (a 403 is not "not published yet")
    with pytest.raises(SinkUnavailableError, match=r"cannot read the delivery ledger .*deliveries/.*: AccessDenied"):
        _deliver(sink, ref)
    assert _published(sink, sink_resources) == []

    # GIVEN it may read but not write it
    api_calls.faults = {("s3", "PutObject"): _refuse("AccessDenied", 403, lambda p: p["Key"].startswith("deliveries/"))}
    with pytest.raises(SinkUnavailableError, match=r"cannot write the delivery ledger .*: AccessDenied"):
        _deliver(sink, ref)
    assert _published(sink, sink_resources) == []

    # WHEN the permission is fixed and the delivery retried: each record goes out exactly once
    api_calls.faults = {}
    assert _deliver(sink, ref)["delivered"] == 3 and len(_published(sink, sink_resources)) == 3
    assert _deliver(sink, ref)["delivered"] == 3 and _published(sink, sink_resources) == []


def test_a_rerun_with_other_options_updates_every_sink(sink_resources: dict[str, str]) -> None:
    # GIVEN an object classified with top_k 5 and delivered everywhere
    five = {**PREDICTION, "top_k": [{"label": f"c{i}", "probability": 0.5 - i / 20} for i in range(5)]}
    three = {**five, "top_k": five["top_k"][:3]}
    for sink in core.SINKS:
        _deliver(sink, put_batch([classified(prediction=five)]))
    for sink in ("sqs", "sns", "eventbridge"):
        assert len(_published(sink, sink_resources)) == 1
    # WHEN it is re-run by hand with top_k 3
    for sink in core.SINKS:
        _deliver(
            sink,
            put_batch([classified(prediction=three)], execution=EXECUTION + "-manual"),
            execution=EXECUTION + "-manual",
        )
    # THEN every sink holds (or received) the three-class record: none keeps five while another has three
    body = (
        boto3.client("s3").get_object(Bucket="out-bucket", Key=core.output_key("predictions/", SOURCE))["Body"].read()
    )
    assert len(json.loads(body)["top_k"]) == 3
    (item,) = boto3.client("dynamodb").scan(TableName="preds")["Items"]
    assert len(json.loads(item["top_k"]["S"])) == 3
    for sink in ("sqs", "sns", "eventbridge"):
        assert [len(r["top_k"]) for r in _published(sink, sink_resources)] == [3]


def test_every_sink_stack_json_knows_has_one_writer_of_its_kind() -> None:
    # config/stack.json sinks.known is the list; functions/sink/writers.py has one writer per entry,
    # a MessageWriter exactly for those that publish (their deliveries go through the ledger)
    assert set(writers.WRITERS) == set(core.SINKS)
    assert {name for name, w in writers.WRITERS.items() if isinstance(w, writers.MessageWriter)} == set(
        core.MESSAGE_SINKS
    )
