"""The cost model's arithmetic: usage times config/prices.json, by service, per image."""

from __future__ import annotations

import base64
import json

import pytest

from inferpipe.cost import PRICES_FILE, Usage, _history_transitions, load_prices, price
from inferpipe.local.faults import ApiCall
from inferpipe.local.usage import billing_units, dynamodb_item_bytes


def test_every_price_has_a_source_a_date_and_a_positive_rate() -> None:
    raw = json.loads(PRICES_FILE.read_text())
    assert raw["region"] == "us-east-1"
    for key, entry in raw["prices"].items():
        assert entry["usd"] > 0 and entry["per"] > 0, key
        assert entry["source"].startswith("http") and entry["checked"] and entry["unit"], key


def test_a_bill_is_usage_times_list_price_per_service_and_per_image() -> None:
    prices = load_prices()
    # GIVEN what one image cost the pipeline before batching: 16 transitions, 7 invocations, ...
    usage = Usage(
        since=0.0,
        images=1,
        transitions=16,
        s3_events=1,
        lambda_requests=7,
        lambda_gb_seconds=0.5,
        log_bytes=2**20,
        requests={
            "s3": {
                "PutObject": {"requests": 3, "units": 3},
                "GetObject": {"requests": 2, "units": 2},
                "DeleteObject": {"requests": 1, "units": 1},
            },
            "dynamodb": {"PutItem": {"requests": 1, "units": 2}},
            "sns": {"Publish": {"requests": 1, "units": 1}},
            "sqs": {"SendMessage": {"requests": 1, "units": 1}},
            "events": {"PutEvents": {"requests": 1, "units": 1}},
        },
    )
    estimate = price(usage, prices)
    by_service = estimate.by_service()
    # THEN each service is its quantity times its price, DELETE is free, and the totals add up
    assert by_service["Step Functions"] == pytest.approx(16 * 0.025 / 1000)
    assert by_service["Lambda"] == pytest.approx(7 * 0.20 / 1e6 + 0.5 * 0.0000166667)
    assert by_service["S3"] == pytest.approx(3 * 0.005 / 1000 + 2 * 0.0004 / 1000)
    assert by_service["DynamoDB"] == pytest.approx(2 * 0.625 / 1e6)
    assert by_service["EventBridge"] == pytest.approx(2 * 1.0 / 1e6)
    assert by_service["CloudWatch Logs"] == pytest.approx(0.50 / 1024)
    summary = estimate.to_json()
    assert summary["usd_total"] == pytest.approx(sum(by_service.values()))
    assert summary["usd_per_million_images"] == pytest.approx(summary["usd_total"] * 1e6)
    assert 0 < summary["orchestration_share"] < 1
    assert {"images", "usd_total", "usd_per_million_images", "by_service"} <= set(summary)


def test_transitions_count_every_state_entered_and_every_task_retry() -> None:
    events = [
        {"type": t}
        for t in [
            "ExecutionStarted",
            "PassStateEntered",
            "TaskStateEntered",
            "LambdaFunctionScheduled",
            "LambdaFunctionFailed",
            "LambdaFunctionScheduled",
            "LambdaFunctionSucceeded",
            "TaskStateExited",
            "SucceedStateEntered",
            "ExecutionSucceeded",
        ]
    ]
    assert _history_transitions(events) == 3 + 1  # three states entered, one retry


def _dynamodb_call(operation: str, body: dict) -> ApiCall:
    raw = json.dumps(body).encode()
    return ApiCall("dynamodb", "json", operation, raw, "/", "", len(raw))


def test_item_sizes_follow_dynamodb_rules() -> None:
    # names + UTF-8 values; numbers 1 byte per 2 significant digits + 1; lists/maps 3 + 1 per element
    assert dynamodb_item_bytes({"id": {"S": "abc"}}) == 2 + 3
    assert dynamodb_item_bytes({"p": {"N": "0.912300"}}) == 1 + (2 + 1)  # digits 9123
    assert dynamodb_item_bytes({"ok": {"BOOL": True}, "é": {"S": "é"}}) == (2 + 1) + (2 + 2)
    assert dynamodb_item_bytes({"l": {"L": [{"S": "ab"}, {"N": "7"}]}}) == 1 + 3 + (1 + 2) + (1 + 2)
    assert dynamodb_item_bytes({"b": {"B": base64.b64encode(b"abcd").decode()}}) == 1 + 4  # raw bytes, not base64


def test_a_write_is_billed_by_its_items_size_not_by_its_requests() -> None:
    # GIVEN an item of ~600 bytes put with a condition and expression attributes: a request over 1 KB
    item = {"object": {"S": "s3://bucket/" + "k" * 500}, "status": {"S": "SUCCEEDED"}, "record_id": {"S": "r" * 64}}
    body = {
        "TableName": "t" * 200,
        "Item": item,
        "ConditionExpression": "attribute_not_exists(#o) OR #s <> :s " * 10,
        "ExpressionAttributeNames": {"#o": "object", "#s": "status"},
        "ExpressionAttributeValues": {":s": {"S": "SUCCEEDED"}},
    }
    assert len(json.dumps(body)) > 1024 > dynamodb_item_bytes(item)
    # THEN it is one write unit; the same item grown past 1 KB is two
    assert billing_units(_dynamodb_call("PutItem", body)) == 1
    item["object"] = {"S": "s3://bucket/" + "k" * 1000}
    assert billing_units(_dynamodb_call("PutItem", body)) == 2
    # AND a batch write is billed per item written, a transaction twice per item
    small = {"id": {"S": "a"}}
    batch = {"RequestItems": {"t": [{"PutRequest": {"Item": small}}] * 3 + [{"PutRequest": {"Item": item}}]}}
    assert billing_units(_dynamodb_call("BatchWriteItem", batch)) == 3 + 2
    assert billing_units(_dynamodb_call("TransactWriteItems", {"TransactItems": [{"Put": {"Item": small}}] * 2})) == 4
